"""FUSE mount benchmark: the mount against a single-connection HTTP client, same gateway, same run.

    python -m benchmarks.fuse_bench            # prints the results as JSON
    run(results) -> results                    # called by ``python -m benchmarks`` (make bench)

Measures (issue 6):
- sequential read of a 256 MiB object (cold: a fresh mount each round, so no page cache), by a
  mount with ``--local-socket`` as on the gateway's own host (docs/fuse.md, "Local reads"), and by
  one without, as on any other host (every byte through HTTP);
- open+read+close of 2,000 32 KiB objects (cold attribute cache: a fresh mount each round);
- ``ls -l`` of a 10,000-entry directory: LIST, HEAD and GET requests counted by the mount's client
  (its stats file) and by the gateway's access log.
The HTTP reference is the mount's own HTTP client (``ObjectClient``: the same SigV4 signer, one
connection; whole GETs over its lean client, the streamed sequential read over urllib3), doing the
same reads: the ratios measure what FUSE adds, not which HTTP client is faster.
Rounds are medians of ``rounds``; targets: sequential >= 0.7x, small files >= 0.5x of the HTTP figure.
Next to each, the same reads from a null FUSE filesystem (constant bytes, no network): the ceiling of
any mfusepy filesystem on this machine (docs/fuse.md, "Numbers").
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.fuse.client import ObjectClient
from gateway.fuse.testing import MountProcess
from gateway.testing.server import GatewayProcess

MiB = 1024 * 1024
BUCKET = "fuse-bench"


class _Pattern:
    """``size`` bytes made while read (a file-like body for one streamed PUT)."""

    def __init__(self, size: int):
        self.size, self.position = size, 0
        self.block = os.urandom(MiB)

    def read(self, amount: int = -1) -> bytes:
        if self.position >= self.size:
            return b""
        data = self.block[: min(MiB, self.size - self.position)]
        self.position += len(data)
        return data


def _prepare(gw: GatewayProcess, big: int, small: int, small_size: int, listing: int, listing_size: int) -> None:
    client = ObjectClient(gw.endpoint, gw.access_key, gw.secret_key, pool_size=8, timeout=120)
    client.create_bucket(BUCKET)
    client.put(BUCKET, "big.bin", _Pattern(big), big)
    body = os.urandom(small_size)
    entry = os.urandom(listing_size)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put(BUCKET, f"small/{n:05d}.jpg", body, small_size), range(small)))
        list(pool.map(lambda n: client.put(BUCKET, f"ls/{n:05d}.jpg", entry, listing_size), range(listing)))
    client.close()


def _http_sequential(gw: GatewayProcess, size: int) -> float:
    client = ObjectClient(gw.endpoint, gw.access_key, gw.secret_key, pool_size=1)
    started = time.perf_counter()
    response = client.request("GET", "GET", BUCKET, "big.bin", stream=True)
    total = 0
    while chunk := response.read(MiB):
        total += len(chunk)
    elapsed = time.perf_counter() - started
    response.release_conn()
    client.close()
    assert total == size, f"HTTP read {total} of {size} bytes"
    return size / elapsed / MiB


def _http_small(gw: GatewayProcess, count: int) -> float:
    client = ObjectClient(gw.endpoint, gw.access_key, gw.secret_key, pool_size=1)
    started = time.perf_counter()
    for n in range(count):
        _ = client.request("GET", "GET", BUCKET, f"small/{n:05d}.jpg").data
    elapsed = time.perf_counter() - started
    client.close()
    return count / elapsed


def _mount_sequential(mnt: MountProcess, size: int) -> float:
    started = time.perf_counter()
    total = 0
    with open(mnt.path / BUCKET / "big.bin", "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            total += len(chunk)
    elapsed = time.perf_counter() - started
    assert total == size, f"mount read {total} of {size} bytes"
    return size / elapsed / MiB


def _mount_sequential_direct(mnt: MountProcess, size: int) -> float:
    """The same read with O_DIRECT (as ``dd iflag=direct``): each 1 MiB read is one FUSE request,
    without the page cache. Reported next to the target figure, not instead of it."""
    started = time.perf_counter()
    total = 0
    buffer = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT may require
    fd = os.open(mnt.path / BUCKET / "big.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        while n := os.readv(fd, [buffer]):
            total += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    assert total == size, f"mount read {total} of {size} bytes with O_DIRECT"
    return size / elapsed / MiB


def _mount_small(mnt: MountProcess, count: int, size: int) -> float:
    return _read_small(mnt.path / BUCKET / "small", count, size)


def _read_small(base: Path, count: int, size: int) -> float:
    short = 0
    started = time.perf_counter()
    for n in range(count):
        with open(base / f"{n:05d}.jpg", "rb", buffering=0) as f:
            short += len(f.read(1 << 20)) != size
    elapsed = time.perf_counter() - started
    assert not short, f"{short} of {count} files in {base} did not read as {size} bytes"
    return count / elapsed


def _stats(mnt: MountProcess) -> dict:
    return json.loads((mnt.path / ".cv-gateway-stats").read_text())["requests"]


def _access_log_requests(gw: GatewayProcess, since: int) -> dict:
    counts = {"LIST": 0, "HEAD": 0, "GET": 0}
    for line in gw.log().splitlines()[since:]:
        match = re.search(r'"(GET|HEAD) (\S+) HTTP', line)
        if match:
            kind = "LIST" if "list-type=2" in match.group(2) else match.group(1)
            counts[kind] += 1
    return counts


def _ls_l(mnt: MountProcess, gw: GatewayProcess, listing: int) -> dict:
    # The directory itself is looked up first, so that only the listing and its entries are counted.
    os.stat(mnt.path / BUCKET / "ls")
    before, log_start = _stats(mnt), len(gw.log().splitlines())
    started = time.perf_counter()
    out = subprocess.run(["ls", "-l", str(mnt.path / BUCKET / "ls")], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    elapsed = time.perf_counter() - started
    after = _stats(mnt)
    lines = [line for line in out.splitlines() if not line.startswith("total")]
    assert len(lines) == listing, f"ls -l showed {len(lines)} of {listing} entries"
    mount_counts = {k: after.get(k, 0) - before.get(k, 0) for k in ("LIST", "HEAD", "GET")}
    return {"entries": listing, "seconds": round(elapsed, 3), "requests_by_mount": mount_counts,
            "requests_in_access_log": _access_log_requests(gw, log_start)}


def _serve_null_fs(mountpoint: str, size: int, small: int = 0, small_size: int = 0) -> None:
    """A FUSE filesystem whose reads return a constant buffer, no network, no storage: ``big.bin`` of
    ``size`` bytes and ``small`` files ``small/NNNNN.jpg`` of ``small_size`` bytes. Its rates are the
    ceiling of any mfusepy filesystem on this machine. It runs as the mount does: the same libfuse,
    mount options, read-ahead window, st_blksize, open flags and read callback (into libfuse's buffer)."""
    import errno
    import stat

    from gateway.fuse.fs import IO_SIZE, MountOptions
    from gateway.fuse.mount import _prefer_libfuse3

    _prefer_libfuse3()
    import mfusepy

    from gateway.fuse.readahead import raise_read_ahead_when_mounted

    block = os.urandom(MiB)
    options = MountOptions()
    small_names = {f"/small/{n:05d}.jpg" for n in range(small)}

    def size_of(path: str | bytes) -> int:  # GatewayFUSE.read passes the path undecoded
        return size if path in ("/big.bin", b"/big.bin") else small_size

    class NullFS(mfusepy.Operations):
        use_ns = True

        def getattr(self, path, fh=None):
            if path in ("/", "/small"):
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            if path == "/big.bin" or path in small_names:
                return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size_of(path),
                        "st_blksize": IO_SIZE}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def open(self, path, fi):
            fi.fh = 1
            fi.direct_io = 0 < options.direct_io_min <= size_of(path)
            if HAS_NOFLUSH:
                fi.noflush = 1  # as the mount's read-only opens
            return 0

        def read(self, path, length, offset, fi):
            return block[: max(0, min(length, size_of(path) - offset))]

        def read_into(self, path, buffer, offset, fi):  # the mount's read path (GatewayFUSE): one copy
            length = max(0, min(len(buffer), size_of(path) - offset))
            buffer[:length] = memoryview(block)[:length]
            return length

        def readdir(self, path, fh):
            return [".", "..", "big.bin", "small"]

    from gateway.fuse.mount import MountConfig, fuse_options
    from gateway.fuse.operations import HAS_NOFLUSH, GatewayFUSE

    if options.read_ahead_kib:
        raise_read_ahead_when_mounted(os.path.abspath(mountpoint), options.read_ahead_kib)
    mount_options = fuse_options(MountConfig("null", mountpoint, "", ""), mfusepy.fuse_version_major)
    GatewayFUSE(NullFS(), mountpoint, foreground=True, nothreads=False, raw_fi=True, **mount_options)


