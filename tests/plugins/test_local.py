"""The local backend passes the conformance suite, plus what only files on disk can promise."""

import os
import random
import shutil
import subprocess
import sys
import time

import anyio
import pytest

from gateway import errors, mounts
from gateway.backend import ByteRange, ObjectMeta
from gateway.payload import Payload
from gateway.testing.backend_io import get_bytes, list_all, put_bytes
from gateway.testing.conformance import BackendConformance
from gateway.testing.server import GatewayProcess, free_port
from gateway_plugins import fslayout, readcache
from gateway_plugins import local as local_backend
from gateway_plugins.local import READ_CHUNK, LocalBackend
from gateway_plugins.sharedfs import SharedFSBackend

pytestmark = pytest.mark.anyio  # the module-level tests below; the class gets it from BackendConformance


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def started(root, **options) -> LocalBackend:
    backend = LocalBackend(root=str(root), **options)
    await backend.start()
    return backend


class TestLocalBackend(BackendConformance):
    @pytest.fixture
    def root(self, tmp_path):
        return tmp_path / "cv-storage"

    @pytest.fixture
    async def backend(self, root):
        backend = await started(root)
        yield backend
        await backend.close()

    @pytest.fixture
    def reopen(self, root):
        return lambda: started(root)


# What only a backend on files promises ------------------------------------------


@pytest.fixture
async def local(tmp_path):
    backend = await started(tmp_path / "cv-storage")
    await backend.create_bucket("faces")
    yield backend
    await backend.close()


def files_under(directory) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, names in os.walk(directory) for f in names)


async def test_objects_are_files_in_the_documented_layout(local):
    await put_bytes(local, "faces", "cam1/2024/0001.jpg", b"jpeg", ObjectMeta("image/jpeg", {"camera": "1"}))
    path = os.path.join(local.root, "faces", "cam1", "2024", "0001.jpg%obj")
    with open(path, "rb") as f:
        raw = f.read()
    header, offset = fslayout.decode_header(raw)
    assert raw[offset:] == b"jpeg"
    assert (header["key"], header["size"], header["meta"]["content_type"]) == ("cam1/2024/0001.jpg", 4, "image/jpeg")
    assert header["meta"]["metadata"] == {"camera": "1"}
    assert files_under(os.path.join(local.root, "faces")) == ["%bucket.json", "cam1/2024/0001.jpg%obj"]


async def test_copied_tree_is_a_complete_store(local, tmp_path):
    """A backup is a copy of the directory tree: a gateway on the copy sees every object and its metadata."""
    meta = ObjectMeta("image/png", {"event": "7"}, {"cache-control": "no-cache"})
    keys = ["a", "a/b", "long/" + "x" * 400 + "/y", "ü/%/..", "trailing/"]
    for key in keys:
        await put_bytes(local, "faces", key, key.encode(), meta, checksum_algorithms=("CRC32",))
    shutil.copytree(local.root, tmp_path / "backup", ignore=shutil.ignore_patterns(".gateway"))
    copy = await started(tmp_path / "backup")
    try:
        assert (await list_all(copy, "faces"))[0] == sorted(keys, key=str.encode)
        for key in keys:
            assert await get_bytes(copy, "faces", key) == key.encode()
            head = await copy.head("faces", key)
            assert head.meta == meta and head.checksums == (await local.head("faces", key)).checksums
    finally:
        await copy.close()


async def test_no_temp_files_left_behind(local):
    await put_bytes(local, "faces", "ok", b"x" * 3_000_000)
    with pytest.raises(errors.BadDigest):
        await put_bytes(local, "faces", "bad", b"x" * 3_000_000, content_md5="1B2M2Y8AsgTpgAmY7PhCfg==")
    upload = await local.create_multipart("faces", "mp", ObjectMeta())
    part = await local.upload_part("faces", "mp", upload.upload_id, 1, Payload.from_bytes(b"p"))
    await local.complete_multipart("faces", "mp", upload.upload_id, [(1, part.etag)])
    assert os.listdir(local.tmp_dir) == []


def spawn_sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


