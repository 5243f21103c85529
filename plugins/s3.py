"""The s3 backend: objects kept in any S3-compatible store (AWS, MinIO, Ceph, another cv-gateway).

Configuration (``[backends.NAME] type = "s3"``)::

    endpoint_url = "http://minio:9000"   # omit for AWS
    region = "us-east-1"
    # Either one remote bucket for everything, gateway buckets as key prefixes in it ...
    bucket = "cv-archive"                # remote bucket; gateway bucket B, key K -> "<prefix>B/K"
    prefix = "site-1/"
    # ... or one remote bucket per gateway bucket (when `bucket` is not set):
    bucket_prefix = "cv-"                # gateway bucket B -> remote bucket "cv-B"
    bucket_map = { faces = "prod-faces" }  # explicit names win over bucket_prefix
    access_key_id = "..."                # omit both to use the AWS credentials chain
    secret_access_key = "..."            # (environment, ~/.aws, profile, instance role)
    session_token = ""
    profile = ""                         # a named profile from ~/.aws/config
    addressing_style = "path"            # path, virtual or auto
    verify_tls = true
    buffer_size = 8388608                # bodies up to this are sent in one request, with retries
    part_size = 8388608                  # parts of large uploads of unknown length (bounded memory)
    multipart_threshold = 5368709120     # bodies of known length up to this stream in one PUT
    max_attempts = 5                     # tries per call (botocore "standard" mode: backoff on throttling, 5xx)
    timeout = 30                         # read timeout of each HTTP call, and the longest wait for a
                                         # streamed body's next chunk from the client, seconds
    connect_timeout = 10
    deadline = 50                        # the longest one call may take, its retries included, seconds:
                                         # below the 60 s read timeout of boto3 and the aws cli, so that
                                         # their users get a 503 with Retry-After, not a timeout of their own
    max_connections = 16                 # HTTP connections, and the worker threads that use them

boto3 is synchronous: every call runs in this backend's own thread pool.
Errors are translated by s3_errors.translate (one table).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

from botocore.exceptions import ClientError

from gateway import errors
from gateway.backend import (
    STORED_HEADERS,
    Backend,
    BucketInfo,
    ByteRange,
    Capabilities,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectReader,
)
from gateway.hookspecs import hookimpl
from gateway.payload import Payload

from .s3_errors import error_code, retry_later, translate
from .s3_multipart import MultipartMixin
from .s3_stream import PayloadReader

log = logging.getLogger(__name__)
MiB = 1024 * 1024
# User-metadata names starting with this are the backend's own (clients' entries would be lost or
# overwritten): refused on writes, see check_user_metadata. Every internal entry must use it.
RESERVED_META_PREFIX = "cvgw-"
CHECKSUMS_META = RESERVED_META_PREFIX + "checksums"  # user-metadata entry that keeps the flexible checksums
READ_CHUNK = MiB
SMALL_GET = 256 * 1024  # a GET of up to this many bytes is read in the same thread hop
MAX_COPY = 5 * 1024 * MiB  # CopyObject's limit; larger objects are copied through the gateway
_RFC2047 = re.compile(r"=\?(utf-8|latin-1)\?b\?([A-Za-z0-9+/=]*)\?=", re.IGNORECASE)
BUCKET_TTL = 5.0  # seconds a bucket marker seen in single-bucket mode is trusted
_HEADER_PARAMS = {"cache-control": "CacheControl", "content-disposition": "ContentDisposition",
                  "content-encoding": "ContentEncoding", "content-language": "ContentLanguage", "expires": "Expires",
                  "x-amz-website-redirect-location": "WebsiteRedirectLocation"}


def range_header(byte_range: ByteRange) -> str:
    if byte_range.first is None:
        return f"bytes=-{byte_range.last}"
    return f"bytes={byte_range.first}-" + ("" if byte_range.last is None else str(byte_range.last))


def encode_meta_value(value: str) -> str:
    """S3 metadata travels in HTTP headers as ASCII: other text goes as RFC 2047 (as AWS does).

    An ASCII value that itself reads as an encoded word (a client may send ``=?utf-8?b?aGk=?=``
    literally) is encoded too: decode_meta_value then gives back exactly what the client sent.
    """
    if value.isascii() and not _RFC2047.fullmatch(value):
        return value
    # Values reach the gateway as latin-1 decoded header bytes: send those bytes back.
    try:
        return "=?latin-1?b?" + base64.b64encode(value.encode("latin-1")).decode() + "?="
    except UnicodeEncodeError:
        return "=?utf-8?b?" + base64.b64encode(value.encode("utf-8")).decode() + "?="


def decode_meta_value(value: str) -> str:
    match = _RFC2047.fullmatch(value)
    if not match:
        return value
    try:
        return base64.b64decode(match.group(2)).decode(match.group(1))
    except (ValueError, LookupError):
        return value


def info_from_headers(key: str, headers: dict, size: int) -> ObjectInfo:
    metadata, checksums = {}, {}
    for name, value in headers.items():
        if name.startswith("x-amz-meta-"):
            if name == f"x-amz-meta-{CHECKSUMS_META}":
                checksums = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
            else:
                metadata[name[11:]] = decode_meta_value(value)
    stored = {h: headers[h] for h in STORED_HEADERS if h in headers}
    modified = headers.get("last-modified")
    meta = ObjectMeta(headers.get("content-type") or "binary/octet-stream", metadata, stored)
    return ObjectInfo(key, size, headers.get("etag", "").strip('"'),
                      parsedate_to_datetime(modified).timestamp() if modified else time.time(), meta, checksums)


def check_user_metadata(meta: ObjectMeta) -> None:
    """Refuse user metadata under the backend's reserved names: it would be dropped or overwritten."""
    for name in meta.metadata:
        if name.lower().startswith(RESERVED_META_PREFIX):
            raise errors.InvalidArgument(
                f"The metadata header x-amz-meta-{name} is reserved by this gateway's s3 backend "
                f"(names starting with x-amz-meta-{RESERVED_META_PREFIX} hold its own data, such as checksums): "
                f"rename that metadata entry.", ArgumentName=f"x-amz-meta-{name}")


