"""Decoding ``Content-Encoding: aws-chunked`` request bodies (SigV4 streaming uploads).

Wire format::

    hex-size[;chunk-signature=SIG]\\r\\n <size bytes> \\r\\n      (repeated)
    0[;chunk-signature=SIG]\\r\\n
    [name:value\\r\\n ...]                                     (trailers, e.g. x-amz-checksum-crc32)
    [x-amz-trailer-signature:SIG\\r\\n]
    \\r\\n

With STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER) every chunk carries a signature
chained from the request's seed signature, so chunks can be neither changed nor
reordered nor dropped; the trailer signature chains from the last chunk's.
With STREAMING-UNSIGNED-PAYLOAD-TRAILER nothing is signed (a trailing checksum
protects the bytes).

Data is yielded as it arrives, before the signature of its chunk can be checked
(a chunk may be gigabytes): like every other body check, a failure raises out of
the iterator and the consumer must then discard what it wrote. Only the
iterator ending normally means the whole body was verified.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterable, AsyncIterator

from ... import errors
from .sigv4 import EMPTY_SHA256, STREAMING_SIGNED, AuthResult

MAX_LINE = 4096  # a chunk header or trailer line longer than this is not aws-chunked
MAX_TRAILERS = 64
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _malformed(detail: str) -> errors.GatewayError:
    return errors.InvalidRequest(f"Malformed aws-chunked body: {detail}.")


def _truncated() -> errors.GatewayError:
    return errors.IncompleteBody("The aws-chunked body ended before its final chunk.")


class _Input:
    """A byte buffer over the socket chunks, refilled on demand; holds at most one input chunk
    plus one unfinished line."""

    def __init__(self, chunks: AsyncIterable[bytes]):
        self._chunks = chunks.__aiter__()
        self.buffer = bytearray()  # deleting from the front of a bytearray is cheap in CPython
        self.ended = False

    async def _next(self) -> bytes | None:
        if self.ended:
            return None
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return None

    async def fill(self) -> bool:
        """Append the next input chunk; False at the end of the input."""
        piece = await self._next()
        if piece is None:
            return False
        self.buffer += piece
        return True

    async def line(self) -> bytes | None:
        """The next line without its '\\n' (a '\\r' before it is kept for the caller to judge);
        None if the input ends cleanly where a line would start."""
        searched = 0
        while True:
            end = self.buffer.find(b"\n", searched, MAX_LINE + 1)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > MAX_LINE:
                raise _malformed(f"a line is longer than {MAX_LINE} bytes")
            searched = len(self.buffer)
            if not await self.fill():
                if self.buffer:
                    raise _truncated()
                return None

    async def data(self, size: int) -> AsyncIterator[bytes]:
        while size:
            if self.buffer:
                piece = bytes(self.buffer[:size])
                del self.buffer[: len(piece)]
            else:
                piece = await self._next()
                if piece is None:
                    raise _truncated()
                if len(piece) > size:  # the rest belongs to the next chunk header
                    self.buffer += memoryview(piece)[size:]
                    piece = piece[:size]
                # else: the common case for big chunks, passed on without a copy
            size -= len(piece)
            if piece:
                yield piece

    async def exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self.fill():
                raise _truncated()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def at_end(self) -> bool:
        while not self.buffer:
            if not await self.fill():
                return True
        return False


def _chunk_header(line: bytes, signed: bool) -> tuple[int, str]:
    """``hex-size[;chunk-signature=SIG]`` -> (size, signature or "")."""
    if not line.endswith(b"\r"):
        raise _malformed("a chunk header does not end with CRLF")
    size_field, _, extensions = line[:-1].partition(b";")
    if not size_field or len(size_field) > 16 or not _HEX_DIGITS.issuperset(size_field):
        raise _malformed(f"bad chunk size {size_field[:32]!r}")
    signature = ""
    if extensions:
        for extension in extensions.split(b";"):
            name, _, value = extension.partition(b"=")
            if name.strip() == b"chunk-signature":
                signature = value.strip().decode("latin-1")
    if signed and not signature:
        raise errors.SignatureDoesNotMatch("A chunk of a signed aws-chunked body has no chunk-signature.")
    return int(size_field, 16), signature


async def decode_aws_chunked(
    chunks: AsyncIterable[bytes], auth: AuthResult, trailers: dict[str, str]
) -> AsyncIterator[bytes]:
    """Yield the decoded body of an aws-chunked request, checking chunk and trailer signatures
    when ``auth.payload`` says the body is signed. Trailing headers (lower-case name -> value,
    without x-amz-trailer-signature) are stored in ``trailers`` before the iterator ends."""
    signed = auth.payload.startswith(STREAMING_SIGNED)
    signed_trailer = signed and auth.payload.endswith("-TRAILER")
    # Everything in a chunk's string to sign but its data hash is fixed for the request.
    chunk_prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{auth.amz_date}\n{auth.scope}\n"
    previous = auth.signature
    source = _Input(chunks)

    while True:
        line = await source.line()
        if line is None:
            raise _truncated()
        size, signature = _chunk_header(line, signed)
        digest = hashlib.sha256() if signed else None
        async for piece in source.data(size):
            if digest is not None:
                digest.update(piece)
            yield piece
        if digest is not None:
            to_sign = f"{chunk_prefix}{previous}\n{EMPTY_SHA256}\n{digest.hexdigest()}"
            _check(auth.signing_key, to_sign, signature, "chunk")
            previous = signature
        if size == 0:
            break
        if await source.exact(2) != b"\r\n":
            raise _malformed("chunk data is not followed by CRLF")

    found = await _read_trailers(source, signed, signed_trailer)
    if signed_trailer:
        signature = found.pop("x-amz-trailer-signature", "")
        if not signature:
            raise errors.SignatureDoesNotMatch("The signed aws-chunked body has no x-amz-trailer-signature.")
        # Canonical trailers, like canonical headers: "name:value\n", sorted by name.
        canonical = "".join(f"{name}:{found[name]}\n" for name in sorted(found))
        to_sign = (f"AWS4-HMAC-SHA256-TRAILER\n{auth.amz_date}\n{auth.scope}\n{previous}\n"
                   f"{hashlib.sha256(canonical.encode('latin-1')).hexdigest()}")
        _check(auth.signing_key, to_sign, signature, "trailer")
    else:
        found.pop("x-amz-trailer-signature", None)
    if not await source.at_end():
        raise _malformed("there are bytes after the end of the body")
    trailers.update(found)


async def _read_trailers(source: _Input, signed: bool, signed_trailer: bool) -> dict[str, str]:
    """The lines after the final chunk, up to the empty line (or the end of the input, which some
    SDKs send instead of the last CRLF)."""
    found: dict[str, str] = {}
    while True:
        line = await source.line()
        if line is None:
            break
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            # Tolerate a blank line between the checksum and its signature, as some clients send.
            if signed_trailer and found and "x-amz-trailer-signature" not in found:
                continue
            break
        if signed and not signed_trailer:
            raise _malformed("trailing headers after the final chunk of a body signed without trailer")
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise _malformed(f"bad trailer line {line[:64]!r}")
        if len(found) >= MAX_TRAILERS:
            raise _malformed("too many trailing headers")
        found[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return found


def _check(key: bytes, to_sign: str, signature: str, what: str) -> None:
    computed = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(computed, signature.encode("latin-1", "replace")):
        raise errors.SignatureDoesNotMatch(
            f"The {what} signature of the aws-chunked body does not match what we calculated.")
