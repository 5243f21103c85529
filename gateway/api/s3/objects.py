"""Object handlers: GET, HEAD, PUT, DELETE and CopyObject."""

from __future__ import annotations

from urllib.parse import unquote

from ... import errors
from ...backend import DEFAULT_CONTENT_TYPE, STORED_HEADERS, Backend, ObjectInfo, ObjectMeta, ObjectReader
from ...checksums import ALGORITHMS
from ...cluster.forward import Forward
from .body import payload_from_request
from .request import (
    CONTROL_CHARACTER,
    S3Request,
    check_bucket_name,
    check_key,
    http_date,
    iso8601,
    parse_http_date,
    parse_range,
    whole_seconds,
)
from .responses import object_headers, send_response, send_xml
from .xml import document, element


def check_preconditions(req: S3Request, info: ObjectInfo, prefix: str = "if-") -> None:
    """Evaluate If-Match & co. the way S3 does; raise PreconditionFailed or NotModified."""
    headers = req.headers
    etag = info.etag
    if_match = headers.get(prefix + "match")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise errors.PreconditionFailed(Condition="If-Match")
    else:
        since = headers.get(prefix + "unmodified-since")
        stamp = parse_http_date(since) if since else None
        if stamp is not None and whole_seconds(info.last_modified) > stamp:
            raise errors.PreconditionFailed(Condition="If-Unmodified-Since")
    if_none = headers.get(prefix + "none-match")
    copy = prefix != "if-"
    failure = errors.PreconditionFailed if copy else errors.NotModified
    if if_none is not None:
        if _etag_matches(if_none, etag, weak=True):
            raise failure(Condition="If-None-Match") if copy else _not_modified(info)
    else:
        since = headers.get(prefix + "modified-since")
        stamp = parse_http_date(since) if since else None
        if stamp is not None and whole_seconds(info.last_modified) <= stamp:
            raise failure(Condition="If-Modified-Since") if copy else _not_modified(info)


def _if_range_holds(value: str, info: ObjectInfo) -> bool:
    """If-Range: an ETag (strong comparison: a weak one never holds) or the exact Last-Modified date."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value.startswith('"') and value.strip('"') == info.etag
    stamp = parse_http_date(value)
    return stamp is not None and whole_seconds(info.last_modified) == stamp


def _not_modified(info: ObjectInfo) -> errors.NotModified:
    # A 304 carries the validators a cache needs to refresh its copy (RFC 7232 section 4.1), as S3 does.
    exc = errors.NotModified()
    exc.headers.update({"ETag": f'"{info.etag}"', "Last-Modified": http_date(whole_seconds(info.last_modified))})
    return exc


def _etag_matches(header: str, etag: str, weak: bool = False) -> bool:
    """Whether ``header`` (If-Match, If-None-Match: a list of ETags, or *) names ``etag``. If-None-Match
    compares weakly (RFC 9110 13.1.2): a cache's W/"etag" is this version too; If-Match never matches one."""
    tags = (tag.strip() for tag in header.split(","))
    if weak:
        tags = (tag[2:] if tag.startswith("W/") else tag for tag in tags)
    return any(tag.strip('"') in ("*", etag) for tag in tags)


async def get_object(app, req: S3Request, send, head: bool = False) -> None:
    status, headers, reader = await read_object(app, req, head)
    await send_object(send, status, headers, reader)