async def test_startup_removes_temp_files_of_dead_processes_only(tmp_path):
    root = tmp_path / "cv-storage"
    first = await started(root)
    dead = spawn_sleeper()
    dead.kill()
    dead.wait()
    live = spawn_sleeper()
    try:
        stale = os.path.join(first.tmp_dir, f"{dead.pid}-0-deadbeef")
        in_flight = os.path.join(first.tmp_dir, f"{live.pid}-0-cafebabe")
        junk = os.path.join(first.tmp_dir, "not-a-temp-name")
        # A live pid with another start time: the pid was reused, the writer is gone.
        reused = os.path.join(first.tmp_dir, f"{live.pid}.1-0-0badf00d")
        with_start = os.path.join(first.tmp_dir, os.path.basename(first._temp_path()))
        for path in (stale, in_flight, junk, reused, with_start):
            with open(path, "wb") as f:
                f.write(b"partial object")
        second = await started(root)
        assert not os.path.exists(stale), "a dead writer's temp file survived start-up"
        assert not os.path.exists(junk)
        assert not os.path.exists(reused), "a temp file survived because its pid was reused"
        assert os.path.exists(with_start), "start-up removed a temp file of this very process"
        os.unlink(with_start)
        assert os.path.exists(in_flight), "start-up removed the temp file of a live process"
        await second.close()
    finally:
        live.kill()
        live.wait()
    third = await started(root)
    assert os.listdir(third.tmp_dir) == []
    await first.close()
    await third.close()


async def test_second_instance_in_the_same_process_keeps_writes_in_flight(tmp_path):
    """Starting another instance on the same root (same pid) must not delete a temp file being written."""
    root = tmp_path / "cv-storage"
    first = await started(root)
    await first.create_bucket("b")
    halfway, go_on = anyio.Event(), anyio.Event()

    async def body():
        yield b"x" * 2_000_000
        halfway.set()
        await go_on.wait()
        yield b"y"

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first.put, "b", "k", Payload(body()), ObjectMeta())
        await halfway.wait()
        assert len(os.listdir(first.tmp_dir)) == 1
        second = await started(root)
        go_on.set()
    assert await get_bytes(second, "b", "k") == b"x" * 2_000_000 + b"y"
    await second.close()
    await first.close()


ESCAPING_KEYS = [
    "..", "../..", "../escaped", "../../escaped", "a/../../escaped", "/abs/escaped", "//abs/escaped",
    "..%2F..%2Fescaped", "%2e%2e/%2e%2e/escaped", "..\\..\\escaped", "a/\x00/b", "\x00", "nul\x00../escaped",
    "./../escaped", "a/./../../escaped", "../" * 20 + "escaped", "/" + "../" * 20 + "tmp/escaped",
]


async def test_no_key_escapes_the_root(tmp_path):
    sandbox = tmp_path / "sandbox"
    root = sandbox / "cv-storage"
    backend = await started(root)
    await backend.create_bucket("b")
    try:
        for number, key in enumerate(ESCAPING_KEYS):
            await put_bytes(backend, "b", key, str(number).encode())
        assert os.listdir(sandbox) == ["cv-storage"], "a file was written next to the storage root"
        assert sorted(os.listdir(root)) == [".gateway", "b"]
        bucket_dir = os.path.realpath(root / "b")
        for relative in files_under(root / "b"):
            path = os.path.realpath(os.path.join(bucket_dir, relative))
            assert path.startswith(bucket_dir + os.sep), f"{relative} resolves outside the bucket"
            assert relative == "%bucket.json" or relative.endswith("%obj"), relative
            assert "/../" not in "/" + relative + "/" and "/./" not in "/" + relative + "/"
        for number, key in enumerate(ESCAPING_KEYS):
            assert await get_bytes(backend, "b", key) == str(number).encode()
        assert (await list_all(backend, "b"))[0] == sorted(ESCAPING_KEYS, key=str.encode)
        for key in ESCAPING_KEYS:
            await backend.delete("b", key)
        assert os.listdir(root / "b") == ["%bucket.json"], "deleting left files or directories behind"
    finally:
        await backend.close()


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\x00b", ".hidden", ".gateway"])
async def test_bucket_names_cannot_escape(local, name):
    with pytest.raises(errors.InvalidBucketName):
        await local.create_bucket(name)
    with pytest.raises((errors.InvalidBucketName, errors.NoSuchBucket)):
        await local.head_bucket(name)


