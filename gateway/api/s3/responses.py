"""Sending responses straight over ASGI: no response objects on the hot path."""

from __future__ import annotations

import re

from ... import errors
from ...backend import ObjectInfo
from .request import http_date, whole_seconds

XML = b"application/xml"


async def send_response(send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                        head: bool = False) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_xml(send, status: int, body: bytes, request_id: str, extra: list | None = None) -> None:
    headers = [(b"content-type", XML), (b"x-amz-request-id", request_id.encode())]
    if extra:
        headers.extend(extra)
    await send_response(send, status, headers, body)


def object_headers(info: ObjectInfo, request_id: str, with_checksums: bool) -> list[tuple[bytes, bytes]]:
    """The headers GET and HEAD return for an object (a new list: callers append to it)."""
    # The object's own headers are encoded once per ObjectInfo, not per request: the local backend
    # hands out the same ObjectInfo for as long as the object's header bytes stay the same
    # (plugins/readcache.py), so only the request id changes from one GET to the next.
    entry = _encoded.get(id(info))
    if entry is None or entry[0] is not info:
        entry = _encode_object_headers(info)
    _, leading, trailing, checksums, parts = entry
    headers = [*leading, (b"x-amz-request-id", request_id.encode()), *trailing]
    if with_checksums:
        headers.extend(checksums)
    if parts:
        headers.append(parts)
    return headers


# id(info) -> (info, encoded pieces). The entry holds the ObjectInfo itself, so its id cannot be
# reused for another object while the entry exists; ``entry[0] is info`` makes the match exact.
_encoded: dict[int, tuple] = {}
ENCODED_HEADERS_LIMIT = 16384  # like readcache.HEADER_CACHE_SIZE: one entry per cached object


# What HTTP cannot carry in a header (a CR or LF would split the response). Checked once per
# ObjectInfo here, so the HTTP front end need not check every response (gateway/api/protocol.py).
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def _check_sendable(headers) -> None:
    for name, value in headers:
        if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            raise errors.InternalError(f"The object's stored header {name.decode('latin-1')!r} holds a character "
                                       "an HTTP header cannot carry; rewrite the object's metadata.")


def _encode_object_headers(info: ObjectInfo) -> tuple:
    meta = info.meta
    leading = (
        (b"etag", f'"{info.etag}"'.encode()),
        (b"last-modified", http_date(whole_seconds(info.last_modified)).encode()),
        (b"content-type", meta.content_type.encode("latin-1", "replace")),
        (b"accept-ranges", b"bytes"),
    )
    trailing = [(name.encode(), value.encode("latin-1", "replace")) for name, value in meta.headers.items()]
    for name, value in meta.metadata.items():
        # Header values are kept as the bytes the client sent (latin-1 round trip).
        trailing.append((b"x-amz-meta-" + name.encode("latin-1"), value.encode("latin-1", "replace")))
    checksums = tuple((b"x-amz-checksum-" + algorithm.lower().encode(), value.encode())
                      for algorithm, value in info.checksums.items())
    parts = (b"x-amz-mp-parts-count", info.etag.rsplit("-", 1)[1].encode()) if "-" in info.etag else None
    _check_sendable([*leading, *trailing, *checksums])
    entry = (info, leading, tuple(trailing), checksums, parts)
    if len(_encoded) >= ENCODED_HEADERS_LIMIT:
        # Start over rather than evict one by one: backends that make a new ObjectInfo per request
        # (remote ones) would otherwise pay for an eviction on every GET.
        _encoded.clear()
    _encoded[id(info)] = entry
    return entry
