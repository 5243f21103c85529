"""Flexible checksums (x-amz-checksum-*): one small hasher per algorithm.

CRC32 comes from zlib, SHA1/SHA256 from hashlib, CRC32C and CRC64NVME from
awscrt (AWS's own C runtime, which botocore itself uses for them).
"""

from __future__ import annotations

import base64
import hashlib
import zlib

from awscrt import checksums as _crt

ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")


class _Crc:
    def __init__(self, fn, width: int):
        self._fn = fn
        self._width = width
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def _zlib_crc32(data: bytes, previous: int) -> int:
    return zlib.crc32(data, previous)


def new_hasher(algorithm: str):
    """Return an object with update(bytes) and digest() for ``algorithm`` (upper case)."""
    if algorithm == "CRC32":
        return _Crc(_zlib_crc32, 4)
    if algorithm == "CRC32C":
        return _Crc(_crt.crc32c, 4)
    if algorithm == "CRC64NVME":
        return _Crc(_crt.crc64nvme, 8)
    if algorithm == "SHA1":
        return hashlib.sha1()
    if algorithm == "SHA256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The base64 checksum of ``data`` as S3 sends it in x-amz-checksum-<algorithm>."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return b64(hasher.digest())