def put_params(meta: ObjectMeta, checksums: dict | None = None) -> dict:
    check_user_metadata(meta)  # every write's metadata passes here: none can be overwritten silently
    params = {"ContentType": meta.content_type,
              "Metadata": {k: encode_meta_value(v) for k, v in meta.metadata.items()}}
    for header, param in _HEADER_PARAMS.items():
        if header in meta.headers:
            params[param] = meta.headers[header]
    if checksums:
        params["Metadata"][CHECKSUMS_META] = ";".join(f"{k}={v}" for k, v in sorted(checksums.items()))
    return params


class S3Backend(MultipartMixin, Backend):
    capabilities = Capabilities(range_reads=True, server_side_copy=True, native_multipart=True,
                                atomic_put=True, shared=True, listing="remote")

    def __init__(self, name: str = "s3", *, endpoint_url: str | None = None, region: str = "us-east-1",
                 bucket: str = "", prefix: str = "", bucket_prefix: str = "", bucket_map: dict | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 session_token: str | None = None, profile: str | None = None, addressing_style: str = "path",
                 verify_tls: bool = True, buffer_size: int = 8 * MiB, part_size: int = 8 * MiB,
                 multipart_threshold: int = 5 * 1024 * MiB, max_attempts: int = 5, timeout: float = 30.0,
                 connect_timeout: float = 10.0, deadline: float = 50.0, max_connections: int = 16):
        super().__init__(name)
        self.label = f"backend {name!r} (s3)"
        if addressing_style not in ("path", "virtual", "auto"):
            raise ValueError(f"{self.label}: backends.{name}.addressing_style must be path, virtual or auto")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError(f"{self.label}: set backends.{name}.access_key_id and secret_access_key together "
                             f"(or neither, to use the AWS credentials chain)")
        if bucket and (bucket_prefix or bucket_map):
            raise ValueError(f"{self.label}: backends.{name}.bucket (one remote bucket) excludes bucket_prefix "
                             f"and bucket_map (one remote bucket per gateway bucket)")
        if part_size < 5 * MiB or buffer_size < 1 or multipart_threshold < 1:
            raise ValueError(f"{self.label}: backends.{name}.part_size must be at least 5 MiB (S3's minimum), "
                             f"buffer_size and multipart_threshold positive")
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
            raise ValueError(f"{self.label}: backends.{name}.deadline must be a positive number of seconds "
                             f"(the longest one call may take, retries included), not {deadline!r}")
        if endpoint_url and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", endpoint_url):
            # botocore's own complaint ("Invalid endpoint: ...") names neither the backend nor the setting.
            raise ValueError(f"{self.label}: backends.{name}.endpoint_url {endpoint_url!r} is not a URL: give "
                             f"http://host:port or https://host (or leave it out for AWS)")
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.bucket, self.prefix = bucket, prefix
        self.bucket_prefix, self.bucket_map = bucket_prefix, dict(bucket_map or {})
        self._reverse_map = {remote: local for local, remote in self.bucket_map.items()}
        self.buffer_size, self.part_size, self.multipart_threshold = buffer_size, part_size, multipart_threshold
        self.timeout = float(timeout)
        # Also bounds a streamed body's wait for the client's next chunk: the remote request is open meanwhile.
        self.timeout_setting = f"the gateway's setting backends.{name}.timeout"
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                            aws_session_token=session_token or None, profile_name=profile or None,
                                            region_name=region)
        except ProfileNotFound:  # a setting: said as such (it was reported as a fault of this plugin)
            raise ValueError(f"backends.{name}.profile: there is no AWS profile {profile!r} in the shared config "
                             "and credentials files (~/.aws/config, ~/.aws/credentials, or AWS_CONFIG_FILE and "
                             "AWS_SHARED_CREDENTIALS_FILE) of the user the gateway runs as: add it there, fix the "
                             "name, or give access_key_id and secret_access_key") from None
        common = dict(connect_timeout=connect_timeout, read_timeout=timeout, max_pool_connections=max_connections,
                      s3={"addressing_style": addressing_style}, signature_version="s3v4",
                      request_checksum_calculation="when_required", response_checksum_validation="when_required")
        client_args = dict(endpoint_url=self.endpoint_url, verify=verify_tls)
        self.client = session.client(
            "s3", config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"}, **common), **client_args)
        # Streamed bodies cannot be replayed or hashed before sending: their client makes one attempt
        # (the S3 client retries the whole PUT) and signs them as UNSIGNED-PAYLOAD, even over http.
        stream_common = dict(common, s3={"addressing_style": addressing_style, "payload_signing_enabled": False})
        self.stream_client = session.client(
            "s3", config=Config(retries={"total_max_attempts": 1}, **stream_common), **client_args)

        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix=f"s3-{name}")
        # Bounds on one call as a whole: botocore's timeouts bound each try, these bound the retries too.
        # A call that sends a body or has the store copy data may take as long as its tries allow. Any
        # other call answers within ``deadline``: the client gets a 503 with Retry-After while its own
        # read timeout (60 s in boto3 and the aws cli) has not expired, where a frozen store's 30 s reads
        # tried 5 times would let it time out, retry, and pile up calls here. A worker thread still
        # waiting on such a call is freed by botocore's own timeouts.
        self._work_limit = (connect_timeout + timeout) * max_attempts + 2 * max_attempts
        self._call_limit = min(self._work_limit, float(deadline))
        self._markers: dict[str, float] = {}  # single-bucket mode: bucket -> when its marker was seen
        self._uploads_checked: set[tuple[str, str, str]] = set()

    # Plumbing -----------------------------------------------------------------

    async def _run(self, fn, *args, bucket: str = "", key: str | None = None, what: str = "", bounded=True,
                   moves_data: bool = False, **kw):
        """Run the boto3 call ``fn`` in the pool; translate its errors. ``bounded``: within the call
        limit (``deadline``; with ``moves_data``, a call that sends a body or copies on the store, what
        its tries allow); a streamed body's call is bounded by its reader's timeout instead."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: fn(*args, **kw))
        limit = self._work_limit if moves_data else self._call_limit
        try:
            result = await (asyncio.wait_for(future, limit) if bounded else future)
        except TimeoutError:
            settings = "timeout, max_attempts" if moves_data else "deadline, timeout, max_attempts"
            # Unreachable, not only unavailable: a store that stands still at start-up is one to start
            # without and try again (as one that refuses connections), not a refused password.
            raise retry_later(errors.BackendUnreachable(
                f"{self.label}: {what or fn.__name__} took longer than {limit:g}s (settings {settings})")) from None
        except Exception as exc:
            translated = translate(exc, f"{self.label}: {what or getattr(fn, '__name__', 'call')}", bucket, key)
            if self._single() and isinstance(translated, errors.NoSuchBucket) and isinstance(exc, ClientError) \
                    and error_code(exc) == "NoSuchBucket":
                # Single-bucket mode: the one remote bucket is gone, not the client's bucket.
                translated = self._remote_bucket_gone(what or getattr(fn, "__name__", "call"))
            if translated is exc:
                raise
            raise translated from exc
        if getattr(fn, "__name__", "").startswith("list_") and isinstance(result, dict) \
                and result.keys() <= {"ResponseMetadata"}:
            # Every listing's document has elements (its Name, Prefix, IsTruncated ...); none at all is a
            # store cut off after its 200 headers, which botocore parses as an empty listing. Passed on,
            # a bucket would list empty, and a sync tool would delete what it has.
            raise retry_later(errors.BackendUnreachable(
                f"{self.label}: {what or fn.__name__}: the store answered 200 without a listing (connection "
                "cut after the headers?)"))
        return result

    def _remote_bucket_gone(self, what: str) -> errors.GatewayError:
        """A 503 naming the configured remote bucket: every gateway bucket lives in it, so its absence is
        the backend's failure (as at start-up), not a NoSuchBucket about the client's bucket."""
        return retry_later(errors.BackendUnavailable(
            f"{self.label}: {what}: remote bucket {self.bucket!r} does not exist on S3 endpoint "
            f"{self.endpoint_url or 'AWS'} (check the bucket setting)"))

    def _single(self) -> bool:
        return bool(self.bucket)

    def remote(self, bucket: str, key: str = "") -> tuple[str, str]:
        """(remote bucket, remote key) of a gateway bucket and key."""
        if not bucket or bucket.startswith(".") or "/" in bucket:
            raise errors.InvalidBucketName(BucketName=bucket)
        if self._single():
            return self.bucket, f"{self.prefix}{bucket}/{key}"
        return self.bucket_map.get(bucket, self.bucket_prefix + bucket), key

    def _local_key(self, bucket: str, remote_key: str) -> str:
        return remote_key[len(self.remote(bucket)[1]):] if self._single() else remote_key

    # Life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        where = f"S3 endpoint {self.endpoint_url or 'AWS'}"
        try:
            if self._single():
                await self._run(self.client.head_bucket, Bucket=self.bucket, bucket=self.bucket, what="check bucket")
            else:
                await self._run(self.client.list_buckets, what="list buckets")
                for remote in self.bucket_map.values():
                    await self._run(self.client.head_bucket, Bucket=remote, bucket=remote, what="check bucket")
        except errors.NoSuchBucket as exc:
            setting = "bucket" if self._single() else f"bucket_map.{self._reverse_map.get(exc.fields['BucketName'])}"
            raise ValueError(f"{self.label}: remote bucket {exc.fields['BucketName']!r} does not exist on {where} "
                             f"(check the {setting} setting)") from None
        except errors.BackendUnreachable as exc:  # down or not serving now: the gateway starts and tries again
            reason = exc.message.removeprefix(f"{self.label}: ")
            raise errors.BackendUnreachable(f"{self.label}: {where} is not answering (check the endpoint_url setting "
                                            f"if it stays so): {reason}") from None
        except errors.GatewayError as exc:
            raise ValueError(f"{self.label}: cannot use {where} (check the access_key_id/secret_access_key "
                             f"setting): {exc.message.removeprefix(f'{self.label}: ')}") from None

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check_writable(self) -> None:
        if self._single():
            await self._run(self.client.head_bucket, Bucket=self.bucket, bucket=self.bucket, what="check bucket")
        else:
            await self._run(self.client.list_buckets, what="list buckets")

    # Buckets --------------------------------------------------------------------

    async def create_bucket(self, bucket: str) -> None:
        remote, marker = self.remote(bucket)
        if await self._bucket_exists(bucket):
            raise errors.BucketAlreadyOwnedByYou(BucketName=bucket)
        if self._single():
            await self._run(self.client.put_object, Bucket=remote, Key=marker.rstrip("/"), Body=b"",
                            bucket=bucket, what="create bucket marker")
            self._markers[bucket] = time.monotonic()
            return
        params = {"Bucket": remote}
        if self.region and self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        await self._run(self.client.create_bucket, **params, bucket=bucket, what="create bucket")

    async def _bucket_exists(self, bucket: str) -> bool:
        try:
            await self.head_bucket(bucket)
        except errors.NoSuchBucket:
            return False
        return True

    async def _require_bucket(self, bucket: str) -> None:
        """Single-bucket mode keeps no remote bucket per gateway bucket: check its marker (cached briefly)."""
        if self._single():
            seen = self._markers.get(bucket)
            if seen is None or time.monotonic() - seen > BUCKET_TTL:
                await self.head_bucket(bucket)

    async def delete_bucket(self, bucket: str) -> None:
        remote, key = self.remote(bucket)
        if not self._single():
            await self._run(self.client.delete_bucket, Bucket=remote, bucket=bucket, what="delete bucket")
            return
        await self.head_bucket(bucket)
        page = await self._run(self.client.list_objects_v2, Bucket=remote, Prefix=key, MaxKeys=1,
                               bucket=bucket, what="list objects")
        if page.get("KeyCount", 0):
            raise errors.BucketNotEmpty(BucketName=bucket)
        await self._run(self.client.delete_object, Bucket=remote, Key=key.rstrip("/"), bucket=bucket,
                        what="delete bucket marker")
        self._markers.pop(bucket, None)

    async def head_bucket(self, bucket: str) -> BucketInfo:
        remote, key = self.remote(bucket)
        if self._single():
            try:
                head = await self._run(self.client.head_object, Bucket=remote, Key=key.rstrip("/"),
                                       bucket=bucket, key="", what="head bucket marker")
            except errors.NoSuchKey:
                # A HEAD's 404 does not say which is missing: the marker, or the remote bucket itself.
                try:
                    await self._run(self.client.head_bucket, Bucket=remote, bucket=bucket, what="check bucket")
                except errors.NoSuchBucket:
                    raise self._remote_bucket_gone("head bucket marker") from None
                raise errors.NoSuchBucket(BucketName=bucket) from None
            self._markers[bucket] = time.monotonic()
            return BucketInfo(bucket, head["LastModified"].timestamp())
        await self._run(self.client.head_bucket, Bucket=remote, bucket=bucket, what="head bucket")
        try:
            listed = await self._run(self.client.list_buckets, what="list buckets")
        except errors.GatewayError:
            return BucketInfo(bucket, 0.0)  # credentials limited to the bucket: no creation date
        created = next((b["CreationDate"].timestamp() for b in listed["Buckets"] if b["Name"] == remote), 0.0)
        return BucketInfo(bucket, created)

    async def list_buckets(self) -> list[BucketInfo]:
        found = []
        if self._single():
            token = None
            while True:
                extra = {"ContinuationToken": token} if token else {}
                page = await self._run(self.client.list_objects_v2, Bucket=self.bucket, Prefix=self.prefix,
                                       Delimiter="/", what="list buckets", **extra)
                for obj in page.get("Contents", []):
                    found.append(BucketInfo(obj["Key"][len(self.prefix):], obj["LastModified"].timestamp()))
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
        else:
            listed = await self._run(self.client.list_buckets, what="list buckets")
            for remote in listed["Buckets"]:
                name = self._reverse_map.get(remote["Name"])
                if name is None and self.bucket_prefix is not None and remote["Name"].startswith(self.bucket_prefix):
                    name = remote["Name"][len(self.bucket_prefix):]
                    if name in self.bucket_map:
                        name = None  # that gateway bucket lives elsewhere
                if name:
                    found.append(BucketInfo(name, remote["CreationDate"].timestamp()))
        return sorted(found, key=lambda b: b.name)

    # Objects ----------------------------------------------------------------------

    async def _not_found(self, bucket: str, key: str) -> errors.GatewayError:
        return errors.NoSuchKey(Key=key) if await self._bucket_exists(bucket) else errors.NoSuchBucket(
            BucketName=bucket)

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        remote, remote_key = self.remote(bucket, key)
        params = {"Bucket": remote, "Key": remote_key}
        if byte_range is not None:  # passed through: the remote store applies it, its 416 is InvalidRange
            params["Range"] = range_header(byte_range)

        def open_object():
            response = self.client.get_object(**params)
            headers = response["ResponseMetadata"]["HTTPHeaders"]
            length = response["ContentLength"]
            content_range = headers.get("content-range")
            if content_range:  # bytes first-last/size
                span, _, size = content_range.partition(" ")[2].partition("/")
                start, size = int(span.split("-")[0]), int(size)
            else:
                start, size = 0, length
            if byte_range is not None and not content_range:
                # A store that ignores Range: apply it here.
                start, stop = byte_range.resolve(size)
                body = response["Body"]
                body.read(start) if start else None
                data = body.read(stop - start) if stop - start <= SMALL_GET else None
                if data is not None:
                    body.close()
                return info_from_headers(key, headers, size), start, stop, data, None if data is not None else body
            body = response["Body"]
            if length <= SMALL_GET:
                data = body.read()
                body.close()
                return info_from_headers(key, headers, size), start, start + length, data, None
            return info_from_headers(key, headers, size), start, start + length, None, body

        try:
            info, start, stop, data, body = await self._run(open_object, bucket=bucket, key=key, what="get object")
        except errors.NoSuchKey:
            raise await self._not_found(bucket, key) from None
        except errors.InvalidRange:
            size = (await self.head(bucket, key)).size
            raise errors.InvalidRange(ActualObjectSize=str(size)) from None
        if data is not None:
            return ObjectReader(info, start, stop, data=data)
        remaining = stop - start

        async def chunks():
            nonlocal remaining
            try:
                while remaining > 0:
                    chunk = await self._run(body.read, min(READ_CHUNK, remaining), bucket=bucket, key=key,
                                            what="read object")
                    if not chunk:
                        raise errors.BackendUnavailable(f"{self.label}: the remote store ended the body early")
                    remaining -= len(chunk)
                    yield chunk
            finally:
                body.close()

        return ObjectReader(info, start, stop, _chunks=chunks(), _close=body.close)

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        remote, remote_key = self.remote(bucket, key)
        try:
            response = await self._run(self.client.head_object, Bucket=remote, Key=remote_key, bucket=bucket,
                                       key=key, what="head object")
        except errors.NoSuchKey:
            raise await self._not_found(bucket, key) from None
        return info_from_headers(key, response["ResponseMetadata"]["HTTPHeaders"], response["ContentLength"])

    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        remote, remote_key = self.remote(bucket, key)
        check_user_metadata(meta)  # before the body is read, not after
        await self._require_bucket(bucket)
        size = payload.expected_size
        if size is not None and self.buffer_size < size <= self.multipart_threshold:
            return await self._put_streamed(bucket, key, remote, remote_key, payload, meta)
        buffered, total, iterator = [], 0, payload.__aiter__()
        async for chunk in iterator:
            buffered.append(chunk)
            total += len(chunk)
            if total > self.buffer_size:
                return await self._put_multipart(bucket, key, payload, meta, buffered, iterator)
        body = b"".join(buffered)
        response = await self._run(self.client.put_object, Bucket=remote, Key=remote_key, Body=body,
                                   **put_params(meta, payload.checksums), bucket=bucket, key=key, what="put object",
                                   moves_data=True)
        return ObjectInfo(key, len(body), response["ETag"].strip('"'), time.time(), meta, payload.checksums)

    async def _put_streamed(self, bucket, key, remote, remote_key, payload: Payload, meta) -> ObjectInfo:
        """One PUT whose body streams from the client: bounded memory, the ETag stays the MD5."""
        reader = PayloadReader(payload, asyncio.get_running_loop(), self.timeout, self.timeout_setting)
        try:
            response = await self._run(self.stream_client.put_object, Bucket=remote, Key=remote_key, Body=reader,
                                       ContentLength=payload.expected_size, **put_params(meta),
                                       bucket=bucket, key=key, what="put object", bounded=False)
        except Exception:
            if reader.error is not None:  # the client's body was bad: that is the error to report
                raise reader.error from None
            raise
        # Flexible checksums are known only now; objects this large keep their MD5 ETag only.
        return ObjectInfo(key, payload.size, response["ETag"].strip('"'), time.time(), meta, payload.checksums)

    async def delete(self, bucket: str, key: str) -> None:
        remote, remote_key = self.remote(bucket, key)
        await self._require_bucket(bucket)
        await self._run(self.client.delete_object, Bucket=remote, Key=remote_key, bucket=bucket, key=key,
                        what="delete object")

    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000) -> ListPage:
        remote, base = self.remote(bucket)
        await self._require_bucket(bucket)
        page = ListPage([], [])
        if max_keys <= 0:
            return page
        params = {"Bucket": remote, "Prefix": base + prefix, "MaxKeys": max_keys}
        if delimiter:
            params["Delimiter"] = delimiter
        if start_after:
            params["StartAfter"] = base + start_after
        response = await self._run(self.client.list_objects_v2, **params, bucket=bucket, what="list objects")
        for obj in response.get("Contents", []):
            page.objects.append(ObjectInfo(obj["Key"][len(base):], obj["Size"], obj["ETag"].strip('"'),
                                           obj["LastModified"].timestamp()))
        page.common_prefixes = [p["Prefix"][len(base):] for p in response.get("CommonPrefixes", [])]
        page.is_truncated = bool(response.get("IsTruncated"))
        if page.is_truncated:
            last = [o.key for o in page.objects[-1:]] + page.common_prefixes[-1:]
            page.next_marker = max(last, key=str.encode) if last else ""
        return page

    async def copy(self, src_bucket, src_key, dst_bucket, dst_key, meta: ObjectMeta | None = None) -> ObjectInfo:
        """Server-side CopyObject (the bytes never pass through the gateway) up to 5 GiB."""
        await self.head_bucket(dst_bucket)
        source = await self.head(src_bucket, src_key)
        if source.size > MAX_COPY:
            return await super().copy(src_bucket, src_key, dst_bucket, dst_key, meta)
        src_remote, src_remote_key = self.remote(src_bucket, src_key)
        dst_remote, dst_remote_key = self.remote(dst_bucket, dst_key)
        params = {"Bucket": dst_remote, "Key": dst_remote_key,
                  "CopySource": {"Bucket": src_remote, "Key": src_remote_key}, "MetadataDirective": "COPY"}
        if meta is not None:
            params.update(put_params(meta, dict(source.checksums)), MetadataDirective="REPLACE")
        elif "x-amz-website-redirect-location" in source.meta.headers:
            # S3 never copies the redirect ("unique to each object"); a copy here keeps everything.
            params["WebsiteRedirectLocation"] = source.meta.headers["x-amz-website-redirect-location"]
        response = await self._run(self.client.copy_object, **params, bucket=dst_bucket, key=dst_key,
                                   what="copy object", moves_data=True)
        result = response["CopyObjectResult"]
        return ObjectInfo(dst_key, source.size, result["ETag"].strip('"'), result["LastModified"].timestamp(),
                          meta or source.meta, source.checksums)


@hookimpl
def register_backends(register):
    register("s3", S3Backend)