async def test_foreign_and_corrupt_files_are_not_objects(local):
    await put_bytes(local, "faces", "real", b"x")
    bucket_dir = os.path.join(local.root, "faces")
    os.makedirs(os.path.join(bucket_dir, "copied-by-hand"))
    for name in ("README.txt", "copied-by-hand/photo.jpg"):
        with open(os.path.join(bucket_dir, name), "wb") as f:
            f.write(b"not an object")
    damaged = {
        "broken": b"garbage that is no object header",
        "short": b"CV",
        "no-fields": fslayout.PREFIX.pack(fslayout.MAGIC, 2) + b"{}",
        "bad-json": fslayout.PREFIX.pack(fslayout.MAGIC, 5) + b"{nope",
        "cut-header": fslayout.PREFIX.pack(fslayout.MAGIC, 500) + b"{",
    }
    for name, content in damaged.items():
        with open(os.path.join(bucket_dir, name + "%obj"), "wb") as f:
            f.write(content)
    assert await list_all(local, "faces") == (["real"], [])
    assert await list_all(local, "faces", delimiter="/") == (["real"], [])
    for name in damaged:
        for call in (local.get, local.head):
            with pytest.raises(errors.InternalError, match="damaged"):
                await call("faces", name)


@pytest.mark.parametrize("size", [30_000, 200_000, 3_000_000])  # in the first read, read whole, streamed
async def test_truncated_object_file_fails_the_read(local, size):
    await put_bytes(local, "faces", "big", b"z" * size)
    path = os.path.join(local.root, "faces", "big%obj")
    os.truncate(path, os.path.getsize(path) - 1000)
    with pytest.raises(errors.InternalError):
        reader = await local.get("faces", "big")
        async with reader:
            await reader.read_all()


async def test_bucket_directory_made_by_hand(local):
    os.makedirs(os.path.join(local.root, "by-hand"))
    assert (await local.head_bucket("by-hand")).name == "by-hand"
    assert "by-hand" in [b.name for b in await local.list_buckets()]
    await put_bytes(local, "by-hand", "k", b"v")
    assert await get_bytes(local, "by-hand", "k") == b"v"


async def test_without_fsync(tmp_path):
    backend = await started(tmp_path / "cv-storage", fsync=False, fsync_dirs=True)
    await backend.create_bucket("b")
    await put_bytes(backend, "b", "d/k", b"v" * 2_000_000)
    assert await get_bytes(backend, "b", "d/k") == b"v" * 2_000_000
    await backend.close()


async def test_unusable_root_fails_at_start(tmp_path):
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(ValueError, match="root"):
        await started(tmp_path / "a-file" / "cv-storage")


def test_serve_with_an_unusable_root_exits_2_with_the_reason_on_its_last_line(tmp_path):
    """A backend's start() refusing its storage stops `gateway serve` with exit status 2 and an
    `error:` line, as every other bad setting (docs/plugins.md); it was uvicorn's status 3."""
    (tmp_path / "a-file").write_text("not a directory")
    config = tmp_path / "gateway.toml"
    config.write_text(f'default_backend = "disk"\n[backends.disk]\ntype = "local"\nroot = "{tmp_path / "a-file"}"\n')
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port",
                             str(free_port()), "--access-key", "k", "--secret-key", "s" * 20],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: backend 'disk'") and "is not usable" in last and "a-file" in last, result.stderr
    assert "Traceback" not in result.stderr


async def test_long_directory_names_list_without_their_name_file(local):
    """A copy that lost the %name file of a hashed (long) directory still lists its objects."""
    long_segment = "seg-" * 80
    keys = [f"{long_segment}/x", f"{long_segment}/deeper/{long_segment}/y"]
    for key in keys:
        await put_bytes(local, "faces", key, b"v")
    for parent, _, names in os.walk(os.path.join(local.root, "faces")):
        if fslayout.NAME_FILE in names:
            os.unlink(os.path.join(parent, fslayout.NAME_FILE))
    assert (await list_all(local, "faces"))[0] == sorted(keys, key=str.encode)
    assert await list_all(local, "faces", delimiter="/") == ([], [long_segment + "/"])
    assert await list_all(local, "faces", prefix=long_segment + "/deeper/", delimiter="/") == (
        [], [f"{long_segment}/deeper/{long_segment}/"])


