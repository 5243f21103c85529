"""The sharedfs backend: the conformance suite on a local directory and on an SMB share
mounted through smbnetfs, then what only shared storage asks for.

Several gateway processes on one directory are tested in test_multi_gateway.py.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from gateway_plugins import fslayout, sharedfs
from gateway_plugins.local import LocalBackend
from gateway_plugins.sharedfs import SharedFSBackend, SmbnetfsNames
from smbnetfs_mount import mount_for  # tests/plugins is on sys.path (no packages under tests/)

from gateway import errors
from gateway.backend import ObjectMeta
from gateway.payload import Payload
from gateway.testing import conformance_keys
from gateway.testing.backend_io import get_bytes, list_all, put_bytes
from gateway.testing.conformance import BackendConformance
from gateway.testing.conformance_keys import TRICKY_KEYS
from gateway.testing.server import GatewayProcess


def smbnetfs_can_list(key: str) -> bool:
    """Whether every name of the key's path fits smbnetfs' listings (255 bytes once percent-encoded)."""
    names = fslayout.key_to_relpath(key).split("/")
    return all(len(SmbnetfsNames.encode(name).replace("@", "%40").encode()) <= 255 for name in names)


SMBNETFS_UNLISTABLE = {key for key in TRICKY_KEYS if not smbnetfs_can_list(key)}


async def started(root, **options) -> SharedFSBackend:
    backend = SharedFSBackend(root=str(root), **options)
    await backend.start()
    return backend


class TestSharedFSBackend(BackendConformance):
    """On a plain directory; ``reopen`` is another server (its own host_id) on the same directory."""

    @pytest.fixture
    def root(self, tmp_path):
        root = tmp_path / "cv-storage"
        root.mkdir()
        return root

    @pytest.fixture
    async def backend(self, root):
        backend = await started(root, host_id="server-a")
        yield backend
        await backend.close()

    @pytest.fixture
    def reopen(self, root):
        return lambda: started(root, host_id="server-b")


@pytest.fixture(scope="module")
def smbnetfs_share(smbd, tmp_path_factory):
    """The private smbd's share mounted through smbnetfs (the kernel here has no CIFS or NFS client)."""
    mount = mount_for(smbd, tmp_path_factory.mktemp("smbnetfs"))
    try:
        yield mount
    finally:
        mount.stop()


class TestSharedFSOverSmbnetfs(BackendConformance):
    """On an SMB share mounted through smbnetfs, with the name encoding that mount needs."""

    @pytest.fixture
    def root(self, smbnetfs_share):
        root = smbnetfs_share.share_dir / f"sharedfs-{uuid.uuid4().hex[:12]}"
        root.mkdir()
        return root

    @pytest.fixture
    async def backend(self, root):
        backend = await started(root, host_id="server-a", name_encoding="smbnetfs")
        yield backend
        await backend.close()

    @pytest.fixture
    def reopen(self, root):
        return lambda: started(root, host_id="server-b", name_encoding="smbnetfs")

    # smbnetfs leaves out of directory listings any name longer than 255 bytes in its
    # percent-encoded form (every % triples), so objects under such a name cannot be listed
    # through it (GET, HEAD and DELETE work). See docs/shared-storage.md.
    @pytest.mark.parametrize("key", [
        pytest.param(key, marks=pytest.mark.xfail(strict=True, reason="smbnetfs cannot list this name"))
        if key in SMBNETFS_UNLISTABLE else key for key in TRICKY_KEYS
    ], ids=lambda k: repr(k)[:40])
    async def test_tricky_key_round_trip(self, backend, bucket, key):
        await super().test_tricky_key_round_trip(backend, bucket, key)

    async def test_tricky_keys_coexist(self, backend, bucket, monkeypatch):
        listable = [key for key in TRICKY_KEYS if key not in SMBNETFS_UNLISTABLE]
        monkeypatch.setattr(conformance_keys, "TRICKY_KEYS", listable)
        await super().test_tricky_keys_coexist(backend, bucket)


# What only shared storage asks for ------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "cv-storage"
    root.mkdir()
    return root