async def read_object(app, req: S3Request, head: bool = False, backend: Backend | None = None,
                      forward: bool = False) -> tuple[int, list, ObjectReader | None]:
    """Everything a GET or HEAD does before its response starts: (status, headers with
    content-length, the open reader; None for HEAD). Errors (NoSuchKey, NotModified, ...) are raised
    here, before anything is sent; the caller sends the answer with send_object, which closes the
    reader. The S3 app's fast path (app.py) calls this directly; get_object is the same for the
    general dispatch. ``backend``: the one to read from instead of the bucket's (a peer's read of
    this node's own storage); ``forward``: a cluster node may answer a Forward (cluster/forward.py),
    which is returned as it is."""
    if backend is None:
        backend = app.service.backend_for(req.bucket)
    headers_in = req.headers
    byte_range = parse_range(headers_in["range"]) if "range" in headers_in else None
    if head:
        info = await (backend.head(req.bucket, req.key, forward=True) if forward else
                      backend.head(req.bucket, req.key))
        if info.__class__ is Forward:
            return info
        reader = None
    else:
        try:
            reader = await (backend.get(req.bucket, req.key, byte_range, forward=True) if forward else
                            backend.get(req.bucket, req.key, byte_range))
        except errors.InvalidRange as unsatisfiable:
            reader = await _whole_or_unsatisfiable(backend, req, unsatisfiable)
            byte_range = None
        if reader.__class__ is Forward:
            return reader
        info = reader.info
    if byte_range is not None and "if-range" in headers_in and not _if_range_holds(headers_in["if-range"], info):
        # The client holds other bytes of another version (RFC 9110 13.1.5): the whole object, 200.
        # Without it a resumed download spliced two versions.
        byte_range = None
        if reader is not None:
            reader.close()
            reader = await backend.get(req.bucket, req.key)
            info = reader.info
    try:
        check_preconditions(req, info)
        with_checksums = ("x-amz-checksum-mode" in headers_in and byte_range is None
                          and headers_in["x-amz-checksum-mode"].upper() == "ENABLED")
        headers = object_headers(info, req.request_id, with_checksums)
        if not _OVERRIDE_PARAMS.isdisjoint(req.query):
            _override_response_headers(req, headers)
        status = 200
        if reader is not None:
            start, stop = reader.start, reader.stop
        else:
            start, stop = byte_range.resolve(info.size) if byte_range else (0, info.size)
        if byte_range is not None:
            status = 206
            headers.append((b"content-range", f"bytes {start}-{stop - 1}/{info.size}".encode()))
        length = len(reader.data) if reader is not None and reader.data is not None else stop - start
        headers.append((b"content-length", str(length).encode()))
    except BaseException:
        if reader is not None:
            reader.close()
        raise
    return status, headers, reader


async def _whole_or_unsatisfiable(backend: Backend, req: S3Request,
                                  unsatisfiable: errors.InvalidRange) -> ObjectReader:
    """A Range past the object's end: its conditions come first (RFC 9110 13.2.2), as they do for
    HEAD. An If-Range of another version asks for the whole object (its reader is returned); a
    failed If-Match or If-None-Match is the 412 or 304; only then is it 416. Without this a resumed
    download of an object replaced by a shorter one was told 416, "complete", and kept stale bytes."""
    info = await backend.head(req.bucket, req.key)
    if "if-range" in req.headers and not _if_range_holds(req.headers["if-range"], info):
        return await backend.get(req.bucket, req.key)
    check_preconditions(req, info)
    raise unsatisfiable


async def send_object(send, status: int, headers: list, reader: ObjectReader | None) -> None:
    """Send what read_object prepared (headers already carry content-length); close the reader."""
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if reader is None:  # HEAD
            await send({"type": "http.response.body", "body": b""})
        elif reader.data is not None:
            await send({"type": "http.response.body", "body": reader.data})
        else:
            async for chunk in reader.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
    finally:
        if reader is not None:
            reader.close()


_OVERRIDES = {
    "response-content-type": b"content-type", "response-content-language": b"content-language",
    "response-expires": b"expires", "response-cache-control": b"cache-control",
    "response-content-disposition": b"content-disposition", "response-content-encoding": b"content-encoding",
}


_OVERRIDE_PARAMS = frozenset(_OVERRIDES)


def _override_response_headers(req: S3Request, headers: list) -> None:
    for param, name in _OVERRIDES.items():
        if param in req.query:
            value = req.query[param]
            if CONTROL_CHARACTER.search(value):  # a CR or LF would end the header: never sent
                raise errors.InvalidArgument(f"The {param} parameter holds a control character.",
                                             ArgumentName=param)
            headers[:] = [h for h in headers if h[0] != name]
            headers.append((name, value.encode("latin-1", "replace")))


REDIRECT = "x-amz-website-redirect-location"


def _check_redirect(value: str) -> str:
    if not value.startswith(("/", "http://", "https://")):
        raise errors.InvalidRedirectLocation()
    return value


def meta_from_headers(req: S3Request) -> ObjectMeta:
    metadata = {}
    stored = {}
    for name, value in req.headers.items():
        if name.startswith("x-amz-meta-"):
            # Whitespace around a field value is not part of it (RFC 9110 5.5); the parser drops only the leading.
            metadata[name[11:]] = value.strip(" \t")
        elif name in STORED_HEADERS:
            if name == "content-encoding":
                # aws-chunked is transport framing, not a property of the object.
                value = ",".join(v for v in value.split(",") if v.strip() and v.strip() != "aws-chunked")
                if not value:
                    continue
            elif name == REDIRECT:
                _check_redirect(value)
            stored[name] = value
    if sum(len(k) + len(v) for k, v in metadata.items()) > 2048:
        raise errors.MetadataTooLarge()
    return ObjectMeta(req.headers.get("content-type") or DEFAULT_CONTENT_TYPE, metadata, stored)


