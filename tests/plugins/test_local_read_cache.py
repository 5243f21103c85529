"""The local backend's cache of small objects never serves what the file no longer holds.

Every hit is checked against a fresh stat() of the object's file (plugins/readcache.py,
SmallObjects): an overwrite, a delete or any change of the file through another backend
instance, another gateway process or a hand edit is seen at once. Bounded in bytes; off with
read_cache_bytes = 0 (and by default on sharedfs).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from gateway import errors
from gateway.backend import ByteRange
from gateway.testing.backend_io import get_bytes, put_bytes
from gateway.testing.server import GatewayProcess
from gateway_plugins import readcache
from gateway_plugins.local import LocalBackend
from gateway_plugins.sharedfs import SharedFSBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def started(root, **options) -> LocalBackend:
    backend = LocalBackend(root=str(root), **options)
    await backend.start()
    return backend


def settle() -> None:
    """Files changed within SETTLE_SECONDS are not cached: let the last write age past it."""
    time.sleep(readcache.SETTLE_SECONDS + 0.05)


@pytest.fixture
async def local(tmp_path):
    backend = await started(tmp_path / "cv-storage")
    await backend.create_bucket("faces")
    yield backend
    await backend.close()


async def test_a_settled_small_object_is_served_from_memory_with_ranges_and_head(local):
    data = random.Random(1).randbytes(30_000)
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


async def test_objects_beyond_the_first_read_are_not_cached(local):
    data = os.urandom(100 * 1024)
    await put_bytes(local, "faces", "big", data)
    settle()
    for _ in range(2):
        assert await get_bytes(local, "faces", "big") == data
    assert len(local.small_objects) == 0


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


@pytest.mark.parametrize("value", [-1, "256MiB", 1.5, True])
def test_a_bad_read_cache_size_names_the_setting(tmp_path, value):
    with pytest.raises(ValueError, match=r"backends\.local\.read_cache_bytes"):
        LocalBackend(root=str(tmp_path), read_cache_bytes=value)


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