async def test_declares_shared_capability(root):
    backend = await started(root)
    assert backend.capabilities.shared and backend.capabilities.atomic_put
    assert not LocalBackend.capabilities.shared


async def test_root_is_never_created(tmp_path):
    """A missing root usually means the share is not mounted: writing to the local disk would hide it."""
    missing = tmp_path / "not-mounted"
    with pytest.raises(ValueError, match="does not exist.*mount the share") as info:
        await started(missing)
    assert not missing.exists()
    assert "require_mount = false" not in str(info.value)  # it would not help: the root is never made


async def test_require_mount(root):
    with pytest.raises(ValueError, match="not a mount point.*require_mount = false for a local directory"):
        await started(root, require_mount=True)


@pytest.mark.parametrize("options, setting", [
    ({"host_id": "a/b"}, "host_id"),
    ({"host_id": ".."}, "host_id"),
    ({"name_encoding": "rot13"}, "name_encoding"),
    ({"stale_temp_seconds": -1}, "stale_temp_seconds"),
])
def test_bad_options_name_the_setting(root, options, setting):
    with pytest.raises(ValueError, match=setting):
        SharedFSBackend(name="shared", root=str(root), **options)


def dead_pid() -> int:
    """A pid that no process has now (a child that already exited)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_temp_files_are_per_host_and_process(root):
    first = await started(root, host_id="server-a")
    second = await started(root, host_id="server-b")
    assert first.tmp_dir != second.tmp_dir
    assert first.tmp_dir == os.path.join(str(root), ".gateway", "tmp", "server-a")
    assert SharedFSBackend(root=str(root)).host == socket.gethostname()
    name = os.path.basename(first._temp_path())
    assert name.split(".")[0] == str(os.getpid()), "temp names start with the writer's pid"
    assert len({first._temp_path() for _ in range(1000)}) == 1000


async def test_startup_cleanup_removes_only_this_hosts_stale_temp_files(root):
    tmp = root / ".gateway" / "tmp"
    ours, theirs = tmp / "server-a", tmp / "server-b"
    ours.mkdir(parents=True)
    theirs.mkdir(parents=True)
    old = time.time() - 3600
    gone = dead_pid()
    stale = ours / f"{gone}.1-0-deadbeef"
    recent = ours / f"{gone}.1-1-cafebabe"  # a dead pid here, but maybe another machine sharing our host_id
    live = ours / f"{os.getppid()}-0-00000000"  # a live process on this host (our parent) writes it
    other_host = theirs / f"{gone}.1-0-deadbeef"  # the same name on another server: never ours to judge
    for path in (stale, recent, live, other_host):
        path.write_bytes(b"partial upload")
    for path in (stale, live, other_host):
        os.utime(path, (old, old))
    backend = await started(root, host_id="server-a", stale_temp_seconds=600)
    assert not stale.exists()
    assert recent.exists() and live.exists() and other_host.exists()
    backend.stale_temp_seconds = 0
    assert backend.clean_temp_files() == 1 and not recent.exists()
    assert live.exists() and other_host.exists()


async def test_no_process_cache_hides_another_servers_write(root):
    """Each call goes to the files: a write by another server is seen by the very next call."""
    first = await started(root, host_id="server-a")
    second = await started(root, host_id="server-b")
    await first.create_bucket("faces")
    assert (await second.head_bucket("faces")).name == "faces"
    for round_ in range(20):
        data = f"version {round_}".encode() * (round_ + 1)
        writer, reader = (first, second) if round_ % 2 else (second, first)
        info = await put_bytes(writer, "faces", "cam/hot", data)
        assert await get_bytes(reader, "faces", "cam/hot") == data
        assert (await reader.head("faces", "cam/hot")).etag == info.etag
        assert [o.etag for o in (await reader.list("faces", "cam/")).objects] == [info.etag]
    await first.delete("faces", "cam/hot")
    with pytest.raises(errors.NoSuchKey):
        await second.get("faces", "cam/hot")
    assert await list_all(second, "faces") == ([], [])


async def test_directory_pruned_by_another_server_is_made_again(root):
    """Server B deletes the last object of a directory (and prunes it) while A publishes into it."""
    first = await started(root, host_id="server-a")
    second = await started(root, host_id="server-b")
    await first.create_bucket("faces")
    await put_bytes(first, "faces", "cam/day/one", b"1")
    original = first._make_parents_once
    calls = []

    def made_then_pruned(bucket_dir, key):
        if not calls:  # the first attempt loses the race: "cam" is made, then pruned before "day" is
            os.mkdir(os.path.join(bucket_dir, "cam"))
            os.rmdir(os.path.join(bucket_dir, "cam"))
            calls.append(key)
            raise FileNotFoundError(errno.ENOENT, "pruned by another server")
        return original(bucket_dir, key)

    await second.delete("faces", "cam/day/one")
    assert not (root / "faces" / "cam").exists(), "the delete prunes empty directories"
    first._make_parents_once = made_then_pruned
    await put_bytes(first, "faces", "cam/day/two", b"2")
    assert calls and await get_bytes(second, "faces", "cam/day/two") == b"2"


async def test_busy_target_is_retried_without_blocking(root):
    """An SMB server refuses to replace a file another client has open (EBUSY): the put waits, then wins."""
    backend = await started(root, busy_retry_seconds=5)
    await backend.create_bucket("faces")
    await put_bytes(backend, "faces", "held", b"old")
    real_replace = os.replace
    refusals = []

    def busy_replace(src, dst):
        if dst.endswith("held" + fslayout.OBJ_SUFFIX) and len(refusals) < 3:
            refusals.append(dst)
            raise OSError(errno.EBUSY, "Device or resource busy", dst)
        return real_replace(src, dst)

    os.replace = busy_replace
    try:
        await put_bytes(backend, "faces", "held", b"new")
    finally:
        os.replace = real_replace
    assert len(refusals) == 3
    assert await get_bytes(backend, "faces", "held") == b"new"
    assert os.listdir(backend.tmp_dir) == [], "no temp file is left behind"


async def test_target_busy_too_long_is_a_503_and_leaves_the_old_version(root):
    backend = await started(root, busy_retry_seconds=0.2)
    await backend.create_bucket("faces")
    await put_bytes(backend, "faces", "held", b"old")
    real_replace = os.replace

    def always_busy(src, dst):
        if dst.endswith("held" + fslayout.OBJ_SUFFIX):
            raise OSError(errno.EBUSY, "Device or resource busy", dst)
        return real_replace(src, dst)

    os.replace = always_busy
    try:
        with pytest.raises(errors.SlowDown) as caught:
            await put_bytes(backend, "faces", "held", b"new")
    finally:
        os.replace = real_replace
    assert caught.value.status == 503 and "in use" in caught.value.message
    assert await get_bytes(backend, "faces", "held") == b"old"
    assert os.listdir(backend.tmp_dir) == []


@pytest.mark.parametrize("long_part", ["file", "directory"])
async def test_a_listing_never_drops_an_object_the_mount_fails_to_read(root, monkeypatch, long_part):
    """A long (hashed) name's full text is read from the file (or the directory's %name file) while
    listing. An EIO there must fail the listing (503): a listing without the object is what
    `rclone sync` or `aws s3 sync --delete` would act on."""
    backend = await started(root)
    await backend.create_bucket("faces")
    long = "n" * 300
    key = long if long_part == "file" else f"{long}/inside"
    await put_bytes(backend, "faces", key, b"x")
    assert [o.key for o in (await backend.list("faces")).objects] == [key]

    def long_name_text(path: str) -> bool:
        name = os.path.basename(path)
        return "%h" in name or name == "%name"

    fail_with_eio(monkeypatch, os, "open", long_name_text)
    fail_with_eio(monkeypatch, builtins, "open", long_name_text)
    with pytest.raises(errors.BackendUnavailable) as caught:
        await backend.list("faces")
    assert "Input/output error" in caught.value.message


def fail_with_eio(monkeypatch, owner, name: str, matches, times: int | None = None) -> list[str]:
    """``owner.name`` (os.unlink, os.open, builtins.open) fails with EIO ``times`` times (None: always)
    for the paths ``matches`` accepts, as on a failing mount; returns the paths it failed."""
    real = getattr(owner, name)
    failed: list[str] = []

    def call(path, *args, **kwargs):
        if matches(str(path)) and (times is None or len(failed) < times):
            failed.append(str(path))
            raise OSError(errno.EIO, "Input/output error", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(owner, name, call)
    return failed


async def test_failed_writes_temp_file_is_removed_once_the_mount_lets_it(root, monkeypatch):
    """A mount failing for a moment fails the publish and the removal of the temp file right after it:
    the removal goes on in the background, and the 503 is not held up by it."""
    backend = await started(root)
    await backend.create_bucket("faces")
    real_replace = os.replace

    def failing_replace(src, dst):
        if dst.endswith("k" + fslayout.OBJ_SUFFIX):
            raise OSError(errno.EIO, "Input/output error", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    failed = fail_with_eio(monkeypatch, os, "unlink", lambda path: path.startswith(backend.tmp_dir), times=3)
    with pytest.raises(errors.BackendUnavailable):
        await put_bytes(backend, "faces", "k", b"never published")
    assert len(failed) == 1 and os.listdir(backend.tmp_dir) != [], "the first removal failed, the file is there"
    for _ in range(100):  # bounded: the retries take about 0.02 + 0.04 + 0.08 s
        if not os.listdir(backend.tmp_dir):
            break
        await asyncio.sleep(0.02)
    assert os.listdir(backend.tmp_dir) == [] and len(failed) == 3


async def test_temp_file_the_mount_does_not_let_go_is_reported_and_removed_after_the_next_write(
        root, monkeypatch, caplog):
    """Before, such a file stayed, as large as its object, until the gateway restarted."""
    monkeypatch.setattr(sharedfs, "LEFTOVER_REMOVE_SECONDS", 0.2)
    backend = await started(root)
    await backend.create_bucket("faces")
    with monkeypatch.context() as failing:
        failing.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
        fail_with_eio(failing, os, "unlink", lambda path: path.startswith(backend.tmp_dir))
        with pytest.raises(errors.BackendUnavailable):
            await put_bytes(backend, "faces", "k", b"x")
        await asyncio.gather(*backend._removals)
    assert "could not remove the temp file of a failed write" in caplog.text
    assert "tried again after the next write that works" in caplog.text
    assert len(os.listdir(backend.tmp_dir)) == 1  # kept, and said so
    await put_bytes(backend, "faces", "k", b"the mount works again")
    assert os.listdir(backend.tmp_dir) == []


async def test_probe_files_held_for_a_moment_are_still_removed(root, monkeypatch):
    """At start-up the probe's just-closed file may still be held by the SMB server (EBUSY)."""
    tmp_dir = root / ".gateway" / "tmp" / "server-1"
    failed = fail_with_eio(monkeypatch, os, "unlink", lambda path: path.startswith(str(tmp_dir)), times=2)
    backend = await started(root, host_id="server-1")
    assert len(failed) == 2
    assert os.listdir(backend.tmp_dir) == []


