"""Sending responses straight over ASGI: no response objects on the hot path."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...backend import ObjectInfo
from .request import http_date

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


async def send_stream(send, status: int, headers: list[tuple[bytes, bytes]], length: int,
                      chunks: AsyncIterator[bytes]) -> None:
    headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def object_headers(info: ObjectInfo, request_id: str, with_checksums: bool) -> list[tuple[bytes, bytes]]:
    """The headers GET and HEAD return for an object."""
    meta = info.meta
    headers = [
        (b"etag", f'"{info.etag}"'.encode()),
        (b"last-modified", http_date(int(info.last_modified)).encode()),
        (b"content-type", meta.content_type.encode("latin-1", "replace")),
        (b"accept-ranges", b"bytes"),
        (b"x-amz-request-id", request_id.encode()),
    ]
    for name, value in meta.headers.items():
        headers.append((name.encode(), value.encode("latin-1", "replace")))
    for name, value in meta.metadata.items():
        # Header values are kept as the bytes the client sent (latin-1 round trip).
        headers.append((b"x-amz-meta-" + name.encode("latin-1"), value.encode("latin-1", "replace")))
    if with_checksums:
        for algorithm, value in info.checksums.items():
            headers.append((b"x-amz-checksum-" + algorithm.lower().encode(), value.encode()))
    if "-" in info.etag:
        headers.append((b"x-amz-mp-parts-count", info.etag.rsplit("-", 1)[1].encode()))
    return headers

