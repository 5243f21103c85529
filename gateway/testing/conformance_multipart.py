"""Conformance tests for multipart uploads (part of BackendConformance)."""

from __future__ import annotations

import hashlib

import pytest

from gateway import errors
from gateway.backend import Backend, ObjectMeta
from gateway.payload import Payload

from .backend_io import get_bytes, list_all, md5_hex, put_bytes

# Backends that assemble parts in the base class accept any minimum, so the
# tests use a small one; a native multipart API keeps its own.
SMALL_PART_SIZE = 64 * 1024


def part_size(backend: Backend) -> int:
    if not backend.capabilities.native_multipart:
        backend.min_part_size = SMALL_PART_SIZE
    return backend.min_part_size


def multipart_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


async def upload(backend: Backend, bucket: str, key: str, upload_id: str, number: int, data: bytes):
    return await backend.upload_part(bucket, key, upload_id, number, Payload.from_bytes(data))


class MultipartTests:
    """Uploads built by the base class (or a backend's native API); mixed into BackendConformance."""

    async def test_multipart_round_trip(self, backend, bucket):
        size = part_size(backend)
        parts = [b"1" * size, b"2" * (size + 1), b"3" * 10]
        meta = ObjectMeta("video/mp4", {"camera": "cam-2"}, {"cache-control": "no-store"})
        created = await backend.create_multipart(bucket, "videos/clip.mp4", meta)
        assert (created.bucket, created.key) == (bucket, "videos/clip.mp4") and created.upload_id
        infos = [await upload(backend, bucket, "videos/clip.mp4", created.upload_id, n, data)
                 for n, data in enumerate(parts, start=1)]
        assert [(p.part_number, p.size, p.etag) for p in infos] == [
            (n, len(data), md5_hex(data)) for n, data in enumerate(parts, start=1)
        ]
        listed = await backend.list_parts(bucket, "videos/clip.mp4", created.upload_id)
        assert [(p.part_number, p.size, p.etag) for p in listed] == [(p.part_number, p.size, p.etag) for p in infos]
        uploads = await backend.list_uploads(bucket)
        assert [(u.key, u.upload_id) for u in uploads] == [("videos/clip.mp4", created.upload_id)]
        assert await list_all(backend, bucket) == ([], []), "parts must not show as objects"
        info = await backend.complete_multipart(
            bucket, "videos/clip.mp4", created.upload_id, [(p.part_number, f'"{p.etag}"') for p in infos]
        )
        assert (info.size, info.etag) == (sum(map(len, parts)), multipart_etag(parts))
        head = await backend.head(bucket, "videos/clip.mp4")
        assert (head.etag, head.content_type, dict(head.metadata)) == (info.etag, "video/mp4", {"camera": "cam-2"})
        assert dict(head.meta.headers) == {"cache-control": "no-store"}
        assert await get_bytes(backend, bucket, "videos/clip.mp4") == b"".join(parts)
        assert await backend.list_uploads(bucket) == []
        with pytest.raises(errors.NoSuchUpload):
            await backend.list_parts(bucket, "videos/clip.mp4", created.upload_id)
        assert await list_all(backend, bucket) == (["videos/clip.mp4"], [])
        await backend.delete(bucket, "videos/clip.mp4")
        await backend.delete_bucket(bucket)  # no upload left holding the bucket

    async def test_multipart_part_subset_and_reupload(self, backend, bucket):
        size = part_size(backend)
        await put_bytes(backend, bucket, "k", b"old object")
        created = await backend.create_multipart(bucket, "k", ObjectMeta())
        first = await upload(backend, bucket, "k", created.upload_id, 1, b"a" * size)
        await upload(backend, bucket, "k", created.upload_id, 2, b"unused" * size)
        third = await upload(backend, bucket, "k", created.upload_id, 3, b"first try")
        third = await upload(backend, bucket, "k", created.upload_id, 3, b"second try")  # replaces part 3
        listed = await backend.list_parts(bucket, "k", created.upload_id)
        assert [(p.part_number, p.etag) for p in listed][2] == (3, md5_hex(b"second try"))
        info = await backend.complete_multipart(bucket, "k", created.upload_id, [(1, first.etag), (3, third.etag)])
        assert info.etag == multipart_etag([b"a" * size, b"second try"])
        assert await get_bytes(backend, bucket, "k") == b"a" * size + b"second try"

    async def test_multipart_abort(self, backend, bucket):
        created = await backend.create_multipart(bucket, "aborted", ObjectMeta())
        part = await upload(backend, bucket, "aborted", created.upload_id, 1, b"data")
        await backend.abort_multipart(bucket, "aborted", created.upload_id)
        assert not await backend.exists(bucket, "aborted")
        assert await backend.list_uploads(bucket) == []
        calls = [
            lambda: backend.upload_part(bucket, "aborted", created.upload_id, 2, Payload.from_bytes(b"x")),
            lambda: backend.list_parts(bucket, "aborted", created.upload_id),
            lambda: backend.complete_multipart(bucket, "aborted", created.upload_id, [(1, part.etag)]),
            lambda: backend.abort_multipart(bucket, "aborted", created.upload_id),
        ]
        for call in calls:
            with pytest.raises(errors.NoSuchUpload):
                await call()
        await backend.delete_bucket(bucket)

    async def test_multipart_uploads_go_with_their_bucket(self, backend, bucket):
        """DeleteBucket then discard_uploads (what the S3 API does): a bucket made again under the
        name has none of the old bucket's uploads."""
        created = await backend.create_multipart(bucket, "unfinished", ObjectMeta())
        await upload(backend, bucket, "unfinished", created.upload_id, 1, b"old bucket bytes")
        await backend.delete_bucket(bucket)
        await backend.discard_uploads(bucket)
        await backend.create_bucket(bucket)
        assert await backend.list_uploads(bucket) == []
        with pytest.raises(errors.NoSuchUpload):
            await backend.list_parts(bucket, "unfinished", created.upload_id)
        await backend.discard_uploads("never-made")  # nothing to discard is no error

    async def test_multipart_unknown_upload(self, backend, bucket):
        created = await backend.create_multipart(bucket, "mine", ObjectMeta())
        for key, upload_id in (("mine", "0" * 32), ("other-key", created.upload_id), ("mine", "../../x"),
                               ("mine", "")):
            with pytest.raises(errors.NoSuchUpload):
                await backend.upload_part(bucket, key, upload_id, 1, Payload.from_bytes(b"x"))
            with pytest.raises(errors.NoSuchUpload):
                await backend.list_parts(bucket, key, upload_id)
            with pytest.raises(errors.NoSuchUpload):
                await backend.complete_multipart(bucket, key, upload_id, [(1, md5_hex(b"x"))])

    async def test_multipart_invalid_completions(self, backend, bucket):
        size = part_size(backend)
        created = await backend.create_multipart(bucket, "k", ObjectMeta())
        one = await upload(backend, bucket, "k", created.upload_id, 1, b"1" * size)
        two = await upload(backend, bucket, "k", created.upload_id, 2, b"2" * size)
        small = await upload(backend, bucket, "k", created.upload_id, 3, b"too small")
        four = await upload(backend, bucket, "k", created.upload_id, 4, b"4")
        uid = created.upload_id
        with pytest.raises(errors.InvalidPart):
            await backend.complete_multipart(bucket, "k", uid, [(1, one.etag), (2, md5_hex(b"other bytes"))])
        with pytest.raises(errors.InvalidPart):
            await backend.complete_multipart(bucket, "k", uid, [(1, one.etag), (9, two.etag)])
        with pytest.raises(errors.InvalidPartOrder):
            await backend.complete_multipart(bucket, "k", uid, [(2, two.etag), (1, one.etag)])
        with pytest.raises(errors.InvalidPartOrder):
            await backend.complete_multipart(bucket, "k", uid, [(1, one.etag), (1, one.etag)])
        with pytest.raises(errors.EntityTooSmall):
            await backend.complete_multipart(bucket, "k", uid, [(1, one.etag), (3, small.etag), (4, four.etag)])
        assert not await backend.exists(bucket, "k")
        # Failed completions leave the upload usable.
        info = await backend.complete_multipart(bucket, "k", uid, [(1, one.etag), (2, two.etag), (3, small.etag)])
        assert info.etag == multipart_etag([b"1" * size, b"2" * size, b"too small"])
        assert await get_bytes(backend, bucket, "k") == b"1" * size + b"2" * size + b"too small"

    async def test_multipart_tricky_key(self, backend, bucket):
        key = "dir//ünï code/../%25+x/"
        created = await backend.create_multipart(bucket, key, ObjectMeta())
        part = await upload(backend, bucket, key, created.upload_id, 1, b"only part")
        assert [u.key for u in await backend.list_uploads(bucket)] == [key]
        await backend.complete_multipart(bucket, key, created.upload_id, [(1, part.etag)])
        assert await get_bytes(backend, bucket, key) == b"only part"

    async def test_multipart_uploads_are_per_bucket(self, backend, bucket):
        await backend.create_bucket("other")
        mine = await backend.create_multipart(bucket, "k", ObjectMeta())
        await backend.create_multipart("other", "k2", ObjectMeta())
        assert [u.upload_id for u in await backend.list_uploads(bucket)] == [mine.upload_id]
        assert [u.key for u in await backend.list_uploads("other", prefix="k")] == ["k2"]
        assert await backend.list_uploads("other", prefix="nothing") == []
        with pytest.raises(errors.NoSuchUpload):
            await backend.list_parts("other", "k", mine.upload_id)