async def test_failing_mount_is_a_503_naming_the_backend(root):
    backend = await started(root)
    await backend.create_bucket("faces")
    real_open = os.open

    def stale_handle(path, *args, **kwargs):
        if str(path).startswith(str(root)):  # the server behind the mount went away
            raise OSError(errno.ESTALE, "Stale file handle", path)
        return real_open(path, *args, **kwargs)

    os.open = stale_handle
    try:
        for call in (lambda: backend.get("faces", "k"), lambda: backend.head("faces", "k"),
                     lambda: backend.put("faces", "k", Payload.from_bytes(b"x"), ObjectMeta())):
            with pytest.raises(errors.BackendUnavailable) as caught:
                await call()
            assert caught.value.status == 503 and "Stale file handle" in caught.value.message
            assert repr(backend.name) in caught.value.message
    finally:
        os.open = real_open


async def test_a_bucket_the_mount_cannot_read_is_a_503_not_no_such_bucket(root):
    """A failing filesystem under a bucket (here a symlink loop: ELOOP, as EIO or ESTALE would be)
    is a storage failure: a NoSuchBucket would tell the client the bucket is gone."""
    backend = await started(root)
    os.symlink("loop", root / "loop")
    calls = {
        "put": lambda: backend.put("loop", "k", Payload.from_bytes(b"x"), ObjectMeta()),
        "list": lambda: backend.list("loop"),
        "delete": lambda: backend.delete("loop", "k"),
        "delete_bucket": lambda: backend.delete_bucket("loop"),
        "head_bucket": lambda: backend.head_bucket("loop"),
    }
    for name, call in calls.items():
        with pytest.raises(errors.BackendUnavailable) as caught:
            await call()
        assert "symbolic links" in caught.value.message, name
    # The local backend has no 503 of its own: the error reaches the front end (a logged 500).
    local = LocalBackend(root=str(root))
    await local.start()
    with pytest.raises(OSError):
        await local.list("loop")