_UNSUPPORTED_WRITE_HEADERS = ("x-amz-server-side-encryption", "x-amz-tagging", "x-amz-object-lock-",
                              "x-amz-write-offset-bytes")


def check_write_headers(req: S3Request) -> None:
    """Refuse what a write asks for and this gateway cannot do, rather than store the object without it.

    Server-side encryption (SSE-S3, SSE-KMS, SSE-C), tags and retention would otherwise be silently
    missing: a client that sent its own key would believe the object is encrypted with it. An append
    (x-amz-write-offset-bytes, S3 Express) would replace the object with the appended bytes alone.
    """
    directive = req.headers.get("x-amz-tagging-directive")
    if directive is not None and directive.upper() not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("x-amz-tagging-directive must be COPY or REPLACE.",
                                     ArgumentName="x-amz-tagging-directive", ArgumentValue=directive)
    for name in req.headers:
        # A CopyObject's x-amz-tagging-directive (COPY: the source's tags; REPLACE: x-amz-tagging's) asks
        # for nothing by itself: objects have no tags, and x-amz-tagging is refused.
        if name.startswith(_UNSUPPORTED_WRITE_HEADERS) and name != "x-amz-tagging-directive":
            raise errors.NotImplementedError_(f"The {name} header asks for something not implemented here "
                                              "(server-side encryption, tagging, object lock or appends).")
    _check_if_none_match(req)


def _check_if_none_match(req: S3Request) -> None:
    if_none = req.headers.get("if-none-match")
    if if_none is not None and if_none.strip() != "*":
        raise errors.NotImplementedError_("A conditional write supports only If-None-Match: *.")


def is_conditional(req: S3Request) -> bool:
    return "if-none-match" in req.headers or "if-match" in req.headers


async def check_write_conditions(backend, req: S3Request) -> None:
    """If-None-Match: * and If-Match of a write (PUT, CompleteMultipartUpload), run while
    ObjectService.conditional_write holds the key: 412, or 404 for If-Match on a missing key (as S3)."""
    _check_if_none_match(req)
    try:
        current = await backend.head(req.bucket, req.key)
    except errors.NoSuchKey:
        current = None
    if "if-none-match" in req.headers and current is not None:
        raise errors.PreconditionFailed(Condition="If-None-Match")
    if "if-match" in req.headers:
        if current is None:
            raise errors.NoSuchKey(Key=req.key)
        if not _etag_matches(req.headers["if-match"], current.etag):
            raise errors.PreconditionFailed(Condition="If-Match")


def stored_at(info: ObjectInfo) -> tuple[bytes, bytes]:
    """Last-Modified on a write's answer (S3 sends none; clients ignore it): the time GET, HEAD and
    listings will give the object, which the FUSE mount shows as the mtime of a file it just wrote
    (its own clock, or the write's end rounded, would change under ``stat`` once the cache expires)."""
    return b"last-modified", http_date(whole_seconds(info.last_modified)).encode()


async def put_object(app, req: S3Request, send) -> None:
    check_key(req.key)
    check_write_headers(req)
    if "x-amz-copy-source" in req.headers:
        return await copy_object(app, req, send)
    backend = app.service.backend_for(req.bucket)
    meta = meta_from_headers(req)
    if is_conditional(req):
        async with app.service.conditional_write(req.bucket, req.key) as confirm:
            await check_write_conditions(backend, req)
            payload = payload_from_request(req)
            payload.check_at_end(confirm)  # a cluster lock lost meanwhile refuses the write before it commits
            info = await backend.put(req.bucket, req.key, payload, meta)
    else:
        info = await backend.put(req.bucket, req.key, payload_from_request(req), meta)
    app.service.object_written(req.bucket, req.key, info)
    headers = [(b"etag", f'"{info.etag}"'.encode()), (b"x-amz-request-id", req.request_id.encode()),
               stored_at(info)]
    for algorithm, value in info.checksums.items():
        headers.append((b"x-amz-checksum-" + algorithm.lower().encode(), value.encode()))
    await send_response(send, 200, headers)


# Conditions S3 takes on a delete only in directory buckets: refused, never ignored (an ignored
# condition deletes what the client meant to keep).
_UNSUPPORTED_DELETE_CONDITIONS = ("x-amz-if-match-last-modified-time", "x-amz-if-match-size")


