"""A directory of 100,000 entries on a real mount: complete, one LIST per 1,000 entries, streamed.

The objects are written in-process with the local backend's own put (the
files under the gateway's data dir are the truth, docs/storage-layout.md):
100,000 HTTP PUTs would take minutes, this takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from fuse_helpers import log_lines, proc_status_kib, requests_in_log
from gateway_plugins.local import LocalBackend

from gateway.backend import ObjectMeta
from gateway.fuse.handles import STATS_PATH
from gateway.payload import Payload
from gateway.testing.server import GatewayProcess

ENTRIES = 100_000
PAGE = 1_000
# How long listing the directory may take before the test fails (not a timing assertion: a bound
# so a hung mount cannot hang the suite). The gateway lists a 100,000-file directory in O(n) per page.
LIST_TIMEOUT = 240
# Peak memory the mount process may gain while listing, in KiB. Measured on 2 cores, 100,000 names of
# 11 bytes: +32 MiB as readdir is (libfuse's buffer of all names, ~4-8 MiB while it grows; the set of
# names GatewayFS.readdir keeps to skip duplicates, ~11 MiB; one page and the first 10,001 entries
# collected for the listing cache, then dropped), and +68 MiB when the listing is held whole in
# Python before the first entry goes out (checked once by patching GatewayFS._list_dir to list()).
GROWTH_LIMIT_KIB = 48 * 1024


def _names() -> list[str]:
    return [f"f{n:06d}.jpg" for n in range(ENTRIES)]


async def _put_all(root: str, bucket: str, prefix: str, names: list[str]) -> None:
    # The gateway's own write path (temp file, rename), without fsync, as the gateway's config says.
    backend = LocalBackend(root=root, fsync=False)
    await backend.start()
    meta = ObjectMeta()

    async def body():
        yield b"x"

    for name in names:  # bounded: one put per name
        await backend.put(bucket, prefix + name, Payload(body(), expected_size=1), meta)
    await backend.close()


@pytest.fixture(scope="module")
def ram_gw():
    """A gateway of its own, its data dir on tmpfs (/dev/shm) when there is one: on ext4, once written
    back, creating and removing 100,000 small files takes 10-20 s each; on tmpfs about 4 s and 1 s."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="cv-gateway-scale-", dir=base) as tmp:
        data_dir = Path(tmp) / "cv-storage"
        config = f'[backends.local]\ntype = "local"\nroot = "{data_dir}"\nfsync = false\n'
        with GatewayProcess(data_dir, args=["--access-log"], config=config) as gw:
            yield gw


def _mount_stats(mount) -> dict[str, int]:
    return json.loads((mount.path / STATS_PATH.lstrip("/")).read_text())["requests"]


def test_directory_of_100000_entries(ram_gw, mount_factory):
    gw, bucket = ram_gw, "scale"
    gw.client().create_bucket(Bucket=bucket)
    names = _names()
    asyncio.run(_put_all(str(gw.data_dir), bucket, "big/", names))
    # No attribute or listing cache: every request the listing needs shows, and the mount's memory
    # holds what streaming needs, not 100,000 cached attributes (the attribute cache keeps up to 200,000).
    mount = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"], gateway=gw)
    pid = mount.process.pid
    assert sorted(p.name for p in (mount.path / bucket).iterdir()) == ["big"]
    before_stats = _mount_stats(mount)
    # Reset the peak (VmHWM) to the current RSS, so the peak read afterwards is the listing's.
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    rss_before = proc_status_kib(pid, "VmRSS")
    start = log_lines(gw)

    result = subprocess.run(["ls", "-f", str(mount.path / bucket / "big")], capture_output=True, text=True,
                            timeout=LIST_TIMEOUT, check=False)
    assert result.returncode == 0, f"ls -f failed: {result.stderr}\n{mount.log()[-3000:]}"
    peak = proc_status_kib(pid, "VmHWM")
    requests = requests_in_log(gw, start)
    after_stats = _mount_stats(mount)

    listed = result.stdout.splitlines()
    assert len(listed) == ENTRIES + 2, f"{len(listed)} names listed"
    assert set(listed) - {".", ".."} == set(names)

    pages = [t for m, t in requests if "list-type=2" in t and f"max-keys={PAGE}" in t and "prefix=big%2F" in t]
    # libfuse lists a directory again whenever the kernel asks for offset 0 (SUS: rewinddir refreshes);
    # one run in a few dozen under load showed a second whole listing after the first, in order. Each
    # listing must still take one LIST per 1,000 entries, and a third one is the mount's doing.
    listings = sum("continuation-token" not in t for t in pages)
    assert listings in (1, 2), f"the directory was listed {listings} times"
    assert listings * (ENTRIES // PAGE) <= len(pages) <= listings * (ENTRIES // PAGE + 10), \
        f"{len(pages)} LIST pages in {listings} listing(s)"
    # Everything else is a lookup of the listed path itself (repeated: no TTL), never of an entry.
    path_lookups = {f"/{bucket}", f"/{bucket}/big",
                    # (the directory's one-key lookup asks for the marker's metadata too: listing metadata)
                    f"/{bucket}?delimiter=%2F&encoding-type=url&list-type=2&max-keys=1&metadata=true&prefix=big%2F"}
    others = [(m, t) for m, t in requests if t not in pages]
    assert [(m, t) for m, t in others if t not in path_lookups] == []
    assert len(others) <= 30, f"{len(others)} requests besides the LIST pages: {others}"
    # The mount's own counters agree on the pages.
    listed_pages = after_stats.get("LIST", 0) - before_stats.get("LIST", 0)
    assert listings * (ENTRIES // PAGE) <= listed_pages <= listings * (ENTRIES // PAGE + 20)

    growth = peak - rss_before
    print(f"mount process: VmRSS {rss_before} KiB before the listing, VmHWM {peak} KiB after (+{growth} KiB)")
    assert growth < GROWTH_LIMIT_KIB, (
        f"the mount's peak memory grew by {growth} KiB while listing {ENTRIES} entries "
        f"(limit {GROWTH_LIMIT_KIB} KiB): does readdir still stream?")