@pytest.mark.parametrize("name", [
    "plain", "k%obj", "%bucket.json", "%name", "a%25b", "%2E%2E", "%_", "x%h0123abcd", "q?x", "h#sh",
    'co:lon*star"<>|\\', "trailing.", "trailing ", "ctl\x01\x1f", "é€😀", "at@plus+amp&",
])
def test_smbnetfs_names_round_trip(name):
    encoded = SmbnetfsNames.encode(name)
    assert "%" not in encoded.replace("%25", ""), "every % is escaped for libsmbclient's URL decoding"
    assert not set(encoded) & set('"*:<>?|\\'), "no character an SMB server refuses"
    assert SmbnetfsNames.decode(encoded) == name
    # smbnetfs lists names percent-encoded (at least % and @); decoding that gives the name back too.
    listed = encoded.replace("@", "%40")
    assert SmbnetfsNames.decode(listed) == name


def files_under(directory) -> set[str]:
    return {os.path.relpath(os.path.join(parent, name), directory)
            for parent, _, names in os.walk(directory) for name in names}


async def test_every_layout_name_goes_through_the_name_encoding(root):
    """On a plain directory the smbnetfs spelling shows on disk: objects, directories, %name and
    %bucket.json are all encoded, and reading, listing and pruning find them again."""
    backend = await started(root, name_encoding="smbnetfs")
    await backend.create_bucket("faces")
    long_segment = ":" + "seg-" * 60  # a hashed directory, with a character SMB refuses
    keys = ["cam?/a%b", "trail./y", f"{long_segment}/x"]
    for key in keys:
        await put_bytes(backend, "faces", key, key.encode())
    hashed = SmbnetfsNames.encode(fslayout.escape_segment(long_segment))
    assert "%25h" in hashed
    assert files_under(root / "faces") == {
        "%25bucket.json",
        "cam\uf025/a%2525b%25obj",
        "trail\uf029/y%25obj",
        f"{hashed}/x%25obj",
        f"{hashed}/%25name",
    }
    marker = json.loads((root / "faces" / "%25bucket.json").read_text())
    assert (await backend.head_bucket("faces")).created == marker["created"]
    assert (await list_all(backend, "faces"))[0] == sorted(keys, key=str.encode)
    for key in keys:
        assert await get_bytes(backend, "faces", key) == key.encode()
        assert (await backend.head("faces", key)).size == len(key.encode())
        await backend.delete("faces", key)
    assert files_under(root / "faces") == {"%25bucket.json"}, "empty directories and their %name are pruned"
    assert os.listdir(root / "faces") == ["%25bucket.json"]