async def delete_object(app, req: S3Request, send) -> None:
    for name in _UNSUPPORTED_DELETE_CONDITIONS:
        if name in req.headers:
            raise errors.NotImplementedError_(f"The {name} condition is not implemented; If-Match is.")
    await delete_key(app, req.bucket, req.key, req.headers.get("if-match"))
    await send_response(send, 204, [(b"x-amz-request-id", req.request_id.encode())])


async def delete_key(app, bucket: str, key: str, if_match: str | None) -> None:
    """Delete one key (DeleteObject, and each key of DeleteObjects). With If-Match (an ETag, or "*"),
    as on S3 since 2025: 412 unless the current object matches, 404 NoSuchKey if there is none; the
    check and the delete hold the key as a conditional PUT does (ObjectService.conditional_write)."""
    backend = app.service.backend_for(bucket)
    if if_match is None:
        await backend.delete(bucket, key)
    else:
        async with app.service.conditional_write(bucket, key) as confirm:
            try:
                current = await backend.head(bucket, key)
            except errors.NoSuchKey:
                raise errors.NoSuchKey(Key=key) from None
            if not _etag_matches(if_match, current.etag):
                raise errors.PreconditionFailed(Condition="If-Match")
            await confirm()
            await backend.delete(bucket, key)
    app.service.object_deleted(bucket, key)


def parse_copy_source(value: str) -> tuple[str, str]:
    try:
        source = unquote(value.split("?versionId=", 1)[0], errors="strict").lstrip("/")
    except UnicodeDecodeError:
        # Decoded with U+FFFD for each bad byte, it would name another object than the one meant.
        raise errors.InvalidArgument("x-amz-copy-source holds percent-encoded bytes that are not UTF-8.",
                                     ArgumentName="x-amz-copy-source") from None
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise errors.InvalidArgument("x-amz-copy-source must be bucket/key.", ArgumentName="x-amz-copy-source")
    check_bucket_name(bucket)
    check_key(key)
    return bucket, key


def _copied_meta(req: S3Request, source: ObjectMeta) -> ObjectMeta | None:
    """The target's metadata under COPY: the source's, with the website redirect the request names
    (checked as on a PUT); None when it names none (the source's as it is, its redirect too)."""
    redirect = req.headers.get(REDIRECT)
    if redirect is None:
        return None
    return ObjectMeta(source.content_type, source.metadata, {**source.headers, REDIRECT: _check_redirect(redirect)})


async def copy_object(app, req: S3Request, send) -> None:
    src_bucket, src_key = parse_copy_source(req.headers["x-amz-copy-source"])
    directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("x-amz-metadata-directive must be COPY or REPLACE.",
                                     ArgumentName="x-amz-metadata-directive")
    # S3 allows a copy onto itself that changes something: the metadata (REPLACE), the storage class
    # (`aws s3 cp --storage-class`, `rclone settier`; accepted and ignored here) or the redirect.
    changes = directive == "REPLACE" or any(
        name in req.headers for name in ("x-amz-storage-class", REDIRECT))
    if (src_bucket, src_key) == (req.bucket, req.key) and not changes:
        raise errors.InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing "
            "the object's metadata, storage class, website redirect location or encryption attributes."
        )
    algorithm = req.headers.get("x-amz-checksum-algorithm")
    if algorithm is not None:
        algorithm = algorithm.upper()
        if algorithm not in ALGORITHMS:
            raise errors.InvalidRequest(f"Checksum algorithm {algorithm!r} is not supported; use one of "
                                        f"{', '.join(ALGORITHMS)}.")
    source = await app.service.backend_for(src_bucket).head(src_bucket, src_key)
    check_preconditions(req, source, prefix="x-amz-copy-source-if-")
    meta = meta_from_headers(req) if directive == "REPLACE" else _copied_meta(req, source.meta)
    if is_conditional(req):  # If-None-Match: * / If-Match on the target, as on a PUT (S3 takes both here too)
        async with app.service.conditional_write(req.bucket, req.key) as confirm:
            await check_write_conditions(app.service.backend_for(req.bucket), req)
            await confirm()  # a backend's copy cannot be stopped halfway: the lock is confirmed before
            info = await app.service.copy(src_bucket, src_key, req.bucket, req.key, meta, algorithm)
    else:
        info = await app.service.copy(src_bucket, src_key, req.bucket, req.key, meta, algorithm)
    body = document("CopyObjectResult", element("LastModified", iso8601(info.last_modified)),
                    element("ETag", f'"{info.etag}"'),
                    *(element(f"Checksum{alg}", value) for alg, value in info.checksums.items()))
    await send_xml(send, 200, body, req.request_id)
