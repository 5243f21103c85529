"""An in-memory backend: for tests and as the smallest complete example.

Each instance has its own store (nothing shared class-wide), so tests can
run several gateways in one process.
"""

from __future__ import annotations

import time

from gateway import errors
from gateway.backend import (Backend, BucketInfo, ByteRange, Capabilities, ListPage, ObjectInfo, ObjectMeta,
                             ObjectReader, paginate)
from gateway.hookspecs import hookimpl
from gateway.payload import Payload


class MemoryBackend(Backend):
    capabilities = Capabilities(listing_metadata=True)  # listed objects are the stored ObjectInfos
    eager_reads = True  # reads never wait

    def __init__(self, name: str = "memory", **options):
        super().__init__(name, **options)
        self._buckets: dict[str, tuple[float, dict[str, tuple[ObjectInfo, bytes]]]] = {}

    def _bucket(self, bucket: str) -> dict[str, tuple[ObjectInfo, bytes]]:
        try:
            return self._buckets[bucket][1]
        except KeyError:
            raise errors.NoSuchBucket(BucketName=bucket) from None

    async def create_bucket(self, bucket: str) -> None:
        if bucket in self._buckets:
            raise errors.BucketAlreadyOwnedByYou(BucketName=bucket)
        self._buckets[bucket] = (time.time(), {})

    async def delete_bucket(self, bucket: str) -> None:
        if self._bucket(bucket):
            raise errors.BucketNotEmpty(BucketName=bucket)
        del self._buckets[bucket]

    async def head_bucket(self, bucket: str) -> BucketInfo:
        self._bucket(bucket)
        return BucketInfo(bucket, self._buckets[bucket][0])

    async def list_buckets(self) -> list[BucketInfo]:
        return [BucketInfo(name, created) for name, (created, _) in sorted(self._buckets.items())]

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        info, data = self._object(bucket, key)
        start, stop = byte_range.resolve(info.size) if byte_range else (0, info.size)
        return ObjectReader(info, start, stop, data=data[start:stop])

    def _object(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        try:
            return self._bucket(bucket)[key]
        except KeyError:
            raise errors.NoSuchKey(Key=key) from None

    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        self._bucket(bucket)
        data = b"".join([chunk async for chunk in payload])
        info = ObjectInfo(key, len(data), payload.etag, time.time(), meta, payload.checksums)
        self._bucket(bucket)[key] = (info, data)  # the bucket may have gone meanwhile
        return info

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return self._object(bucket, key)[0]

    async def delete(self, bucket: str, key: str) -> None:
        self._bucket(bucket).pop(key, None)

    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000) -> ListPage:
        store = self._bucket(bucket)
        ordered = sorted(store, key=str.encode)
        return paginate((store[k][0] for k in ordered), prefix, delimiter, start_after, max_keys)


@hookimpl
def register_backends(register):
    register("memory", MemoryBackend)
