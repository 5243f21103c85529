"""The conformance suite every backend passes: subclass it in a test module.

    import pytest
    from gateway.testing.conformance import BackendConformance
    from gateway_plugins.memory import MemoryBackend

    class TestMemoryBackend(BackendConformance):
        @pytest.fixture
        async def backend(self):
            backend = MemoryBackend()
            await backend.start()
            yield backend
            await backend.close()

Tests are ``async`` and run on asyncio through anyio's pytest plugin (anyio is
a dependency of the gateway already, so there is nothing to install); the
``backend`` fixture may be ``async`` too. Backends whose storage outlives an
instance also override the ``reopen`` fixture, which turns on the tests that
open a second instance on the same storage (restart, two gateways sharing it).

What a backend cannot do is declared in its ``capabilities``
(:class:`gateway.backend.Capabilities`); the tests that need a power the
backend does not claim are skipped with the capability's name as reason.
"""

from __future__ import annotations

import hashlib
import time
import tracemalloc

import anyio
import pytest

from gateway import errors
from gateway.backend import DEFAULT_CONTENT_TYPE, Backend, ByteRange, ObjectMeta
from gateway.checksums import checksum_b64
from gateway.payload import Payload

from .backend_io import (
    StreamBroke, as_async, breaking_stream, chunked, get_bytes, list_all, md5_hex, pseudo_random_chunks, put_bytes,
)
from .conformance_keys import KeyAndListingTests
from .conformance_multipart import MultipartTests

MiB = 1024 * 1024
LARGE_SIZE = 20 * MiB
# A streamed read of LARGE_SIZE must never hold more than this at once.
READ_MEMORY_BOUND = 8 * MiB
# ... and a PUT of LARGE_SIZE no more than this (a backend may gather a store's write or part size).
WRITE_MEMORY_BOUND = 14 * MiB

META = ObjectMeta(
    content_type="image/jpeg",
    metadata={"camera": "cam-07", "event-id": "42", "note": "spaces and ünïcode"},
    headers={
        "cache-control": "max-age=3600", "content-disposition": 'attachment; filename="face 1.jpg"',
        "content-encoding": "identity", "content-language": "en-US", "expires": "Thu, 01 Dec 2044 16:00:00 GMT",
        "x-amz-website-redirect-location": "/faces/moved.jpg",
    },
)