async def test_key_too_long_for_the_filesystem(local):
    """Past S3's 1024 bytes the API refuses a key; the backend itself still answers with S3 errors."""
    key = ("%" * 66 + "/") * 30  # 2010 bytes, about 6000 on disk: longer than PATH_MAX
    with pytest.raises(errors.KeyTooLongError):
        await put_bytes(local, "faces", key, b"x")
    for call in (local.head, local.get):
        with pytest.raises(errors.NoSuchKey):
            await call("faces", key)
    await local.delete("faces", key)
    assert os.listdir(local.tmp_dir) == []
    assert await list_all(local, "faces") == ([], [])


async def test_directory_removed_at_every_publish_is_a_503(local):
    """Other servers pruning the directory each time it is made (deleting the last object there): a 503, not a 500."""
    make_parents_once = local._make_parents_once
    pruned = []

    def made_then_pruned(bucket_dir, key):
        make_parents_once(bucket_dir, key)
        shutil.rmtree(os.path.join(bucket_dir, "cam"))  # before our rename gets there
        pruned.append(key)

    local._make_parents_once = made_then_pruned
    with pytest.raises(errors.ServiceUnavailable) as caught:
        await put_bytes(local, "faces", "cam/day/one", b"1")
    assert caught.value.status == 503 and "retry the request" in caught.value.message
    assert len(pruned) == local_backend.PUBLISH_ATTEMPTS
    assert os.listdir(local.tmp_dir) == [], "the temp file is removed"
    del local._make_parents_once
    await put_bytes(local, "faces", "cam/day/one", b"1")
    assert await get_bytes(local, "faces", "cam/day/one") == b"1"


# The cache of small objects -------------------------------------------------------
# It never serves what the file no longer holds: every hit is checked against a fresh stat() of the
# object's file (plugins/readcache.py, SmallObjects), so an overwrite, a delete or any change of the
# file through another backend instance, another gateway process or a hand edit is seen at once.
# Bounded in bytes; off with read_cache_bytes = 0 (and by default on sharedfs).


def settle() -> None:
    """Files changed within SETTLE_SECONDS are not cached: let the last write age past it."""
    time.sleep(readcache.SETTLE_SECONDS + 0.05)


async def test_a_settled_small_object_is_served_from_memory_with_ranges_and_head(local):
    data = random.Random(1).randbytes(30_000)  # within the first read of its file: kept as bytes
    await put_bytes(local, "faces", "cam1/a.jpg", data)
    settle()
    cache = local.small_objects
    assert await get_bytes(local, "faces", "cam1/a.jpg") == data  # read from the file, then recorded
    assert len(cache) == 1 and cache.hits == 0
    assert await get_bytes(local, "faces", "cam1/a.jpg") == data
    reader = await local.get("faces", "cam1/a.jpg", ByteRange(100, 199))
    assert (reader.start, reader.stop, reader.data) == (100, 200, data[100:200])
    reader.close()
    info = await local.head("faces", "cam1/a.jpg")
    assert info.size == len(data)
    assert cache.hits == 3
    with pytest.raises(errors.InvalidRange):
        await local.get("faces", "cam1/a.jpg", ByteRange(40_000, None))


async def test_a_just_written_object_is_not_cached(local):
    await put_bytes(local, "faces", "fresh", b"x" * 1000)
    for _ in range(3):
        assert await get_bytes(local, "faces", "fresh") == b"x" * 1000
    assert len(local.small_objects) == 0 and local.small_objects.hits == 0


async def test_overwrite_and_delete_by_another_instance_are_seen_at_once(local, tmp_path):
    other = await started(tmp_path / "cv-storage")  # another gateway on the same directory
    try:
        for round_ in range(6):
            data = random.Random(round_).randbytes(4096)  # the same size every time
            await put_bytes(other, "faces", "k", data)
            settle()
            assert await get_bytes(local, "faces", "k") == data
            assert await get_bytes(local, "faces", "k") == data  # a hit of this version
        assert local.small_objects.hits >= 6
        await other.delete("faces", "k")
        with pytest.raises(errors.NoSuchKey):
            await local.get("faces", "k")
        with pytest.raises(errors.NoSuchKey):
            await local.head("faces", "k")
        assert len(local.small_objects) == 0
    finally:
        await other.close()


