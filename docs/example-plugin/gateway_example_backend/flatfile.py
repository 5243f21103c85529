"""The "flatfile" backend: one data file and one JSON sidecar per object, in one directory per bucket.

Small on purpose: it implements only what gateway.backend.Backend makes
abstract (buckets, get, put, head, delete, list) and inherits copy and
multipart uploads. Everything it raises comes from gateway.errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from gateway import errors
from gateway.backend import (
    Backend,
    BucketInfo,
    ByteRange,
    Capabilities,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectReader,
    paginate,
)
from gateway.hookspecs import hookimpl
from gateway.payload import Payload

CHUNK = 1024 * 1024


class FlatFileBackend(Backend):
    """Options: ``root``, the directory holding one subdirectory per bucket."""

    # Sidecar and data are renamed into place one after the other, so a reader may briefly see the
    # new data with the old sidecar: this backend does not claim atomic_put.
    capabilities = Capabilities(range_reads=True, atomic_put=False, shared=False, listing="walk")

    def __init__(self, name: str = "flatfile", root: str = "./flat-storage"):
        super().__init__(name)
        self.root = os.path.abspath(root)

    async def start(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"backend {self.name!r} (flatfile): root {self.root!r} is not usable: "
                             f"{exc.strerror} (check the root setting)") from None

    # Paths ------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> str:
        if not bucket or "/" in bucket or bucket in (".", "..") or "\x00" in bucket:
            raise errors.InvalidBucketName(BucketName=bucket)
        return os.path.join(self.root, bucket)

    def _paths(self, bucket: str, key: str) -> tuple[str, str]:
        name = hashlib.sha256(key.encode()).hexdigest()
        base = os.path.join(self._bucket_dir(bucket), name)
        return base + ".data", base + ".json"

    def _check_bucket(self, bucket: str) -> str:
        path = self._bucket_dir(bucket)
        if not os.path.isdir(path):
            raise errors.NoSuchBucket(BucketName=bucket)
        return path

    # Buckets ----------------------------------------------------------------

    async def create_bucket(self, bucket: str) -> None:
        try:
            os.mkdir(self._bucket_dir(bucket))
        except FileExistsError:
            raise errors.BucketAlreadyOwnedByYou(BucketName=bucket) from None

    async def delete_bucket(self, bucket: str) -> None:
        path = self._check_bucket(bucket)
        if any(name.endswith(".json") for name in os.listdir(path)):
            raise errors.BucketNotEmpty(BucketName=bucket)
        for name in os.listdir(path):  # leftover temp files
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    async def head_bucket(self, bucket: str) -> BucketInfo:
        return BucketInfo(bucket, os.stat(self._check_bucket(bucket)).st_ctime)

    async def list_buckets(self) -> list[BucketInfo]:
        return [BucketInfo(e.name, e.stat().st_ctime) for e in sorted(os.scandir(self.root), key=lambda e: e.name)
                if e.is_dir()]

    # Objects ----------------------------------------------------------------

    def _read_sidecar(self, bucket: str, key: str) -> ObjectInfo:
        self._check_bucket(bucket)
        try:
            with open(self._paths(bucket, key)[1], encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            raise errors.NoSuchKey(Key=key) from None
        return ObjectInfo(record["key"], record["size"], record["etag"], record["time"],
                          ObjectMeta.from_json(record["meta"]), record["checksums"])

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return self._read_sidecar(bucket, key)

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        info = self._read_sidecar(bucket, key)
        start, stop = byte_range.resolve(info.size) if byte_range else (0, info.size)
        try:
            f = open(self._paths(bucket, key)[0], "rb")
        except FileNotFoundError:  # deleted between the two opens
            raise errors.NoSuchKey(Key=key) from None

        async def chunks():
            f.seek(start)
            left = stop - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise errors.InternalError("data file is shorter than its sidecar says")
                left -= len(chunk)
                yield chunk

        return ObjectReader(info, start, stop, _chunks=chunks(), _close=f.close)

    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        bucket_dir = self._check_bucket(bucket)
        data_path, meta_path = self._paths(bucket, key)
        tmp = os.path.join(bucket_dir, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            with open(tmp, "wb") as f:
                async for chunk in payload:  # raises on a bad body: nothing is published then
                    f.write(chunk)
            info = ObjectInfo(key, payload.size, payload.etag, time.time(), meta, payload.checksums)
            record = {"key": key, "size": info.size, "etag": info.etag, "time": info.last_modified,
                      "meta": meta.to_json(), "checksums": dict(info.checksums)}
            with open(tmp + ".json", "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, data_path)
            os.replace(tmp + ".json", meta_path)
            return info
        except FileNotFoundError:
            if not os.path.isdir(bucket_dir):  # DeleteBucket won while the body streamed in
                raise errors.NoSuchBucket(BucketName=bucket) from None
            raise
        finally:
            for leftover in (tmp, tmp + ".json"):
                if os.path.exists(leftover):
                    os.unlink(leftover)

    async def delete(self, bucket: str, key: str) -> None:
        self._check_bucket(bucket)
        for path in reversed(self._paths(bucket, key)):  # sidecar first: the object vanishes at once
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000) -> ListPage:
        bucket_dir = self._check_bucket(bucket)
        infos = []
        for name in os.listdir(bucket_dir):
            if name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(bucket_dir, name), encoding="utf-8") as f:
                    record = json.load(f)
                infos.append(ObjectInfo(record["key"], record["size"], record["etag"], record["time"]))
        infos.sort(key=lambda info: info.key.encode())  # S3 lists in UTF-8 byte order
        return paginate(infos, prefix, delimiter, start_after, max_keys)


@hookimpl
def register_backends(register):
    """The hook the gateway calls: ``register(type name, Backend subclass)``."""
    register("flatfile", FlatFileBackend)