async def test_name_file_removed_during_publish_is_written_again_through_the_encoding(root, monkeypatch):
    """Another server's DELETE removes a hashed directory's %name just before our object lands there: the put
    writes it again. (The check for a hashed directory uses layout names: on disk %h is spelt %25h here.)"""
    backend = await started(root, name_encoding="smbnetfs")
    await backend.create_bucket("faces")
    long_segment = "seg-" * 60
    await put_bytes(backend, "faces", f"{long_segment}/old", b"old")
    hashed_dir = os.path.dirname(backend._object_path("faces", f"{long_segment}/new"))
    name_file = Path(hashed_dir, SmbnetfsNames.encode(fslayout.NAME_FILE))
    assert name_file.exists()
    real_replace = os.replace
    removed = []

    def pruned_meanwhile(src, dst):
        if dst.endswith(SmbnetfsNames.encode("new" + fslayout.OBJ_SUFFIX)) and not removed:
            os.unlink(name_file)  # the other server's delete of "old" got this far before our rename
            removed.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", pruned_meanwhile)
    await put_bytes(backend, "faces", f"{long_segment}/new", b"new")
    assert removed and name_file.exists()
    assert name_file.read_text(encoding="utf-8") == long_segment


async def test_smbnetfs_share_holds_the_local_layout(smbnetfs_share, smbd):
    """Objects written through smbnetfs are, on the server's disk, the local backend's files."""
    directory = f"layout-{uuid.uuid4().hex[:12]}"
    root = smbnetfs_share.share_dir / directory
    root.mkdir()
    backend = await started(root, name_encoding="smbnetfs")
    await backend.create_bucket("faces")
    keys = ["cam1/0001.jpg", "per%cent/a", "colon:star*", "tab\there"]
    for key in keys:
        await put_bytes(backend, "faces", key, key.encode())
    on_disk = LocalBackend(root=str(smbd.share_dir / directory))
    await on_disk.start()
    assert (await list_all(on_disk, "faces"))[0] == sorted(keys)
    for key in keys:
        assert await get_bytes(on_disk, "faces", key) == key.encode()
    await put_bytes(on_disk, "faces", "from/the/server", b"direct")
    assert await get_bytes(backend, "faces", "from/the/server") == b"direct"
    assert (await list_all(backend, "faces"))[0] == sorted(keys + ["from/the/server"])