def bytes_read_by_this_process() -> int:
    """What this process has read with read()/pread() so far (Linux's /proc/self/io ``rchar``: files,
    pipes, FUSE mounts; not socket recv), 0 where the kernel does not say."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def assert_same_meta(actual: ObjectMeta, expected: ObjectMeta) -> None:
    assert actual.content_type == expected.content_type
    assert dict(actual.metadata) == dict(expected.metadata)
    assert dict(actual.headers) == dict(expected.headers)


class BackendConformance(KeyAndListingTests, MultipartTests):
    """Subclass and provide the ``backend`` fixture (a started Backend); see the module docstring."""

    pytestmark = pytest.mark.anyio

    # Fixtures ---------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self):
        return "asyncio"  # the gateway runs on asyncio (uvloop); backends may use asyncio directly

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError(
            "subclass BackendConformance and provide a `backend` fixture yielding a started backend"
        )

    @pytest.fixture
    def reopen(self):
        """Override to return ``async () -> Backend``: a new started instance on the same storage as ``backend``.

        None (the default) means the storage does not outlive an instance; the tests that need it are skipped.
        """
        return None

    @pytest.fixture
    async def bucket(self, backend) -> str:
        await backend.create_bucket("conformance")
        return "conformance"

    def require(self, backend: Backend, capability: str) -> None:
        if not getattr(backend.capabilities, capability):
            pytest.skip(f"backend declares {capability}=False")

    # Buckets ----------------------------------------------------------------

    async def test_bucket_life_cycle(self, backend):
        await backend.create_bucket("life-cycle")
        info = await backend.head_bucket("life-cycle")
        assert info.name == "life-cycle"
        assert abs(info.created - time.time()) < 3600, "bucket creation time is not a current epoch time"
        assert "life-cycle" in [b.name for b in await backend.list_buckets()]
        await backend.delete_bucket("life-cycle")
        with pytest.raises(errors.NoSuchBucket):
            await backend.head_bucket("life-cycle")
        assert "life-cycle" not in [b.name for b in await backend.list_buckets()]

    async def test_list_buckets_is_sorted(self, backend):
        for name in ("zeta", "alpha", "mid-1", "mid.2"):
            await backend.create_bucket(name)
        names = [b.name for b in await backend.list_buckets() if not b.name.startswith(".")]
        assert names == sorted(names)
        assert {"zeta", "alpha", "mid-1", "mid.2"} <= set(names)

    async def test_create_existing_bucket(self, backend, bucket):
        with pytest.raises(errors.BucketAlreadyOwnedByYou):
            await backend.create_bucket(bucket)

    async def test_delete_non_empty_bucket(self, backend, bucket):
        await put_bytes(backend, bucket, "deep/inside/object", b"x")
        with pytest.raises(errors.BucketNotEmpty):
            await backend.delete_bucket(bucket)
        assert await get_bytes(backend, bucket, "deep/inside/object") == b"x"
        await backend.delete(bucket, "deep/inside/object")
        await backend.delete_bucket(bucket)
        with pytest.raises(errors.NoSuchBucket):
            await backend.head_bucket(bucket)

    async def test_missing_bucket_everywhere(self, backend, bucket):
        await put_bytes(backend, bucket, "source", b"data")
        calls = {
            "head_bucket": lambda: backend.head_bucket("missing"),
            "delete_bucket": lambda: backend.delete_bucket("missing"),
            "get": lambda: backend.get("missing", "k"),
            "head": lambda: backend.head("missing", "k"),
            "put": lambda: backend.put("missing", "k", Payload.from_bytes(b"x"), ObjectMeta()),
            "delete": lambda: backend.delete("missing", "k"),
            "list": lambda: backend.list("missing"),
            "exists": lambda: backend.exists("missing", "k"),
            "copy from": lambda: backend.copy("missing", "k", bucket, "dst"),
            "copy to": lambda: backend.copy(bucket, "source", "missing", "dst"),
            "create_multipart": lambda: backend.create_multipart("missing", "k", ObjectMeta()),
            "list_uploads": lambda: backend.list_uploads("missing"),
        }
        for name, call in calls.items():
            try:
                await call()
            except errors.NoSuchBucket:
                continue
            except Exception as exc:
                pytest.fail(f"{name} on a missing bucket raised {exc!r}, not NoSuchBucket")
            pytest.fail(f"{name} on a missing bucket did not raise NoSuchBucket")

    # Objects ----------------------------------------------------------------

    async def test_put_get_head_delete(self, backend, bucket):
        data = b"face image bytes" * 1000
        before = time.time()
        info = await put_bytes(backend, bucket, "cam1/0001.jpg", data, META)
        assert (info.key, info.size, info.etag) == ("cam1/0001.jpg", len(data), md5_hex(data))
        assert before - 2 <= info.last_modified <= time.time() + 2, "last_modified is not the time of the write"
        head = await backend.head(bucket, "cam1/0001.jpg")
        assert (head.key, head.size, head.etag) == (info.key, info.size, info.etag)
        assert abs(head.last_modified - info.last_modified) < 2
        assert_same_meta(head.meta, META)
        reader = await backend.get(bucket, "cam1/0001.jpg")
        async with reader:
            assert (reader.start, reader.stop, reader.info.etag) == (0, len(data), info.etag)
            assert await reader.read_all() == data
        assert await backend.exists(bucket, "cam1/0001.jpg")
        await backend.delete(bucket, "cam1/0001.jpg")
        assert not await backend.exists(bucket, "cam1/0001.jpg")
        with pytest.raises(errors.NoSuchKey):
            await backend.head(bucket, "cam1/0001.jpg")
        with pytest.raises(errors.NoSuchKey):
            await backend.get(bucket, "cam1/0001.jpg")
        await backend.delete(bucket, "cam1/0001.jpg")  # deleting a missing key is not an error
        assert await list_all(backend, bucket) == ([], [])

    async def test_missing_key(self, backend, bucket):
        await put_bytes(backend, bucket, "a/b", b"x")
        for key in ("nothing", "a", "a/", "a/b/c", "A/b"):
            with pytest.raises(errors.NoSuchKey):
                await backend.head(bucket, key)
            with pytest.raises(errors.NoSuchKey):
                await backend.get(bucket, key)

    async def test_get_and_head_if_present(self, backend, bucket):
        """What a cluster node asks its own storage before its peers: None, not an error, when absent."""
        await put_bytes(backend, bucket, "a/b", b"0123456789")
        reader = await backend.get_if_present(bucket, "a/b")
        try:
            assert await reader.read_all() == b"0123456789"
        finally:
            reader.close()
        reader = await backend.get_if_present(bucket, "a/b", ByteRange(2, 4))
        try:
            assert await reader.read_all() == b"234"
        finally:
            reader.close()
        assert (await backend.head_if_present(bucket, "a/b")).size == 10
        for key in ("nothing", "a", "a/", "a/b/c", "A/b"):
            assert await backend.get_if_present(bucket, key) is None, key
            assert await backend.head_if_present(bucket, key) is None, key
        assert await backend.get_if_present("no-such-bucket-here", "a/b") is None
        assert await backend.head_if_present("no-such-bucket-here", "a/b") is None
        with pytest.raises(errors.InvalidRange):  # other errors are still raised
            await backend.get_if_present(bucket, "a/b", ByteRange(20, None))

    async def test_metadata_headers_and_checksums_survive(self, backend, bucket):
        data = b"\x00\x01binary\xff" * 500
        declared = {alg: checksum_b64(alg, data) for alg in ("CRC32", "CRC32C", "SHA256")}
        info = await put_bytes(backend, bucket, "meta", data, META, expected_checksums=dict(declared),
                               checksum_algorithms=("SHA1",))
        expected = {**declared, "SHA1": checksum_b64("SHA1", data)}
        assert dict(info.checksums) == expected
        for described in (await backend.head(bucket, "meta"), (await backend.get(bucket, "meta")).info):
            assert_same_meta(described.meta, META)
            assert dict(described.checksums) == expected
            assert described.etag == md5_hex(data)
        page = await backend.list(bucket)
        assert [(o.key, o.size, o.etag) for o in page.objects] == [("meta", len(data), md5_hex(data))]

    async def test_listing_describes_objects_as_head_does(self, backend, bucket):
        """ListObjects gives each object's size, ETag and LastModified; clients use them (aws s3 sync
        copies what is newer or of another size by the listing alone), so they must be what HEAD says."""
        await put_bytes(backend, bucket, "one", b"1" * 10, META)
        await put_bytes(backend, bucket, "dir/two", b"2" * 2000)
        upload = await backend.create_multipart(bucket, "dir/three", ObjectMeta())
        part = await backend.upload_part(bucket, "dir/three", upload.upload_id, 1, Payload.from_bytes(b"3" * 30))
        await backend.complete_multipart(bucket, "dir/three", upload.upload_id, [(1, part.etag)])
        for prefix, delimiter in (("", ""), ("dir/", "/")):
            listed = (await backend.list(bucket, prefix, delimiter)).objects
            assert listed, f"prefix={prefix!r} listed nothing"
            for entry in listed:
                head = await backend.head(bucket, entry.key)
                assert (entry.key, entry.size, entry.etag) == (head.key, head.size, head.etag)
                assert abs(entry.last_modified - head.last_modified) < 2, (
                    f"{entry.key!r} is listed with last_modified {entry.last_modified}, head says "
                    f"{head.last_modified} (seconds since the epoch)")

    async def test_last_modified_is_the_time_of_the_write(self, backend, bucket):
        """last_modified is stored with the object, not taken at each look: two HEADs of an unchanged
        object give the same value (clients compare it, If-Modified-Since and sync tools rely on it)."""
        info = await put_bytes(backend, bucket, "dated", b"x", META)
        first = await backend.head(bucket, "dated")
        await put_bytes(backend, bucket, "other", b"y")
        second = await backend.head(bucket, "dated")
        reader = await backend.get(bucket, "dated")
        reader.close()
        assert first.last_modified == second.last_modified == reader.info.last_modified, (
            "head() and get() gave different last_modified values for an object nobody changed")
        assert abs(first.last_modified - info.last_modified) < 2

    async def test_prefix_is_literal_text(self, backend, bucket):
        """A listing prefix is plain text: no SQL LIKE wildcards (% and _), globs (* ? [) or regular
        expressions (.), which stores with a query language apply unless the backend escapes them."""
        keys = ["50%", "50%off", "500", "5000", "a_b", "a-b", "a.b", "axb", "a*", "a*z", "a?", "a[1]", "a1", "a\\b",
                "ab"]
        for key in keys:
            await put_bytes(backend, bucket, key, b"")
        for prefix in ("50%", "5_", "a_", "a.", "a*", "a?", "a[", "a\\", "a%", "%", "_"):
            expected = sorted((k for k in keys if k.startswith(prefix)), key=str.encode)
            assert (await list_all(backend, bucket, prefix=prefix))[0] == expected, f"prefix={prefix!r}"
            assert (await list_all(backend, bucket, prefix=prefix, delimiter="/"))[0] == expected, f"prefix={prefix!r}"

    async def test_keys_that_differ_only_in_unicode_normalization(self, backend, bucket):
        """S3 keys are byte strings: "é" as one code point (NFC, what most keyboards send) and as "e" plus
        a combining accent (NFD, what macOS file names give) are two keys, like U+00C5 "Å" and U+212B
        "Å" (the Angstrom sign). A store that normalizes names (APFS, HFS+, some NAS) must not merge them."""
        keys = ["caf\u00e9", "cafe\u0301", "dir-\u00e9/x", "dir-e\u0301/x", "\u00c5", "\u212b", "A\u030a"]
        for number, key in enumerate(keys):
            info = await put_bytes(backend, bucket, key, str(number).encode())
            assert info.key == key
        for number, key in enumerate(keys):
            assert await get_bytes(backend, bucket, key) == str(number).encode(), f"key {key!r} was overwritten"
            assert (await backend.head(bucket, key)).key == key, f"key {key!r} came back as another key"
        assert (await list_all(backend, bucket))[0] == sorted(keys, key=str.encode)
        await backend.delete(bucket, keys[0])
        assert await get_bytes(backend, bucket, keys[1]) == b"1", "deleting the NFC key deleted the NFD one"

    async def test_empty_and_punctuated_metadata_values_are_kept(self, backend, bucket):
        """``x-amz-meta-flag:`` with an empty value is metadata too (clients use it as a marker): it must
        come back, not vanish as stores that treat "" as "not set" make it. Values hold any printable
        text, separators included: a store that packs metadata into one "k=v;k2=v2" string loses them."""
        metadata = {"flag": "", "other": "v", "punctuated": 'a=b; c, d "quoted" \\ e:f & g=h|i'}
        await put_bytes(backend, bucket, "marked", b"x", ObjectMeta("text/plain", metadata, {}))
        assert dict((await backend.head(bucket, "marked")).metadata) == metadata
        await backend.copy(bucket, "marked", bucket, "copied")
        assert dict((await backend.head(bucket, "copied")).metadata) == metadata

    async def test_default_meta(self, backend, bucket):
        await put_bytes(backend, bucket, "plain", b"x")
        head = await backend.head(bucket, "plain")
        assert head.content_type == DEFAULT_CONTENT_TYPE
        assert dict(head.metadata) == {} and dict(head.meta.headers) == {} and dict(head.checksums) == {}

    @pytest.mark.parametrize("size", [0, 1, 64 * 1024, MiB - 1, MiB, MiB + 1, 3 * MiB + 17])
    async def test_etag_is_md5_of_the_bytes(self, backend, bucket, size):
        data = b"".join(pseudo_random_chunks(size, MiB, seed=size))
        info = await put_bytes(backend, bucket, f"size-{size}", data)
        assert info.etag == hashlib.md5(data).hexdigest() and info.size == size
        assert (await backend.head(bucket, f"size-{size}")).etag == info.etag
        assert await get_bytes(backend, bucket, f"size-{size}") == data

    async def test_overwrite_replaces_data_and_meta(self, backend, bucket):
        await put_bytes(backend, bucket, "k", b"first version, longer" * 100, META)
        second = ObjectMeta("text/plain", {"only": "this"}, {})
        info = await put_bytes(backend, bucket, "k", b"second", second)
        assert await get_bytes(backend, bucket, "k") == b"second"
        head = await backend.head(bucket, "k")
        assert (head.size, head.etag) == (6, info.etag)
        assert_same_meta(head.meta, second)  # replaced, not merged
        assert (await list_all(backend, bucket))[0] == ["k"]

    async def test_bad_body_stores_nothing(self, backend, bucket):
        data = b"y" * (2 * MiB)
        wrong_md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # the MD5 of b""
        with pytest.raises(errors.BadDigest):
            await put_bytes(backend, bucket, "new", data, content_md5=wrong_md5)
        with pytest.raises(errors.BadDigest):
            await put_bytes(backend, bucket, "new", data, expected_checksums={"CRC32": checksum_b64("CRC32", b"x")})
        with pytest.raises(errors.IncompleteBody):
            await backend.put(bucket, "new", Payload(chunked(data), expected_size=len(data) + 1), ObjectMeta())
        with pytest.raises(errors.IncompleteBody):
            await backend.put(bucket, "new", Payload(chunked(data), expected_size=len(data) - 1), ObjectMeta())
        with pytest.raises(StreamBroke):
            await backend.put(bucket, "new", Payload(breaking_stream(data, MiB + 1)), ObjectMeta())
        assert not await backend.exists(bucket, "new")
        assert await list_all(backend, bucket) == ([], [])

    @pytest.mark.parametrize("old_size", [10, 2 * MiB])
    @pytest.mark.parametrize("failure", ["bad md5", "broken stream"])
    async def test_failed_overwrite_keeps_old_version(self, backend, bucket, failure, old_size):
        old = b"o" * old_size
        old_info = await put_bytes(backend, bucket, "keep", old, META)
        new = b"n" * (3 * MiB)
        if failure == "bad md5":
            payload = Payload(chunked(new), expected_size=len(new), content_md5="1B2M2Y8AsgTpgAmY7PhCfg==")
        else:
            payload = Payload(breaking_stream(new, 2 * MiB))
        with pytest.raises((errors.BadDigest, StreamBroke)):
            await backend.put(bucket, "keep", payload, ObjectMeta("text/plain"))
        head = await backend.head(bucket, "keep")
        assert (head.size, head.etag) == (old_info.size, old_info.etag)
        assert_same_meta(head.meta, META)
        assert await get_bytes(backend, bucket, "keep") == old

    async def test_concurrent_writes_of_one_key(self, backend, bucket):
        """Clients writing one key at once (an SDK retry racing its first try, two cameras): each PUT
        succeeds or is refused with a 503, and the key then holds one of the bodies, whole, with its own
        size and ETag. A temporary name derived from the key alone is the usual way to fail this (the
        writers share one file: mixed bytes, or the last rename finds nothing to rename)."""
        size = 2 * MiB + 3
        bodies = [bytes([65 + n]) * size for n in range(3)]

        async def interleaved(data: bytes):
            for start in range(0, len(data), 256 * 1024):
                yield data[start:start + 256 * 1024]
                await anyio.sleep(0)  # let the other writers go on: their chunks land in between

        refused: list[int] = []
        failed: list[str] = []

        async def write(n: int) -> None:
            payload = Payload(interleaved(bodies[n]), expected_size=size)
            try:
                info = await backend.put(bucket, "contended", payload, ObjectMeta(metadata={"writer": str(n)}))
            except (errors.ServiceUnavailable, errors.SlowDown):
                refused.append(n)
                return
            except Exception as exc:  # reported below, with what the other writers did
                failed.append(f"writer {n}: {exc!r}")
                return
            if (info.size, info.etag) != (size, md5_hex(bodies[n])):
                failed.append(f"writer {n} was told it stored {info.size} bytes with ETag {info.etag}")

        async with anyio.create_task_group() as tasks:
            for n in range(len(bodies)):
                tasks.start_soon(write, n)
        assert not failed, f"{len(bodies)} concurrent PUTs of one key: {'; '.join(failed)}"
        assert len(refused) < len(bodies), "every concurrent writer was refused"
        data = await get_bytes(backend, bucket, "contended")
        assert data in bodies, "the key holds a mix of the concurrent writes"
        winner = bodies.index(data)
        head = await backend.head(bucket, "contended")
        assert (head.size, head.etag, dict(head.metadata)) == (size, md5_hex(data), {"writer": str(winner)})
        assert (await list_all(backend, bucket))[0] == ["contended"]

    async def test_bucket_deleted_during_a_put(self, backend, bucket):
        """DeleteBucket while a PUT into the (still empty) bucket streams its body: either the delete is
        refused (BucketNotEmpty, 409) and the PUT stores its object, or the delete wins and the PUT ends
        with NoSuchBucket (404), leaving no bucket behind. Any other exception is a 500 for the client."""
        halfway = anyio.Event()
        go_on = anyio.Event()
        outcome: list[object] = []

        async def slow_body():
            yield b"a" * MiB
            halfway.set()
            await go_on.wait()
            yield b"b" * MiB

        async def write() -> None:
            try:
                outcome.append(await backend.put(bucket, "racing", Payload(slow_body()), ObjectMeta()))
            except Exception as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write)
            with anyio.fail_after(30):
                await halfway.wait()
            try:
                await backend.delete_bucket(bucket)
                deleted = True
            except errors.BucketNotEmpty:
                deleted = False
            go_on.set()
        [result] = outcome
        if deleted:
            assert isinstance(result, errors.NoSuchBucket), (
                f"a PUT into a bucket deleted meanwhile ended with {result!r}, not NoSuchBucket")
            with pytest.raises(errors.NoSuchBucket):
                await backend.head_bucket(bucket)
        else:
            assert not isinstance(result, Exception), f"the PUT failed with {result!r}"
            assert await get_bytes(backend, bucket, "racing") == b"a" * MiB + b"b" * MiB

    async def test_readers_see_old_version_until_put_completes(self, backend, bucket):
        self.require(backend, "atomic_put")
        await put_bytes(backend, bucket, "atomic", b"old")
        halfway = anyio.Event()
        go_on = anyio.Event()

        async def slow_body():
            yield b"new" * MiB  # 3 MiB, past any small-object buffer
            halfway.set()
            await go_on.wait()
            yield b"end"

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(backend.put, bucket, "atomic", Payload(slow_body()), ObjectMeta())
            with anyio.fail_after(30):
                await halfway.wait()
            await anyio.sleep(0.01)  # let the backend write what it has
            assert await get_bytes(backend, bucket, "atomic") == b"old", "a reader saw a partial object"
            assert (await backend.head(bucket, "atomic")).size == 3
            go_on.set()
        assert await get_bytes(backend, bucket, "atomic") == b"new" * MiB + b"end"

    async def test_delete_and_overwrite_while_a_reader_streams(self, backend, bucket):
        """A GET streaming an object goes on with the version it opened. Meanwhile the store may refuse
        to replace or delete the open file (SMB keeps Windows' rules) with a 503, but once a DELETE has
        succeeded the key is gone for every other request: HEAD, GET, DELETE and listings all at once."""
        old = b"".join(pseudo_random_chunks(3 * MiB, MiB, seed=30))  # past any read-it-whole limit
        await put_bytes(backend, bucket, "streamed", old)
        await put_bytes(backend, bucket, "neighbour", b"n")
        for change in ("overwrite", "delete"):
            await put_bytes(backend, bucket, "streamed", old)
            reader = await backend.get(bucket, "streamed")
            async with reader:
                chunks = reader.chunks()
                read = [await chunks.__anext__()]
                refused = False
                try:
                    with anyio.fail_after(60):
                        if change == "overwrite":
                            await put_bytes(backend, bucket, "streamed", b"new")
                        else:
                            await backend.delete(bucket, "streamed")
                except (errors.ServiceUnavailable, errors.SlowDown):
                    refused = True  # the open file cannot be replaced or deleted (yet)
                if change == "delete" and not refused:
                    with pytest.raises(errors.NoSuchKey):
                        await backend.head(bucket, "streamed")
                    with pytest.raises(errors.NoSuchKey):
                        await backend.get(bucket, "streamed")
                    assert await backend.get_if_present(bucket, "streamed") is None
                    await backend.delete(bucket, "streamed")  # deleting a missing key is not an error
                    assert await list_all(backend, bucket) == (["neighbour"], [])
                async for chunk in chunks:
                    read.append(chunk)
            assert b"".join(read) == old, f"a reader saw another version after an {change}"
            expected = None if change == "delete" else b"new"
            if refused:
                expected = old
            if expected is None:
                assert not await backend.exists(bucket, "streamed")
            else:
                assert await get_bytes(backend, bucket, "streamed") == expected, change

    # Byte ranges --------------------------------------------------------------

    @pytest.mark.parametrize("size", [1000, 3 * MiB + 5])
    async def test_byte_ranges(self, backend, bucket, size):
        data = b"".join(pseudo_random_chunks(size, MiB, seed=7))
        await put_bytes(backend, bucket, "ranged", data)
        cases = {
            (0, 0): (0, 1), (10, 19): (10, 20), (size - 1, size - 1): (size - 1, size),
            (5, size + 100): (5, size), (size - 10, None): (size - 10, size), (0, None): (0, size),
            (None, 10): (size - 10, size), (None, size + 100): (0, size), (None, 1): (size - 1, size),
        }
        if size > MiB:  # spans crossing a backend's read-chunk boundaries
            cases[(MiB - 3, 2 * MiB + 3)] = (MiB - 3, 2 * MiB + 4)
        for (first, last), (start, stop) in cases.items():
            reader = await backend.get(bucket, "ranged", ByteRange(first, last))
            async with reader:
                assert (reader.start, reader.stop) == (start, stop), f"range {first}-{last}"
                assert reader.info.size == size
                assert await reader.read_all() == data[start:stop], f"range {first}-{last}"
        for first, last in ((size, None), (size, size + 5), (size + 1000, None), (None, 0)):
            with pytest.raises(errors.InvalidRange):
                await backend.get(bucket, "ranged", ByteRange(first, last))

    async def test_zero_size_object(self, backend, bucket):
        info = await put_bytes(backend, bucket, "empty", b"", ObjectMeta("text/plain"))
        assert (info.size, info.etag) == (0, md5_hex(b""))
        assert await get_bytes(backend, bucket, "empty") == b""
        assert (await backend.head(bucket, "empty")).content_type == "text/plain"
        for first, last in ((0, None), (0, 0), (None, 5)):
            with pytest.raises(errors.InvalidRange):
                await backend.get(bucket, "empty", ByteRange(first, last))
        assert (await list_all(backend, bucket))[0] == ["empty"]

    # Copy -------------------------------------------------------------------

    async def test_copy_keeps_meta(self, backend, bucket):
        data = b"copied" * 1000
        await put_bytes(backend, bucket, "src", data, META, checksum_algorithms=("CRC32",))
        info = await backend.copy(bucket, "src", bucket, "dir/dst")
        assert (info.size, info.etag) == (len(data), md5_hex(data))
        head = await backend.head(bucket, "dir/dst")
        assert_same_meta(head.meta, META)
        assert head.checksums.get("CRC32") == checksum_b64("CRC32", data)
        assert await get_bytes(backend, bucket, "dir/dst") == data
        assert await get_bytes(backend, bucket, "src") == data
        await backend.create_bucket("copy-target")  # a server-side copy into another bucket keeps them too
        await backend.copy(bucket, "src", "copy-target", "dst")
        head = await backend.head("copy-target", "dst")
        assert_same_meta(head.meta, META)
        assert head.checksums.get("CRC32") == checksum_b64("CRC32", data)
        assert await get_bytes(backend, "copy-target", "dst") == data

    async def test_buckets_are_separate_namespaces(self, backend, bucket):
        """One key in two buckets is two objects: a store keyed by the key alone passed every other test
        whenever its multipart uploads did not go through objects."""
        await backend.create_bucket("neighbour")
        await put_bytes(backend, bucket, "same/key", b"mine", META)
        await put_bytes(backend, "neighbour", "same/key", b"theirs")
        await put_bytes(backend, "neighbour", "only-there", b"x")
        assert await get_bytes(backend, bucket, "same/key") == b"mine"
        assert_same_meta((await backend.head(bucket, "same/key")).meta, META)
        assert await get_bytes(backend, "neighbour", "same/key") == b"theirs"
        assert await list_all(backend, bucket) == (["same/key"], [])
        assert await list_all(backend, "neighbour") == (["only-there", "same/key"], [])
        with pytest.raises(errors.NoSuchKey):
            await backend.head(bucket, "only-there")
        await backend.delete(bucket, "same/key")
        assert await get_bytes(backend, "neighbour", "same/key") == b"theirs"
        await backend.delete_bucket(bucket)
        assert await list_all(backend, "neighbour") == (["only-there", "same/key"], [])

    async def test_copy_with_new_meta_and_across_buckets(self, backend, bucket):
        await backend.create_bucket("other")
        await put_bytes(backend, bucket, "src", b"bytes", META)
        new_meta = ObjectMeta("text/csv", {"replaced": "yes"}, {"cache-control": "no-cache"})
        await backend.copy(bucket, "src", "other", "dst", new_meta)
        assert_same_meta((await backend.head("other", "dst")).meta, new_meta)
        assert await get_bytes(backend, "other", "dst") == b"bytes"
        # Onto itself with new metadata: the way S3 clients change an object's metadata.
        await backend.copy(bucket, "src", bucket, "src", new_meta)
        assert_same_meta((await backend.head(bucket, "src")).meta, new_meta)
        assert await get_bytes(backend, bucket, "src") == b"bytes"

    async def test_copy_missing_source(self, backend, bucket):
        with pytest.raises(errors.NoSuchKey):
            await backend.copy(bucket, "nothing", bucket, "dst")
        assert not await backend.exists(bucket, "dst")

    # Large objects ------------------------------------------------------------

    async def test_large_object_streams_in_bounded_memory(self, backend, bucket):
        md5 = hashlib.md5()

        async def body():
            for chunk in pseudo_random_chunks(LARGE_SIZE, 256 * 1024, seed=20):
                md5.update(chunk)
                yield chunk

        info = await backend.put(bucket, "large", Payload(body(), expected_size=LARGE_SIZE), ObjectMeta())
        assert (info.size, info.etag) == (LARGE_SIZE, md5.hexdigest())
        read_md5, size = hashlib.md5(), 0
        tracemalloc.start()
        try:
            reader = await backend.get(bucket, "large")
            async with reader:
                async for chunk in reader.chunks():
                    read_md5.update(chunk)
                    size += len(chunk)
                    del chunk
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (size, read_md5.hexdigest()) == (LARGE_SIZE, info.etag)
        assert peak < READ_MEMORY_BOUND, f"reading a {LARGE_SIZE} byte object held {peak} bytes at once"
        tail = b"".join(pseudo_random_chunks(LARGE_SIZE, 256 * 1024, seed=20))[-1000:]
        assert await get_bytes(backend, bucket, "large", ByteRange(None, 1000)) == tail

    async def test_large_put_streams_in_bounded_memory(self, backend, bucket, reopen):
        """A PUT body goes to the store as it arrives: a backend that gathers it first (b"".join of the
        payload, a BytesIO, one request body) holds the whole object, gigabytes in production. Checked
        for backends whose storage outlives an instance (a ``reopen`` fixture); one that keeps objects in
        its own memory holds them by design."""
        if reopen is None:
            pytest.skip("the backend's storage does not outlive an instance (no `reopen` fixture): it may keep "
                        "objects in memory")
        tracemalloc.start()
        try:
            body = Payload(as_async(pseudo_random_chunks(LARGE_SIZE, 256 * 1024, seed=22)), expected_size=LARGE_SIZE)
            info = await backend.put(bucket, "large-put", body, ObjectMeta())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert info.size == LARGE_SIZE
        assert peak < WRITE_MEMORY_BOUND, f"writing a {LARGE_SIZE} byte object held {peak} bytes at once"

    async def test_range_read_skips_the_prefix(self, backend, bucket):
        self.require(backend, "range_reads")
        size = LARGE_SIZE // 2
        body = Payload(as_async(pseudo_random_chunks(size, MiB, seed=21)), expected_size=size)
        await backend.put(bucket, "ranged-large", body, ObjectMeta())
        read_before = bytes_read_by_this_process()
        tracemalloc.start()
        try:
            data = await get_bytes(backend, bucket, "ranged-large", ByteRange(size - MiB - 10, size - MiB + 9))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        read = bytes_read_by_this_process() - read_before
        expected = b"".join(pseudo_random_chunks(size, MiB, seed=21))[size - MiB - 10: size - MiB + 10]
        assert data == expected
        assert peak < 4 * MiB, f"a 20-byte range of a {size} byte object held {peak} bytes at once"
        # Reading the prefix chunk by chunk and dropping it holds little at once, but reads it all: what
        # this process read from files (read/pread; a remote store's sockets are not counted) tells.
        assert read < size // 2, (f"a 20-byte range {size - MiB - 10} bytes into a {size} byte object read "
                                  f"{read} bytes from files: the backend reads the prefix (it claims range_reads)")

    # Several instances on the same storage (backends that persist) -------------

    async def test_metadata_survives_restart(self, backend, bucket, reopen):
        if reopen is None:
            pytest.skip("the backend's storage does not outlive an instance (no `reopen` fixture)")
        data = b"persistent" * 100
        info = await put_bytes(backend, bucket, "dir/persisted", data, META, checksum_algorithms=("CRC32C",))
        await backend.close()
        again = await reopen()
        try:
            head = await again.head(bucket, "dir/persisted")
            assert (head.key, head.size, head.etag) == (info.key, info.size, info.etag)
            # As in test_last_modified_is_the_time_of_the_write: stores that speak HTTP give whole seconds,
            # and a put's own time may be read after the answer came back.
            assert abs(head.last_modified - info.last_modified) < 2
            assert_same_meta(head.meta, META)
            assert dict(head.checksums) == dict(info.checksums)
            assert await get_bytes(again, bucket, "dir/persisted") == data
            assert bucket in [b.name for b in await again.list_buckets()]
        finally:
            await again.close()

    async def test_second_instance_sees_every_change(self, backend, bucket, reopen):
        if reopen is None:
            pytest.skip("the backend's storage does not outlive an instance (no `reopen` fixture)")
        second = await reopen()
        try:
            await put_bytes(backend, bucket, "from-first/a", b"1", META)
            assert await get_bytes(second, bucket, "from-first/a") == b"1"
            assert_same_meta((await second.head(bucket, "from-first/a")).meta, META)
            await put_bytes(second, bucket, "from-second", b"2")
            await put_bytes(second, bucket, "from-first/a", b"overwritten")
            assert await get_bytes(backend, bucket, "from-first/a") == b"overwritten"
            assert (await list_all(backend, bucket))[0] == ["from-first/a", "from-second"]
            await second.delete(bucket, "from-first/a")
            assert not await backend.exists(bucket, "from-first/a")
            upload = await backend.create_multipart(bucket, "mp", META)
            part = await second.upload_part(bucket, "mp", upload.upload_id, 1, Payload.from_bytes(b"part"))
            info = await backend.complete_multipart(bucket, "mp", upload.upload_id, [(1, part.etag)])
            assert await get_bytes(second, bucket, "mp") == b"part" and info.etag.endswith("-1")
        finally:
            await second.close()


class OptionsBackendConformance(BackendConformance):
    """The suite for a backend built from an options dict whose storage outlives an instance.

    Set ``backend_class`` and provide an ``options`` fixture; ``backend`` and
    ``reopen`` (a second instance on the same storage) come from here.
    """

    backend_class: type[Backend]
    backend_name = "under-test"

    async def started(self, options: dict) -> Backend:
        backend = self.backend_class(name=self.backend_name, **options)
        await backend.start()
        return backend

    @pytest.fixture
    async def backend(self, options):
        backend = await self.started(options)
        yield backend
        await backend.close()

    @pytest.fixture
    def reopen(self, options):
        return lambda: self.started(options)
