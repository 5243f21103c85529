"""Turn a request body into a verified Payload, whatever way the client sent it.

Handles plain bodies, signed payload hashes, Content-MD5, flexible checksum
headers, and aws-chunked bodies with per-chunk signatures or checksum
trailers (what boto3 >= 1.36 sends by default).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from ... import errors
from ...checksums import ALGORITHMS
from ...payload import Payload
from .chunked import decode_aws_chunked
from .request import S3Request, parse_decimal

UNSIGNED = "UNSIGNED-PAYLOAD"
_CHECKSUM_HEADERS = {f"x-amz-checksum-{alg.lower()}": alg for alg in ALGORITHMS}
# x-amz-checksum-* headers that carry no checksum value.
_CHECKSUM_SETTINGS = frozenset({"x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode"})


def _refuse_unknown_checksums(req: S3Request) -> None:
    """A checksum of an algorithm S3 has and the gateway does not compute (SHA512, MD5, XXHASH*):
    ignored, the object would be stored as if verified although its bytes were never checked."""
    for name in req.headers:
        if (name.startswith("x-amz-checksum-") and name not in _CHECKSUM_HEADERS
                and name not in _CHECKSUM_SETTINGS):
            raise errors.InvalidRequest(
                f"The {name} header names a checksum algorithm that is not supported; use one of "
                f"{', '.join(ALGORITHMS)}.")


def requested_checksums(req: S3Request) -> tuple[dict[str, str], tuple[str, ...]]:
    """(checksums declared in headers, algorithms to compute)."""
    _refuse_unknown_checksums(req)
    declared = {alg: req.headers[name] for name, alg in _CHECKSUM_HEADERS.items() if name in req.headers}
    algorithms = list(declared)
    wanted = req.headers.get("x-amz-sdk-checksum-algorithm") or req.headers.get("x-amz-checksum-algorithm")
    if wanted:
        if wanted.upper() not in ALGORITHMS:
            raise errors.InvalidRequest(
                f"Checksum algorithm {wanted!r} is not supported; use one of {', '.join(ALGORITHMS)}."
            )
        algorithms.append(wanted.upper())
    return declared, tuple(dict.fromkeys(algorithms))


async def _hash_checked(chunks: AsyncIterator[bytes], sha256_hex: str) -> AsyncIterator[bytes]:
    """``chunks``, raising XAmzContentSHA256Mismatch at their end unless their SHA-256 is ``sha256_hex``."""
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != sha256_hex.lower():
        raise errors.XAmzContentSHA256Mismatch()


def payload_from_request(req: S3Request, extra_algorithms: tuple[str, ...] = ()) -> Payload:
    headers = req.headers
    declared, algorithms = requested_checksums(req)
    algorithms = tuple(dict.fromkeys((*algorithms, *extra_algorithms)))
    content_sha256 = headers.get("x-amz-content-sha256", UNSIGNED)
    encoding = headers.get("content-encoding", "")
    chunked = content_sha256.startswith("STREAMING-") or "aws-chunked" in encoding
    if chunked:
        expected_size = parse_decimal(headers.get("x-amz-decoded-content-length", ""))
        if expected_size is None:
            raise errors.MissingContentLength(
                "aws-chunked uploads must send x-amz-decoded-content-length."
            )
        trailer_names = [t.strip().lower() for t in headers.get("x-amz-trailer", "").split(",") if t.strip()]
        for name in trailer_names:
            if name not in _CHECKSUM_HEADERS:
                raise errors.InvalidRequest(f"Unsupported trailer {name!r}.")
            algorithms = tuple(dict.fromkeys((*algorithms, _CHECKSUM_HEADERS[name])))
        trailers: dict[str, str] = {}
        expected = dict(declared)
        raw = req.body_chunks()
        if len(content_sha256) == 64:
            # A hash was signed, not STREAMING-*: it is the hash of the body as sent (the framing
            # too). Unchecked, any aws-chunked body would be stored under that signature.
            raw = _hash_checked(raw, content_sha256)

        async def decoded():
            async for chunk in decode_aws_chunked(raw, req.auth, trailers):
                yield chunk
            unannounced = sorted(set(trailers) - set(trailer_names))
            if unannounced:
                # A checksum the client sent but did not announce could not be computed, and
                # storing the object without checking it would pass it off as verified.
                raise errors.InvalidRequest(f"The body carries the trailer {', '.join(unannounced)}, which "
                                            "the x-amz-trailer header does not announce.")
            for name in trailer_names:
                if name not in trailers:
                    raise errors.IncompleteBody(f"The body ended without the announced trailer {name}.")
                expected[_CHECKSUM_HEADERS[name]] = trailers[name]

        return Payload(decoded(), expected_size=expected_size, content_md5=headers.get("content-md5"),
                       checksum_algorithms=algorithms, expected_checksums=expected)
    length = req.content_length()
    if length is None and headers.get("transfer-encoding", "").lower() != "chunked":
        raise errors.MissingContentLength()
    sha256_hex = content_sha256 if len(content_sha256) == 64 else None
    if sha256_hex is None and content_sha256 != UNSIGNED:
        raise errors.InvalidArgument("x-amz-content-sha256 must be a SHA-256 hex digest or UNSIGNED-PAYLOAD.",
                                     ArgumentName="x-amz-content-sha256")
    return Payload(req.body_chunks(), expected_size=length, content_md5=headers.get("content-md5"),
                   checksum_algorithms=algorithms, expected_checksums=declared, sha256_hex=sha256_hex)
