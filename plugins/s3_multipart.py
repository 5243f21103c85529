"""Native multipart uploads for the s3 backend: the remote store keeps the parts and assembles them.

Upload IDs are the remote store's own, so several gateways in front of the
same store can share uploads (a part sent through one, completed through
another). Nothing is kept in the gateway except a set of (bucket, upload
id, key) already checked, so each part costs one remote call, not two.

Mixed into S3Backend (see s3.py); uses its ``client``, ``_run`` and ``remote``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway import errors
from gateway.backend import ObjectInfo, ObjectMeta, PartInfo, UploadInfo
from gateway.payload import Payload

from .s3_stream import PayloadReader

log = logging.getLogger(__name__)
MAX_CHECKED = 10_000


class MultipartMixin:
    async def _find_upload(self, bucket: str, upload_id: str, key: str | None) -> dict:
        remote, remote_key = self.remote(bucket, key or "")
        params = {"Bucket": remote, "Prefix": remote_key}
        while True:
            page = await self._run(self.client.list_multipart_uploads, **params, bucket=bucket,
                                   what="list uploads")
            for upload in page.get("Uploads", []):
                if upload["UploadId"] == upload_id and (key is None or upload["Key"] == remote_key):
                    return upload
            if not page.get("IsTruncated"):
                raise errors.NoSuchUpload(UploadId=upload_id)
            params.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def _remember(self, bucket: str, upload_id: str, key: str) -> None:
        if len(self._uploads_checked) > MAX_CHECKED:
            self._uploads_checked.clear()
        self._uploads_checked.add((bucket, upload_id, key))

    async def create_multipart(self, bucket: str, key: str, meta: ObjectMeta,
                               checksum_algorithm: str | None = None) -> UploadInfo:
        from .s3 import put_params

        remote, remote_key = self.remote(bucket, key)
        await self._require_bucket(bucket)
        response = await self._run(self.client.create_multipart_upload, Bucket=remote, Key=remote_key,
                                   **put_params(meta), bucket=bucket, key=key, what="create upload")
        upload_id = response["UploadId"]
        self._remember(bucket, upload_id, key)
        return UploadInfo(bucket, key, upload_id, time.time(), meta, checksum_algorithm)

    async def get_upload(self, bucket: str, upload_id: str, key: str | None = None) -> UploadInfo:
        if not upload_id or "/" in upload_id:
            raise errors.NoSuchUpload(UploadId=upload_id)
        if key is not None and (bucket, upload_id, key) in self._uploads_checked:
            return UploadInfo(bucket, key, upload_id, 0.0)
        upload = await self._find_upload(bucket, upload_id, key)
        local_key = self._local_key(bucket, upload["Key"])
        if key is not None:
            self._remember(bucket, upload_id, key)
        return UploadInfo(bucket, local_key, upload_id, upload["Initiated"].timestamp())

    async def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                          payload: Payload) -> PartInfo:
        await self.get_upload(bucket, upload_id, key)
        remote, remote_key = self.remote(bucket, key)
        common = dict(Bucket=remote, Key=remote_key, UploadId=upload_id, PartNumber=part_number)
        size = payload.expected_size
        if size is not None and size > self.buffer_size:
            # A large part streams through (bounded memory), signed as UNSIGNED-PAYLOAD, one attempt.
            reader = PayloadReader(payload, asyncio.get_running_loop(), self.timeout, self.timeout_setting)
            try:
                response = await self._run(self.stream_client.upload_part, **common, Body=reader, ContentLength=size,
                                           bucket=bucket, key=key, what="upload part", bounded=False)
            except Exception:
                if reader.error is not None:
                    raise reader.error from None
                raise
        else:
            body = b"".join([chunk async for chunk in payload])
            response = await self._run(self.client.upload_part, **common, Body=body, bucket=bucket, key=key,
                                       what="upload part", moves_data=True)
        return PartInfo(part_number, payload.size, response["ETag"].strip('"'), time.time(), payload.checksums)

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        await self.get_upload(bucket, upload_id, key)
        remote, remote_key = self.remote(bucket, key)
        params = {"Bucket": remote, "Key": remote_key, "UploadId": upload_id}
        parts = []
        while True:
            page = await self._run(self.client.list_parts, **params, bucket=bucket, key=key, what="list parts")
            for part in page.get("Parts", []):
                parts.append(PartInfo(part["PartNumber"], part["Size"], part["ETag"].strip('"'),
                                      part["LastModified"].timestamp()))
            if not page.get("IsTruncated"):
                return parts
            params["PartNumberMarker"] = page["NextPartNumberMarker"]

    async def list_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        remote, base = self.remote(bucket)
        if self._single():
            await self._require_bucket(bucket)
        params = {"Bucket": remote, "Prefix": base + prefix}
        uploads = []
        while True:
            page = await self._run(self.client.list_multipart_uploads, **params, bucket=bucket, what="list uploads")
            for upload in page.get("Uploads", []):
                uploads.append(UploadInfo(bucket, self._local_key(bucket, upload["Key"]), upload["UploadId"],
                                          upload["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                break
            params.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))
        return sorted(uploads, key=lambda u: (u.key.encode(), u.initiated))

    async def discard_orphaned_parts(self, bucket: str, older_than: float) -> int:
        """The remote store keeps an upload's parts with the upload itself: none can be orphaned."""
        return 0

    async def discard_uploads(self, bucket: str) -> None:
        """After DeleteBucket. A remote bucket of its own took its uploads with it (S3 discards them);
        in single-bucket mode the remote bucket stays, and the uploads under the prefix are aborted."""
        if not self._single():
            return
        remote, base = self.remote(bucket)
        params = {"Bucket": remote, "Prefix": base}
        while True:
            page = await self._run(self.client.list_multipart_uploads, **params, bucket=bucket, what="list uploads")
            for upload in page.get("Uploads", []):
                await self._run(self.client.abort_multipart_upload, Bucket=remote, Key=upload["Key"],
                                UploadId=upload["UploadId"], bucket=bucket, what="abort upload")
            if not page.get("IsTruncated"):
                break
            params.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))
        self._uploads_checked = {entry for entry in self._uploads_checked if entry[0] != bucket}

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self.get_upload(bucket, upload_id, key)
        remote, remote_key = self.remote(bucket, key)
        await self._run(self.client.abort_multipart_upload, Bucket=remote, Key=remote_key, UploadId=upload_id,
                        bucket=bucket, key=key, what="abort upload")
        self._uploads_checked.discard((bucket, upload_id, key))

    async def complete_multipart(self, bucket: str, key: str, upload_id: str,
                                 parts: list[tuple[int, str]]) -> ObjectInfo:
        await self.get_upload(bucket, upload_id, key)
        if not parts:
            raise errors.MalformedXML("You must specify at least one part.")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise errors.InvalidPartOrder()
        remote, remote_key = self.remote(bucket, key)
        listing = [{"PartNumber": n, "ETag": f'"{etag.strip(chr(34))}"'} for n, etag in parts]
        await self._run(self.client.complete_multipart_upload, Bucket=remote, Key=remote_key, UploadId=upload_id,
                        MultipartUpload={"Parts": listing}, bucket=bucket, key=key, what="complete upload",
                        moves_data=True)
        self._uploads_checked.discard((bucket, upload_id, key))
        return await self.head(bucket, key)

    async def _put_multipart(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta,
                             buffered: list[bytes], iterator) -> ObjectInfo:
        """A body of unknown length that outgrew buffer_size: send it as parts of part_size (bounded memory)."""
        upload = await self.create_multipart(bucket, key, meta)
        remote, remote_key = self.remote(bucket, key)
        completed = []

        async def send(data: bytes) -> None:
            number = len(completed) + 1
            response = await self._run(self.client.upload_part, Bucket=remote, Key=remote_key,
                                       UploadId=upload.upload_id, PartNumber=number, Body=data, bucket=bucket,
                                       key=key, what="upload part", moves_data=True)
            completed.append({"PartNumber": number, "ETag": response["ETag"]})

        try:
            pending, size = buffered, sum(map(len, buffered))
            async for chunk in iterator:
                pending.append(chunk)
                size += len(chunk)
                if size >= self.part_size:
                    data = b"".join(pending)
                    pending, size = [data[self.part_size:]], len(data) - self.part_size
                    await send(data[: self.part_size])
            # The payload's checks passed (its iterator ended): only now may the object appear.
            if size or not completed:
                await send(b"".join(pending))
            await self._run(self.client.complete_multipart_upload, Bucket=remote, Key=remote_key,
                            UploadId=upload.upload_id, MultipartUpload={"Parts": completed}, bucket=bucket,
                            key=key, what="complete upload", moves_data=True)
        except BaseException:
            try:
                await self._run(self.client.abort_multipart_upload, Bucket=remote, Key=remote_key,
                                UploadId=upload.upload_id, bucket=bucket, key=key, what="abort upload")
            except errors.GatewayError as exc:  # the remote store's lifecycle rules clean up what we could not
                log.warning("%s: could not abort upload %s of %s/%s: %s", self.label, upload.upload_id, bucket,
                            key, exc.message)
            raise
        info = await self.head(bucket, key)
        return ObjectInfo(key, payload.size, info.etag, info.last_modified, meta, payload.checksums)
