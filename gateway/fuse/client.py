"""The mount's HTTP side: a synchronous, pooled S3 client.

The mount runs in FUSE's worker threads, which are synchronous, so the client
is too: one urllib3 connection pool shared by all threads, and a small SigV4
signer (about 15 µs a request, against about 300 µs for a botocore request;
see docs/fuse.md). It never imports the FUSE binding: failures are
``StoreError``, an ``OSError`` whose errno says what the filesystem reports
(ENOENT, ENOTEMPTY, EACCES, EIO, ...).
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import errno
import hashlib
import hmac
import http.client
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import urllib3

from .lean_http import LeanHttp, LeanResponse

log = logging.getLogger("gateway.fuse.client")

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
META_PREFIX = "x-amz-meta-"
LIST_PAGE = 1000
LEAN_BODY_LIMIT = 4 * 1024 * 1024  # larger bodies of non-streamed GETs are redone with urllib3

# S3 error codes -> errno. Anything not here is mapped by HTTP status (see _errno_for).
ERRNO_BY_CODE = {
    "NoSuchKey": errno.ENOENT,
    "NoSuchBucket": errno.ENOENT,
    "NoSuchUpload": errno.ENOENT,
    "BucketNotEmpty": errno.ENOTEMPTY,
    "AccessDenied": errno.EACCES,
    "InvalidAccessKeyId": errno.EACCES,
    "SignatureDoesNotMatch": errno.EACCES,
    "RequestTimeTooSkewed": errno.EACCES,
    "BucketAlreadyExists": errno.EEXIST,
    "BucketAlreadyOwnedByYou": errno.EEXIST,
    "InvalidBucketName": errno.EINVAL,
    "KeyTooLongError": errno.ENAMETOOLONG,
    "EntityTooLarge": errno.EFBIG,
    "MetadataTooLarge": errno.E2BIG,
    "InvalidRange": errno.EINVAL,
    "InsufficientStorage": errno.ENOSPC,  # the gateway's disk is full: what df on the server will show
}


_RETRY = dict(total=1, connect=1, read=1, status=0, other=0, redirect=0, allowed_methods=None,
              raise_on_status=False)


class _NoResendAfterTimeout(urllib3.Retry):
    """The pool's one retry, except after a timeout, for requests whose second run would fail
    against what the first did: a gateway that answers late has still carried the first out. An
    exclusive create (``If-None-Match: *``) of a new name then got EEXIST from its own first attempt
    (the lock file was taken, by this mount, and the program told someone else held it), a
    CompleteMultipartUpload NoSuchUpload, a CreateMultipartUpload left an upload behind. A connection
    the server closed while idle (no answer, nothing carried out) is still retried."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        cause = error.args[1] if isinstance(error, urllib3.exceptions.ProtocolError) and len(error.args) > 1 else error
        if isinstance(error, urllib3.exceptions.ReadTimeoutError) or isinstance(cause, TimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class StoreError(OSError):
    """A request failed; ``errno`` is what the filesystem reports, ``code`` the S3 error code if any."""

    def __init__(self, err: int, message: str, code: str = ""):
        super().__init__(err, message)
        self.code = code


class Unreachable(StoreError):
    """The gateway did not answer (refused, reset, or timed out): EIO."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message, "Unreachable")


# Headers an object keeps with it (gateway/backend.py's STORED_HEADERS): a copy that replaces its
# metadata (chmod, a rename) sends them again, or they were lost.
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires",
                  "x-amz-website-redirect-location")


@dataclass(frozen=True)
class ObjectStat:
    """What the gateway says about one object. ``metadata`` is None when it came from a listing
    without it (a gateway or backend that does not answer metadata=true: not known, not "none")."""

    key: str
    size: int
    etag: str
    last_modified: float
    metadata: dict[str, str] | None = None
    content_type: str = ""  # "" from a listing (which has none)
    headers: dict[str, str] = field(default_factory=dict)  # STORED_HEADERS the object has (HEAD or GET)


@dataclass(frozen=True)
class Stored:
    """A write's answer: the new version's ETag, and its modification time as GET, HEAD and listings
    will give it (the gateway's Last-Modified on the answer; None from a server that sends none)."""

    etag: str
    last_modified: float | None = None


def _etag_of(root: ET.Element) -> str:
    """The <ETag> of a CopyObjectResult or CompleteMultipartUploadResult document."""
    return next(((node.text or "").strip('"') for node in root if _local(node.tag) == "ETag"), "")


def _stored(etag: str, headers) -> Stored:
    modified = headers.get("last-modified")
    return Stored(etag.strip('"'), (_http_date(modified) or None) if modified else None)


@dataclass
class ListPage:
    objects: list[ObjectStat] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None


class ObjectClient:
    """S3 requests against one gateway endpoint, safe to share between threads.

    :param endpoint: ``http://host:port`` (or https).
    :param timeout: seconds to wait for a connection or for the next bytes of an answer;
        a dead gateway fails a request with EIO after at most about twice this (one retry).
    :param pool_size: connections kept open; at least the number of threads issuing requests.
    """

    def __init__(self, endpoint: str, access_key: str, secret_key: str, *, region: str = "us-east-1",
                 timeout: float = 30.0, pool_size: int = 16, clock=time.time, ca_bundle: str | None = None):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint {endpoint!r} must look like http://host:port")
        self.endpoint = endpoint.rstrip("/")
        self.host_header = parts.netloc
        self.access_key = access_key
        self._secret = secret_key
        self.region = region
        self.timeout = timeout
        self._clock = clock
        self._keys: dict[str, bytes] = {}
        self._pool = urllib3.connection_from_url(
            self.endpoint, maxsize=pool_size, block=True,
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            # One retry covers a keep-alive connection the server closed while idle.
            retries=urllib3.Retry(**_RETRY),
            blocksize=1024 * 1024,
            **({"ca_certs": ca_bundle} if ca_bundle and parts.scheme == "https" else {}),
        )
        # Plain-HTTP GETs that are read whole (lookups, ranged reads, listings) go over a lean client:
        # a quarter of urllib3's CPU per request (lean_http.py). TLS endpoints use urllib3 only.
        self._lean = LeanHttp(parts.hostname, parts.port or 80, timeout, min(timeout, 10.0), LEAN_BODY_LIMIT) \
            if parts.scheme == "http" else None
        self._stats_lock = threading.Lock()
        self.stats: Counter = Counter()
        self._once = _NoResendAfterTimeout(**_RETRY)

    # Signing ------------------------------------------------------------------

    def _signing_key(self, date: str) -> bytes:
        key = self._keys.get(date)
        if key is None:
            key = ("AWS4" + self._secret).encode()
            for part in (date, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {date: key}
        return key

    def _sign(self, method: str, path: str, query: str, headers: dict[str, str], amz_date: str = "") -> None:
        """Sign with AWS Signature V4 (``amz_date``: the time to sign with, else now)."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        headers["x-amz-date"] = amz_date
        headers.setdefault("x-amz-content-sha256", UNSIGNED_PAYLOAD)
        headers["host"] = self.host_header
        names = sorted(name for name in headers if name == "host" or name.startswith("x-amz-"))
        canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names)
        signed = ";".join(names)
        canonical = "\n".join((method, path, query, canonical_headers, signed, headers["x-amz-content-sha256"]))
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(amz_date[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")

    # Requests -----------------------------------------------------------------

    def request(self, op: str, method: str, bucket: str = "", key: str = "", *, query: dict | None = None,
                headers: dict | None = None, body=None, stream: bool = False,
                ok: tuple[int, ...] = (200, 204, 206)) -> urllib3.BaseHTTPResponse | LeanResponse:
        """Send one signed request; raise StoreError unless the status is in ``ok``.

        ``op`` names the request in ``stats`` (LIST, HEAD, GET, PUT, COPY, DELETE, ...).
        """
        url, headers = self._signed(method, bucket, key, query, headers)
        with self._stats_lock:
            self.stats[op] += 1
        response = None
        try:
            if self._lean is not None and method == "GET" and not stream and body is None:
                response = self._lean.get(url, headers)  # None: a body too large to read whole
            if response is None:
                # A POST (create or complete a multipart upload) or a conditional PUT must not be sent
                # twice after the gateway was merely slow: see _NoResendAfterTimeout.
                once = method == "POST" or "if-none-match" in headers
                response = self._pool.urlopen(method, url, body=body, headers=headers, preload_content=not stream,
                                              pool_timeout=self.timeout, assert_same_host=False, redirect=False,
                                              **({"retries": self._once} if once else {}))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            log.error("gateway %s unreachable: %s %s failed: %s", self.endpoint, method, url[:200], reason)
            raise Unreachable(f"gateway {self.endpoint} unreachable ({reason})") from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s", method, url[:300], response.status)
        if response.status not in ok:
            raise self._error(response, method, bucket, key)
        if not stream:
            with self._stats_lock:
                self.stats["bytes_in"] += len(response.data)
        return response

    def _signed(self, method: str, bucket: str, key: str, query: dict | None,
                headers: dict | None, amz_date: str = "") -> tuple[str, dict[str, str]]:
        """The request target (path and query, encoded) and the signed headers of one request."""
        path = "/" + quote(bucket, safe="") + ("/" + quote(key, safe="/") if key else "") if bucket else "/"
        query_string = "&".join(
            f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in sorted((query or {}).items())
        ) if query else ""
        headers = {name.lower(): str(value) for name, value in (headers or {}).items()}
        self._sign(method, path, query_string, headers, amz_date)
        return path + ("?" + query_string if query_string else ""), headers

    def _error(self, response, method: str, bucket: str, key: str) -> StoreError:
        data = response.data if method != "HEAD" else b""
        code, message = "", ""
        if data:
            try:
                root = ET.fromstring(data)
                code = root.findtext("Code") or ""
                message = root.findtext("Message") or ""
            except ET.ParseError:
                message = data[:200].decode(errors="replace")
        err = ERRNO_BY_CODE.get(code) or _errno_for(response.status)
        what = f"{method} /{bucket}/{key}".rstrip("/") if bucket else f"{method} /"
        if err == errno.EIO:
            log.error("gateway %s: %s failed with %s %s: %s", self.endpoint, what, response.status, code, message)
        elif err == errno.EACCES:
            log.warning("gateway %s refused %s: %s %s (check the access and secret keys)",
                        self.endpoint, what, code or response.status, message)
        detail = " ".join(part for part in (str(response.status), code, message.rstrip(".")) if part)
        return StoreError(err, f"{what}: {detail}", code)

    def open_body(self, bucket: str, key: str, start: int, etag: str | None = None) -> BodyStream:
        """A streamed GET of the object from byte ``start`` to its end, read with ``BodyStream.readinto``;
        with ``etag``, only of that version (a changed object fails, see ``get_range``)."""
        response = self.request("GET", "GET", bucket, key, stream=True,
                                headers={"range": f"bytes={start}-", **_if_match(etag)})
        return BodyStream(response, f"{bucket}/{key}")

    def count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += amount

    # Buckets ------------------------------------------------------------------

    def list_buckets(self) -> list[tuple[str, float]]:
        root = ET.fromstring(self.request("LIST", "GET").data)
        found = []
        for node in root.iter():
            if _local(node.tag) == "Bucket":
                fields = {_local(child.tag): child.text or "" for child in node}
                found.append((fields.get("Name", ""), _parse_iso(fields.get("CreationDate", ""))))
        return found

    def head_bucket(self, bucket: str) -> None:
        self.request("HEAD", "HEAD", bucket)

    def create_bucket(self, bucket: str) -> None:
        self.request("PUT", "PUT", bucket, body=b"")

    def delete_bucket(self, bucket: str) -> None:
        self.request("DELETE", "DELETE", bucket)

    # Listing ------------------------------------------------------------------

    def list_page(self, bucket: str, prefix: str = "", delimiter: str = "/", token: str | None = None,
                  max_keys: int = LIST_PAGE, start_after: str | None = None) -> ListPage:
        # metadata=true (MinIO's extension, which the gateway answers when its backend lists metadata):
        # each entry then comes with its x-amz-meta-* in <UserMetadata>; S3 ignores the parameter.
        query = {"list-type": "2", "prefix": prefix, "max-keys": max_keys, "encoding-type": "url", "metadata": "true"}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        if start_after:
            query["start-after"] = start_after
        root = ET.fromstring(self.request("LIST", "GET", bucket, query=query).data)
        page = ListPage()
        truncated = False
        for node in root:
            tag = _local(node.tag)
            if tag == "Contents":
                fields = {_local(child.tag): child for child in node}
                text = {name: child.text or "" for name, child in fields.items()}
                metadata, content_type = _user_metadata(fields.get("UserMetadata"))
                page.objects.append(ObjectStat(
                    unquote(text.get("Key", "")), int(text.get("Size") or 0), text.get("ETag", "").strip('"'),
                    _parse_iso(text.get("LastModified", "")), metadata, content_type,
                ))
            elif tag == "CommonPrefixes":
                for child in node:
                    page.prefixes.append(unquote(child.text or ""))
            elif tag == "IsTruncated":
                truncated = (node.text or "").strip() == "true"
            elif tag == "NextContinuationToken":
                page.next_token = node.text
        if not truncated:
            page.next_token = None
        return page

    def iter_list(self, bucket: str, prefix: str = "", delimiter: str = "/") -> Iterator[ListPage]:
        """Pages of a listing, fetched one at a time as the caller consumes them."""
        token = None
        while True:
            page = self.list_page(bucket, prefix, delimiter, token)
            yield page
            token = page.next_token
            if not token:
                return

    # Objects ------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> ObjectStat:
        response = self.request("HEAD", "HEAD", bucket, key)
        return _stat_from_headers(key, response.headers, int(response.headers.get("content-length", 0)))

    def get_first(self, bucket: str, key: str, length: int) -> tuple[ObjectStat, bytes]:
        """The object's attributes and its first ``length`` bytes in one request (a ranged GET).

        Looking a file up this way costs the same request as a HEAD and saves the first read.
        """
        response = self.request("GET", "GET", bucket, key, headers={"range": f"bytes=0-{length - 1}"},
                                ok=(200, 206, 416))
        if response.status == 416:  # an empty object has no byte 0
            return self.head(bucket, key), b""
        size = _total_size(response.headers, len(response.data))
        return _stat_from_headers(key, response.headers, size), response.data

    def get_first_many(self, bucket: str, keys: list[str], length: int) -> list[tuple[ObjectStat, bytes] | None]:
        """``get_first`` of several objects, pipelined on one connection where the lean client
        serves the endpoint (else one request each). None for an object without an answer: missing,
        empty (no byte 0 to range), or any error; a caller that needs to know asks ``get_first``."""
        if self._lean is None:
            results = []
            for key in keys:
                try:
                    results.append(self.get_first(bucket, key, length))
                except StoreError:  # Unreachable too
                    results.append(None)
            return results
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        span = f"bytes=0-{length - 1}"
        requests = [self._signed("GET", bucket, key, None, {"range": span}, amz_date) for key in keys]
        with self._stats_lock:
            self.stats["GET"] += len(keys)
        try:
            responses = self._lean.get_many(requests)
        except OSError as exc:
            log.debug("gateway %s: %d pipelined GETs failed: %s", self.endpoint, len(keys), exc)
            return [None] * len(keys)
        results: list[tuple[ObjectStat, bytes] | None] = []
        for key, response in zip(keys, responses):
            if response is None or response.status not in (200, 206):
                results.append(None)
                continue
            with self._stats_lock:
                self.stats["bytes_in"] += len(response.data)
            size = _total_size(response.headers, len(response.data))
            results.append((_stat_from_headers(key, response.headers, size), response.data))
        return results

    def get_range(self, bucket: str, key: str, start: int, stop: int, etag: str | None = None) -> bytes:
        """Bytes [start, stop) of an object (fewer at its end). With ``etag``, only of that version:
        one replaced meanwhile fails with EIO (412), so a reader never gets bytes of two versions."""
        if stop <= start:
            return b""
        response = self.request("GET", "GET", bucket, key, headers={"range": f"bytes={start}-{stop - 1}",
                                                                    **_if_match(etag)},
                                ok=(200, 206, 416))
        if response.status == 416:
            return b""
        if response.status == 200:  # the server ignored the range
            return response.data[start:stop]
        return response.data

    def put(self, bucket: str, key: str, body, length: int, metadata: dict[str, str] | None = None,
            content_type: str = "binary/octet-stream", *, exclusive: bool = False,
            stored: dict[str, str] | None = None) -> Stored:
        """Upload ``body`` (bytes or a file object positioned at its start).

        ``exclusive``: only if no object has the key (``If-None-Match: *``); EEXIST when one has.
        ``stored``: STORED_HEADERS for the new version (those of the version it replaces).
        """
        headers = {"content-length": str(length), "content-type": content_type, **(stored or {})}
        headers.update(_meta_headers(metadata))
        if exclusive:
            headers["if-none-match"] = "*"
        response = self.request("PUT", "PUT", bucket, key, headers=headers, body=body, ok=(200, 412))
        if response.status == 412:
            raise StoreError(errno.EEXIST, f"/{bucket}/{key} exists already", "PreconditionFailed")
        self.count("bytes_out", length)
        return _stored(response.headers.get("etag", ""), response.headers)

    def copy(self, bucket: str, source_key: str, key: str, metadata: dict[str, str] | None = None,
             content_type: str = "binary/octet-stream", source_bucket: str | None = None,
             stored: dict[str, str] | None = None) -> str:
        """Server-side copy; with ``metadata`` the copy's metadata is replaced (content type and
        ``stored`` headers with it: S3's REPLACE keeps none of them), else kept."""
        headers = {"x-amz-copy-source": "/" + quote(source_bucket or bucket, safe="") + "/" + quote(source_key)}
        if metadata is not None:
            headers["x-amz-metadata-directive"] = "REPLACE"
            headers["content-type"] = content_type
            headers.update(stored or {})
            headers.update(_meta_headers(metadata))
        root = ET.fromstring(self.request("COPY", "PUT", bucket, key, headers=headers).data)
        return _etag_of(root)

    def delete(self, bucket: str, key: str, if_match: str | None = None) -> None:
        """``if_match``: only while the object is that version (ETag); else PreconditionFailed."""
        headers = {"if-match": f'"{if_match}"'} if if_match else None
        self.request("DELETE", "DELETE", bucket, key, headers=headers)

    # Multipart ----------------------------------------------------------------

    def create_multipart(self, bucket: str, key: str, metadata: dict[str, str] | None = None,
                         content_type: str = "binary/octet-stream", stored: dict[str, str] | None = None) -> str:
        headers = {"content-type": content_type, **(stored or {}), **_meta_headers(metadata)}
        root = ET.fromstring(self.request("MPU", "POST", bucket, key, query={"uploads": ""}, headers=headers).data)
        for node in root:
            if _local(node.tag) == "UploadId":
                return node.text or ""
        raise StoreError(errno.EIO, f"CreateMultipartUpload for {bucket}/{key} returned no UploadId")

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        response = self.request("PART", "PUT", bucket, key, query={"partNumber": number, "uploadId": upload_id},
                                headers={"content-length": str(len(data))}, body=data)
        self.count("bytes_out", len(data))
        return response.headers.get("etag", "").strip('"')

    def complete_multipart(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> Stored:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>\"{etag}\"</ETag></Part>"
                        for n, etag in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        response = self.request("MPU", "POST", bucket, key, query={"uploadId": upload_id}, body=body,
                                headers={"content-length": str(len(body)), "content-type": "application/xml"})
        root = ET.fromstring(response.data)
        if _local(root.tag) == "Error":  # S3 may report a failure inside a 200
            raise StoreError(errno.EIO, f"CompleteMultipartUpload for {bucket}/{key}: {root.findtext('Message')}")
        return _stored(_etag_of(root), response.headers)

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        self.request("MPU", "DELETE", bucket, key, query={"uploadId": upload_id}, ok=(200, 204, 404))

    def close(self) -> None:
        self._pool.close()
        if self._lean is not None:
            self._lean.close()


class BodyStream:
    """The body of a streamed response, read into buffers the caller owns.

    ``readinto`` goes below urllib3 to http.client, whose ``readinto`` receives straight into the
    caller's buffer (for the mount: libfuse's reply buffer). urllib3's ``read`` and ``readinto``
    make a new bytes object per call and copy it, and fresh 1 MiB allocations cost page faults:
    together about half the mount's CPU per sequential read (docs/fuse.md). Any other response
    type falls back to urllib3's own ``readinto``.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, what: str):
        self.response = response
        self.what = what
        raw = getattr(response, "_fp", None)
        encoded = response.headers.get("content-encoding", "identity") not in ("", "identity")
        self._raw = raw if isinstance(raw, http.client.HTTPResponse) and not encoded else None

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer``; fewer bytes only at the end of the body. Unreachable on a network error."""
        filled, size = 0, len(buffer)
        try:
            while filled < size:
                target = buffer[filled:] if filled else buffer
                n = self._raw.readinto(target) if self._raw is not None else self.response.readinto(target)
                if not n:
                    break
                filled += n
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            log.error("reading %s from the gateway failed: %s", self.what, exc)
            raise Unreachable(f"reading {self.what} from the gateway failed ({exc})") from None
        return filled

    def close(self) -> None:
        self.response.close()  # an unfinished body cannot go back to the pool
        self.response.release_conn()


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _user_metadata(node: ET.Element | None) -> tuple[dict[str, str] | None, str]:
    """(x-amz-meta-* names without the prefix, lower case -> value; content type) of a listing
    entry's <UserMetadata>, as _stat_from_headers gives them from a HEAD; (None, "") without one.
    Other elements (MinIO adds X-Amz-Server-Side-Encryption and the like) are not user metadata."""
    if node is None:
        return None, ""
    metadata, content_type = {}, ""
    for child in node:
        name = _local(child.tag).lower()
        if name.startswith(META_PREFIX):
            metadata[name[len(META_PREFIX):]] = child.text or ""
        elif name == "content-type":
            content_type = child.text or ""
    return metadata, content_type


def _parse_iso(text: str) -> float:
    if not text:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _if_match(etag: str | None) -> dict[str, str]:
    return {"if-match": f'"{etag}"'} if etag else {}


def _errno_for(status: int) -> int:
    if status == 404:
        return errno.ENOENT
    if status in (401, 403):
        return errno.EACCES
    if status == 409:
        return errno.EEXIST
    if status in (400, 411, 416):
        return errno.EINVAL
    return errno.EIO


def _total_size(headers, body_length: int) -> int:
    content_range = headers.get("content-range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return body_length


def _stat_from_headers(key: str, headers, size: int) -> ObjectStat:
    metadata = {name[len(META_PREFIX):]: value for name, value in headers.items()
                if name.lower().startswith(META_PREFIX)}
    metadata = {name.lower(): value for name, value in metadata.items()}
    modified = headers.get("last-modified")
    stamp = _http_date(modified) if modified else 0.0
    stored = {name: headers[name] for name in STORED_HEADERS if headers.get(name) is not None}
    return ObjectStat(key, size, headers.get("etag", "").strip('"'), stamp, metadata,
                      headers.get("content-type", ""), stored)


_MONTHS = {name: n for n, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def _http_date(text: str) -> float:
    """An HTTP date as seconds: the IMF-fixdate every S3 server sends ("Sun, 06 Nov 1994 08:49:37
    GMT") parsed directly (a seventh of email.utils' time, which a statahead pays per file), the
    obsolete forms through email.utils; 0.0 when unreadable."""
    parts = text.split()
    if len(parts) == 6 and parts[5] == "GMT" and parts[2] in _MONTHS and len(parts[4]) == 8:
        try:
            hour, minute, second = parts[4].split(":")
            return float(calendar.timegm((int(parts[3]), _MONTHS[parts[2]], int(parts[1]),
                                          int(hour), int(minute), int(second))))
        except ValueError:
            pass
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _meta_headers(metadata: dict[str, str] | None) -> dict[str, str]:
    return {META_PREFIX + name: value for name, value in (metadata or {}).items()}