async def test_a_file_changed_in_place_is_read_again(local):
    await put_bytes(local, "faces", "edited", b"A" * 2000)
    settle()
    assert await get_bytes(local, "faces", "edited") == b"A" * 2000
    assert await get_bytes(local, "faces", "edited") == b"A" * 2000
    assert local.small_objects.hits == 1
    path = local._object_path("faces", "edited")
    with open(path, "r+b") as f:  # what the gateway never does, but an operator's tool might
        f.seek(-2000, os.SEEK_END)
        f.write(b"B" * 2000)
    assert await get_bytes(local, "faces", "edited") == b"B" * 2000
    assert local.small_objects.hits == 1


async def test_bounded_in_bytes_least_recently_used_first(tmp_path):
    entry = 4096 + readcache.ENTRY_OVERHEAD
    backend = await started(tmp_path / "cv-storage", read_cache_bytes=3 * entry)
    try:
        await backend.create_bucket("b")
        for i in range(5):
            await put_bytes(backend, "b", f"k{i}", bytes([i]) * 4096)
        settle()
        for i in range(3):
            await get_bytes(backend, "b", f"k{i}")
        await get_bytes(backend, "b", "k0")  # now the most recently used
        await get_bytes(backend, "b", "k3")  # evicts k1, the least recently used
        cache = backend.small_objects
        assert len(cache) == 3 and cache.size <= cache.limit
        assert set(cache._entries) == {backend._object_path("b", k) for k in ("k0", "k2", "k3")}
        for i in range(5):  # every object is still whole, cached or not
            assert await get_bytes(backend, "b", f"k{i}") == bytes([i]) * 4096
    finally:
        await backend.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_larger_objects_are_kept_as_open_files_not_bytes(local):
    # Beyond the first read of its file (64 KiB with the header) up to READ_CHUNK the cache keeps
    # the open file (the front end sends it with sendfile); beyond that nothing is kept.
    sizes = {"just-beyond": 66_000, "beyond-first-read": 100 * 1024, "largest": READ_CHUNK}
    blobs = {key: os.urandom(size) for key, size in sizes.items()}
    for key, data in blobs.items():
        await put_bytes(local, "faces", key, data)
    await put_bytes(local, "faces", "huge", os.urandom(READ_CHUNK + 1))
    settle()
    for _ in range(2):
        for key, data in blobs.items():
            assert await get_bytes(local, "faces", key) == data
        await get_bytes(local, "faces", "huge")
    cache = local.small_objects
    assert cache.files == 3 and len(cache) == 3 and cache.hits == 3
    assert cache.size == 3 * readcache.ENTRY_OVERHEAD  # no bytes held: the page cache has them
    reader = await local.get("faces", "beyond-first-read", ByteRange(70_000, 80_000))
    try:
        assert reader.data is None and reader.file is not None
        assert (reader.start, reader.stop) == (70_000, 80_001)
        assert await reader.read_all() == blobs["beyond-first-read"][70_000:80_001]
    finally:
        reader.close()


async def test_a_range_of_a_large_object_is_sent_from_its_file_which_closes_with_the_reader(local):
    data = os.urandom(3 * READ_CHUNK)
    await put_bytes(local, "faces", "video", data)
    settle()
    before = open_fds()
    reader = await local.get("faces", "video", ByteRange(READ_CHUNK + 5, 2 * READ_CHUNK + 4))  # 1 MiB
    assert reader.data is None and reader.file is not None and reader.file.refs == 1
    assert await reader.read_all() == data[READ_CHUNK + 5: 2 * READ_CHUNK + 5]
    reader.close()
    assert open_fds() == before and len(local.small_objects) == 0  # not kept: the object is too large
    reader = await local.get("faces", "video", ByteRange(0, READ_CHUNK))  # one byte more: streamed
    assert reader.file is None and await reader.read_all() == data[:READ_CHUNK + 1]
    reader.close()