class _NullMount:
    """The null filesystem (``_serve_null_fs``) mounted in a subprocess, fresh: cold caches."""

    def __init__(self, mountpoint: Path, env: dict, size: int, small: int = 0, small_size: int = 0):
        self.path = mountpoint
        self.command = ["-m", "benchmarks.fuse_bench", "--null-fs", str(mountpoint), "--size", str(size),
                        "--small", str(small), "--small-size", str(small_size)]
        self.env = env

    def __enter__(self) -> Path:
        import sys

        self.path.mkdir(parents=True)
        self.process = subprocess.Popen([sys.executable, *self.command], env={**os.environ, **self.env},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.path):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.__exit__()
                raise RuntimeError("the null FUSE filesystem did not mount")
            time.sleep(0.05)
        return self.path

    def __exit__(self, *exc) -> None:
        from gateway.fuse.testing import unmount

        unmount(self.path)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _null_fs_ceiling(mountpoint: Path, size: int, env: dict) -> float:
    with _NullMount(mountpoint, env, size) as path:
        started = time.perf_counter()
        total = 0
        with open(path / "big.bin", "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                total += len(chunk)
        elapsed = time.perf_counter() - started
        assert total == size, f"the null filesystem gave {total} of {size} bytes"
        return size / elapsed / MiB


def _null_fs_small(mountpoint: Path, count: int, small_size: int, env: dict) -> float:
    """open+read+close of ``count`` small files from the null filesystem: FUSE's crossings alone."""
    with _NullMount(mountpoint, env, 0, count, small_size) as path:
        return _read_small(path / "small", count, small_size)


def run(results: dict, *, rounds: int = 3, big: int = 256 * MiB, small: int = 2_000, small_size: int = 32 * 1024,
        listing: int = 10_000, listing_size: int = 8 * 1024, libfuse: str | None = None,
        sequential_only: bool = False, small_only: bool = False) -> dict:
    """Run the FUSE benchmark with its own gateway; store and return ``results["fuse"]``.

    ``libfuse``: "fuse" (libfuse 2) or "fuse3" to choose the library (default: what the mount
    chooses, libfuse 3 when installed). ``sequential_only``: skip the small files and ``ls -l``;
    ``small_only``: only the small files.
    """
    env = {"FUSE_LIBRARY_NAME": libfuse} if libfuse else {}
    if sequential_only:
        small = listing = 0
    if small_only:
        big = listing = 0
    with tempfile.TemporaryDirectory(prefix="fuse-bench-") as tmp:
        data_dir = Path(tmp) / "cv-storage"
        config = f'[backends.local]\ntype = "local"\nroot = "{data_dir}"\nfsync = false\n'
        # No access log while timing (it costs the gateway more than the GET itself under load).
        socket_path = str(Path(tmp) / "gateway.sock")
        local = ["--local-socket", socket_path]  # the mount on the gateway's host (docs/fuse.md, "Local reads")
        with GatewayProcess(data_dir, config=config, args=local) as gw:
            _prepare(gw, big, small, small_size, listing, listing_size)
            if big:
                _http_sequential(gw, big)  # warm the server's page cache for both sides
            if small:
                _http_small(gw, small)  # and its cache of small objects: else round 0 favours the mount
            (http_seq, http_small, mount_seq, mount_http_seq, mount_direct, mount_small, null_seq, null_small,
             plain_small) = ([] for _ in range(9))
            # Interleaved rounds: the machine's load changes the figures more than anything measured here.
            for n in range(rounds):
                if big:
                    http_seq.append(_http_sequential(gw, big))
                    null_seq.append(_null_fs_ceiling(Path(tmp) / f"null{n}", big, env))
                    with MountProcess(gw, Path(tmp) / f"m{n}", args=local, env=env) as mnt:  # fresh: cold caches
                        mount_seq.append(_mount_sequential(mnt, big))
                        if not _stats(mnt).get("local_reads"):
                            raise RuntimeError(f"the mount did not read locally: {_stats(mnt)}")
                    # A mount on a host without a gateway: every byte through HTTP.
                    with MountProcess(gw, Path(tmp) / f"h{n}", env=env) as mnt:
                        mount_http_seq.append(_mount_sequential(mnt, big))
                        mount_direct.append(_mount_sequential_direct(mnt, big))
                if small:
                    http_small.append(_http_small(gw, small))
                    with MountProcess(gw, Path(tmp) / f"s{n}", env=env) as mnt:
                        mount_small.append(_mount_small(mnt, small, small_size))
                    # The same without statahead: what each file costs the mount on its own.
                    with MountProcess(gw, Path(tmp) / f"p{n}", args=["--statahead", "0"], env=env) as mnt:
                        plain_small.append(_mount_small(mnt, small, small_size))
                    null_small.append(_null_fs_small(Path(tmp) / f"nulls{n}", small, small_size, env))
        ls = None
        if listing:
            # The same storage, now with an access log, to count the requests of ls -l on the gateway's side too.
            with GatewayProcess(data_dir, args=["--access-log"], config=config) as gw:
                with MountProcess(gw, Path(tmp) / "ls", env=env) as mnt:
                    ls = _ls_l(mnt, gw, listing)
    results["fuse"] = {"libfuse": libfuse or "default (fuse3 when installed)", "load_average": os.getloadavg()[0]}
    if big:
        seq = {"http_mib_s": round(statistics.median(http_seq), 1), "mount_mib_s": round(statistics.median(mount_seq), 1)}
        seq["ratio"] = round(seq["mount_mib_s"] / seq["http_mib_s"], 2)
        # Ratios of each round (HTTP and mount measured back to back) show how much the load moved them.
        seq["round_ratios"] = [round(m / h, 2) for m, h in zip(mount_seq, http_seq)]
        # The same read from a FUSE filesystem that does nothing: mfusepy's own ceiling on this machine.
        seq["null_fuse_mib_s"] = round(statistics.median(null_seq), 1)
        seq["null_fuse_ratio"] = round(seq["null_fuse_mib_s"] / seq["http_mib_s"], 2)
        seq["target"] = 0.7
        # The same mount without --local-socket (on a host without a gateway): the read through HTTP.
        seq["mount_http_path_mib_s"] = round(statistics.median(mount_http_seq), 1)
        seq["http_path_ratio"] = round(seq["mount_http_path_mib_s"] / seq["http_mib_s"], 2)
        seq["http_path_round_ratios"] = [round(m / h, 2) for m, h in zip(mount_http_seq, http_seq)]
        seq["mount_o_direct_mib_s"] = round(statistics.median(mount_direct), 1)
        seq["o_direct_ratio"] = round(seq["mount_o_direct_mib_s"] / seq["http_mib_s"], 2)
        results["fuse"]["sequential_read"] = {"size_mib": big // MiB, **seq, "rounds": {
            "http": http_seq, "mount": mount_seq, "mount_http_path": mount_http_seq, "mount_o_direct": mount_direct,
            "null_fuse": null_seq}}
    if small:
        files = {"http_files_s": round(statistics.median(http_small)),
                 "mount_files_s": round(statistics.median(mount_small))}
        files["ratio"] = round(files["mount_files_s"] / files["http_files_s"], 2)
        files["round_ratios"] = [round(m / h, 2) for m, h in zip(mount_small, http_small)]
        files["target"] = 0.5
        # Statahead (docs/fuse.md) fetches the next files while the program reads this one; without
        # it each file is a GET the program waits for.
        files["mount_no_statahead_files_s"] = round(statistics.median(plain_small))
        files["no_statahead_ratio"] = round(files["mount_no_statahead_files_s"] / files["http_files_s"], 2)
        # The null filesystem's rate is FUSE's crossings alone (lookup, open, read, close). A mount that
        # costs those plus one GET per file and nothing else would reach null / (null + http) of the
        # HTTP rate: the ceiling of this ratio for any mfusepy filesystem here (docs/fuse.md "Numbers").
        files["null_fuse_files_s"] = round(statistics.median(null_small))
        files["ceiling_ratio"] = round(files["null_fuse_files_s"] / (files["null_fuse_files_s"]
                                                                     + files["http_files_s"]), 2)
        results["fuse"]["small_files"] = {"count": small, "size_kib": small_size // 1024, **files, "rounds": {
            "http": http_small, "mount": mount_small, "mount_no_statahead": plain_small, "null_fuse": null_small}}
    if ls is not None:
        results["fuse"]["ls_l"] = ls
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller data set (a smoke run)")
    parser.add_argument("--libfuse", choices=["fuse", "fuse3"], help="libfuse 2 (fuse) or 3 (fuse3)")
    parser.add_argument("--sequential-only", action="store_true", help="only the 256 MiB sequential read")
    parser.add_argument("--small-only", action="store_true", help="only the 2,000 small files")
    parser.add_argument("--null-fs", metavar="MOUNTPOINT", help=argparse.SUPPRESS)  # the ceiling, as a subprocess
    parser.add_argument("--size", type=int, default=256 * MiB, help=argparse.SUPPRESS)
    parser.add_argument("--small", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--small-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_fs:
        _serve_null_fs(args.null_fs, args.size, args.small, args.small_size)
        return
    sizes = dict(big=32 * MiB, small=200, listing=1_500) if args.quick else {}
    print(json.dumps(run({}, rounds=args.rounds, libfuse=args.libfuse, sequential_only=args.sequential_only,
                         small_only=args.small_only,
                         **sizes)["fuse"], indent=2))


if __name__ == "__main__":
    main()
