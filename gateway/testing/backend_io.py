"""Small helpers for driving a Backend directly in tests (no HTTP in between)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator

from gateway.backend import Backend, ByteRange, ObjectInfo, ObjectMeta
from gateway.payload import Payload


class StreamBroke(Exception):
    """Raised by :func:`breaking_stream`: the client went away in the middle of a body."""


async def as_async(chunks) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def breaking_stream(data: bytes, break_after: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """Yield ``data`` in chunks, then raise StreamBroke once ``break_after`` bytes went out."""
    sent = 0
    for start in range(0, len(data), size):
        if sent >= break_after:
            break
        chunk = data[start:start + size]
        sent += len(chunk)
        yield chunk
    raise StreamBroke(f"stream broken after {sent} bytes")


def pseudo_random_chunks(total: int, chunk_size: int, seed: int = 0):
    """Deterministic incompressible bytes, ``chunk_size`` at a time, without holding ``total`` in memory."""
    rng = random.Random(seed)
    left = total
    while left > 0:
        n = min(chunk_size, left)
        left -= n
        yield rng.randbytes(n)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def put_bytes(backend: Backend, bucket: str, key: str, data: bytes, meta: ObjectMeta | None = None,
                    **payload_options) -> ObjectInfo:
    """Store ``data`` in 64 KiB chunks (so backends that buffer small bodies see several chunks)."""
    payload = Payload(chunked(data), expected_size=len(data), **payload_options)
    return await backend.put(bucket, key, payload, meta or ObjectMeta())


async def get_bytes(backend: Backend, bucket: str, key: str, byte_range: ByteRange | None = None) -> bytes:
    reader = await backend.get(bucket, key, byte_range)
    async with reader:
        data = await reader.read_all()
    assert len(data) == reader.length, f"reader said {reader.length} bytes but gave {len(data)} for {key!r}"
    return data


async def list_all(backend: Backend, bucket: str, prefix: str = "", delimiter: str = "", start_after: str = "",
                   max_keys: int = 1000) -> tuple[list[str], list[str]]:
    """Every key and common prefix, following pages; returns (keys, common prefixes) in the order returned."""
    keys: list[str] = []
    prefixes: list[str] = []
    marker = start_after
    for _ in range(100_000):
        page = await backend.list(bucket, prefix, delimiter, marker, max_keys)
        assert len(page.objects) + len(page.common_prefixes) <= max_keys, "page holds more than max_keys entries"
        keys += [o.key for o in page.objects]
        prefixes += page.common_prefixes
        if not page.is_truncated:
            return keys, prefixes
        assert page.next_marker, "a truncated page must say where the next one starts (next_marker)"
        assert page.next_marker.encode() > marker.encode(), "next_marker did not move forward"
        marker = page.next_marker
    raise AssertionError("listing did not end after 100000 pages")