async def test_a_reader_keeps_its_file_after_the_cache_lets_it_go(local):
    old, new = os.urandom(80_000), os.urandom(80_000)
    await put_bytes(local, "faces", "k", old)
    settle()
    await get_bytes(local, "faces", "k")  # now cached as an open file
    before = open_fds()
    reader = await local.get("faces", "k")
    assert reader.file is not None and reader.file.refs == 2
    await put_bytes(local, "faces", "k", new)  # the overwrite drops the cache's reference
    assert reader.file.refs == 1 and open_fds() == before
    assert await reader.read_all() == old  # the version this reader was opened on, whole
    reader.close()
    assert open_fds() == before - 1  # the last reference closed the file
    assert await get_bytes(local, "faces", "k") == new


async def test_open_files_are_bounded_and_closed_with_the_backend(tmp_path):
    backend = await started(tmp_path / "cv-storage", read_cache_files=3)
    try:
        await backend.create_bucket("b")
        for i in range(5):
            await put_bytes(backend, "b", f"k{i}", bytes([i]) * 80_000)
        settle()
        before = open_fds()
        for i in range(5):
            await get_bytes(backend, "b", f"k{i}")
        cache = backend.small_objects
        assert cache.files == 3 and open_fds() == before + 3
        assert set(cache._entries) == {backend._object_path("b", f"k{i}") for i in (2, 3, 4)}
        for i in range(5):
            assert await get_bytes(backend, "b", f"k{i}") == bytes([i]) * 80_000
    finally:
        await backend.close()
    assert backend.small_objects.files == 0 and open_fds() == before


async def test_no_open_files_with_read_cache_files_zero_or_on_sharedfs(tmp_path):
    backend = await started(tmp_path / "a", read_cache_files=0)
    shared = SharedFSBackend(root=str(tmp_path / "b"), read_cache_bytes=1 << 20)
    try:
        assert shared.small_objects.max_files == 0
        await backend.create_bucket("b")
        await put_bytes(backend, "b", "k", b"x" * 80_000)
        settle()
        for _ in range(2):
            assert await get_bytes(backend, "b", "k") == b"x" * 80_000
        cache = backend.small_objects  # without open files, as it was: beyond the first read, not kept
        assert cache.files == 0 and len(cache) == 0
    finally:
        await backend.close()


async def test_off_with_zero_and_by_default_on_sharedfs(tmp_path):
    backend = await started(tmp_path / "a", read_cache_bytes=0)
    shared = SharedFSBackend(root=str(backend.root))
    try:
        assert backend.small_objects is None
        assert shared.small_objects is None
        await backend.create_bucket("b")
        await put_bytes(backend, "b", "k", b"data")
        settle()
        assert await get_bytes(backend, "b", "k") == b"data"
    finally:
        await backend.close()


@pytest.mark.parametrize("setting", ["read_cache_bytes", "read_cache_files"])
@pytest.mark.parametrize("value", [-1, "256MiB", 1.5, True])
def test_a_bad_read_cache_setting_is_named(tmp_path, setting, value):
    with pytest.raises(ValueError, match=rf"backends\.local\.{setting}"):
        LocalBackend(root=str(tmp_path), **{setting: value})


@pytest.mark.anyio(False)
def test_two_gateway_processes_on_one_directory_never_serve_a_replaced_version(tmp_path):
    """Gateway A caches what it reads; gateway B overwrites (same size) and deletes: A's next read
    always returns what B last acknowledged, over real HTTP."""
    data_dir = tmp_path / "cv-storage"
    with GatewayProcess(data_dir) as first, GatewayProcess(data_dir) as second:
        reader, writer = first.client(), second.client()
        writer.create_bucket(Bucket="shared")
        rng = random.Random(5)
        for round_ in range(12):
            body = rng.randbytes(20_000)
            writer.put_object(Bucket="shared", Key="face.jpg", Body=body)
            if round_ % 3 == 0:
                settle()  # old enough to be cached by the reads below
            for _ in range(2):
                assert reader.get_object(Bucket="shared", Key="face.jpg")["Body"].read() == body, round_
        metrics = urlopen_text(first.endpoint + "/metrics")
        hits = [line for line in metrics.splitlines() if line.startswith("gateway_local_read_cache_hits_total")]
        assert hits and float(hits[0].split()[-1]) > 0, metrics
        writer.delete_object(Bucket="shared", Key="face.jpg")
        with pytest.raises(reader.exceptions.NoSuchKey):
            reader.get_object(Bucket="shared", Key="face.jpg")


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def test_head_uses_the_cache_but_does_not_fill_it(local):
    await put_bytes(local, "faces", "checked", b"c" * 500)
    settle()
    assert (await local.head("faces", "checked")).size == 500
    assert len(local.small_objects) == 0  # a HEAD reads no data: nothing to keep
    assert await get_bytes(local, "faces", "checked") == b"c" * 500
    assert (await local.head("faces", "checked")).size == 500
    assert local.small_objects.hits == 1