async def test_smbnetfs_refuses_to_replace_an_open_file(smbnetfs_share):
    """What the busy retry is for: through smbnetfs a rename over a file open elsewhere fails with EBUSY."""
    directory = smbnetfs_share.share_dir / f"busy-{uuid.uuid4().hex[:12]}"
    directory.mkdir()
    target, replacement = directory / "target", directory / "replacement"
    target.write_bytes(b"old")
    replacement.write_bytes(b"new")
    with open(target, "rb"):
        with pytest.raises(OSError) as caught:
            os.replace(replacement, target)
        assert caught.value.errno in (errno.EBUSY, errno.EEXIST)
    os.replace(replacement, target)
    assert target.read_bytes() == b"new"


def test_gateway_without_its_mount_fails_at_start_naming_backend_and_root(tmp_path):
    missing = tmp_path / "not-mounted"
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{missing}"\n'
    gateway = GatewayProcess(tmp_path / "unused-data-dir", config=config)
    try:
        with pytest.raises(RuntimeError) as caught:
            gateway.start()
    finally:
        gateway.stop()
    assert "backend 'shared'" in str(caught.value) and str(missing) in str(caught.value)
    assert "mount the share" in str(caught.value)
    assert not missing.exists()


async def test_a_share_still_mounted_but_failing_is_said_to_fail_not_to_be_unmounted(tmp_path):
    """With require_mount, an EIO of a mounted share (a failing or hung NFS server, ESTALE) was answered
    "the shared storage is not mounted ... any more; mount the share again": os.path.ismount says False
    whenever stat() fails. The operator was sent to mount what is mounted."""
    from gateway.testing.faulty_disk import FaultyDisk

    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as disk:
        backend = await started(disk.path, require_mount=True)
        try:
            await backend.create_bucket("b")
            disk.fail()
            for call in (lambda: backend.head("b", "missing"), lambda: backend.list("b"),
                         lambda: backend.list_buckets()):
                with pytest.raises(errors.BackendUnavailable) as info:
                    await call()
                assert "failed: Input/output error (errno 5)" in info.value.message, info.value.message
                assert "not mounted" not in info.value.message
            disk.heal()
            assert (await backend.list("b")).objects == []
        finally:
            disk.heal()
            await backend.close()