def test_mount_of_finds_the_deepest_mount(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:40 / /srv/cv rw,relatime - nfs4 filer:/export rw,vers=4.1\n"
        "41 40 0:41 / /srv/cv/inner\\040dir rw - fuse.smbnetfs smbnetfs rw\n"
        "42 22 0:42 / /srv/cvx rw - tmpfs tmpfs rw\n"
        "43 22 0:43 / /srv/cv rw - xfs /dev/sdb rw\n"  # mounted over /srv/cv later: it wins
        "bad line\n"
    )
    of = lambda path: mounts.mount_of(path, str(mountinfo))  # noqa: E731
    assert of("/srv/cv/objects/a") == mounts.Mount("/srv/cv", "0:43", "xfs")
    assert of("/srv/cv/inner dir/x").fstype == "fuse.smbnetfs" and of("/srv/cv/inner dir/x").network
    assert of("/srv/cvx/y").fstype == "tmpfs"  # a sibling whose name starts alike is not inside /srv/cv
    assert of("/home").fstype == "ext4" and not of("/home").network
    assert mounts.Mount("/n", "0:1", "nfs4").network
    assert mounts.mount_of("/x", str(tmp_path / "missing")) is None


async def test_default_read_cache_is_off_on_a_network_filesystem(smbd, tmp_path):
    """A local backend on a share (here smbnetfs: FUSE over SMB) may see its stat() answered from a
    client cache: the default cache of small objects turns itself off there; a configured one stays."""
    from smbnetfs_mount import mount_for

    share = mount_for(smbd, tmp_path / "smbnetfs")
    try:
        root = share.share_dir / f"local-{os.getpid()}-{random.randrange(1 << 30)}"
        root.mkdir()
        default = await started(root)
        configured = await started(root, read_cache_bytes=1 << 20)
        on_disk = await started(tmp_path / "disk")
        try:
            assert default.small_objects is None
            assert configured.small_objects is not None
            assert on_disk.small_objects is not None
        finally:
            for backend in (default, configured, on_disk):
                await backend.close()
    finally:
        share.stop()


async def test_many_slow_uploads_gather_no_more_than_the_limit_in_memory(local, monkeypatch):
    """Each PUT up to 1 MiB is gathered in memory and written with its header at once: 400 clients
    stalled near the end of such a body held 400 MB, with nothing to bound how many could. Past
    GATHERED_LIMIT in all, a PUT streams to its temp file as a large one does."""
    monkeypatch.setattr(local_backend, "GATHERED_LIMIT", 2 * 1024 * 1024)
    stalled = anyio.Event()
    piece = 900 * 1024
    waiting = 0

    async def body(n: int):
        nonlocal waiting
        yield bytes([n]) * piece
        waiting += 1  # the first piece is taken: the client stops sending for a while
        await stalled.wait()
        yield bytes([n]) * 100

    async with anyio.create_task_group() as tasks:
        for n in range(10):
            tasks.start_soon(local.put, "faces", f"slow/{n}", Payload(body(n)), ObjectMeta())
        for _ in range(500):  # bounded: 5 s
            if waiting == 10:
                break
            await anyio.sleep(0.01)
        assert waiting == 10
        assert 0 < local._gathered <= 2 * 1024 * 1024 + piece, local._gathered
        stalled.set()
    assert local._gathered == 0
    for n in range(10):
        assert await get_bytes(local, "faces", f"slow/{n}") == bytes([n]) * piece + bytes([n]) * 100
