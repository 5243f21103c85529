"""Object bodies on their way in: an async stream that hashes and checks itself.

A backend writes ``async for chunk in payload`` to a temporary place and
commits only after the loop ends. The checks (length, Content-MD5, flexible
checksums) run when the stream is exhausted, *before* the backend commits, so
a body that does not match what the client declared raises and leaves
nothing stored.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping

from . import errors
from .checksums import b64, new_hasher


class Payload:
    """A verified, hashed stream of bytes.

    :param chunks: the raw body (already de-chunked when aws-chunked).
    :param expected_size: Content-Length (or x-amz-decoded-content-length), if known.
    :param content_md5: the Content-MD5 header (base64), if sent.
    :param checksum_algorithms: algorithms to compute (upper case).
    :param expected_checksums: algorithm -> base64 value the client declared. It may
        be filled while streaming (aws-chunked trailers), so it is read at the end.
    :param etag: use this ETag instead of the MD5 of the bytes (multipart objects).
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        *,
        expected_size: int | None = None,
        content_md5: str | None = None,
        checksum_algorithms: tuple[str, ...] = (),
        expected_checksums: Mapping[str, str] | None = None,
        etag: str | None = None,
        sha256_hex: str | None = None,
    ):
        self._chunks = chunks
        self._source: AsyncIterator[bytes] | None = None  # the one iterator of ``chunks`` (see again())
        self._arguments = dict(expected_size=expected_size, content_md5=content_md5,
                               checksum_algorithms=checksum_algorithms, expected_checksums=expected_checksums,
                               etag=etag, sha256_hex=sha256_hex)
        self._kept: list[bytes] | None = None
        self._kept_size = self._keep_limit = 0
        self._source_broken = False
        self.expected_size = expected_size
        self._content_md5 = content_md5
        self._expected = expected_checksums if expected_checksums is not None else {}
        self.algorithms = tuple(dict.fromkeys((*checksum_algorithms, *self._expected)))  # computed while read
        self.given_etag = etag  # the ETag to store instead of the bytes' MD5 (multipart objects), or None
        self._sha256_hex = sha256_hex
        self._md5 = hashlib.md5() if etag is None else None
        self._sha256 = hashlib.sha256() if sha256_hex else None
        self._hashers = {alg: new_hasher(alg) for alg in self.algorithms}
        self.size = 0
        self._done = False
        self._final_checks: list[Callable[[], Awaitable[None]]] = []
        if content_md5 is not None:
            try:
                raw = base64.b64decode(content_md5, validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 16:
                raise errors.InvalidDigest()
        for alg, value in self._expected.items():
            # A value that cannot be any checksum of this algorithm is a malformed request (as S3
            # says), not a body that failed its check: the client's header is wrong, not the bytes.
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                raw = None
            if raw is None or len(raw) != len(self._hashers[alg].digest()):
                raise errors.InvalidRequest(f"Value for x-amz-checksum-{alg.lower()} header is invalid.")

    @classmethod
    def from_bytes(cls, data: bytes, **kwargs) -> "Payload":
        async def one():
            yield data

        return cls(one(), expected_size=len(data), **kwargs)

    def check_at_end(self, check: Callable[[], Awaitable[None]]) -> None:
        """Also run ``check`` once the body is received and verified, before the backend commits:
        it raises to refuse the write (a conditional PUT whose cluster lock was lost)."""
        self._final_checks.append(check)

    def keep_for_retry(self, limit: int) -> None:
        """Keep the chunks as they are read, up to ``limit`` bytes in all, so that a write that its store
        refused (full, failed, its node gone) can be sent again elsewhere: see again()."""
        self._kept, self._kept_size, self._keep_limit = [], 0, limit

    def again(self) -> "Payload | None":
        """A new Payload with the same bytes, declared values and end checks, for another write of this
        body: the chunks read so far (kept) and then the rest of the client's body. None when that
        cannot be had: more than the kept limit was read, or reading the client's body itself failed
        or was cut short (a cancelled read loses what the client sent in it)."""
        if self._kept is None or self._source_broken:
            return None
        kept, source = self._kept, self._source if self._source is not None else aiter(self._chunks)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in kept:
                yield chunk
            async for chunk in source:
                yield chunk

        replay = Payload(chunks(), **self._arguments)
        replay._final_checks = list(self._final_checks)
        replay.keep_for_retry(self._keep_limit)
        self._kept = None  # the body now belongs to the new Payload
        return replay

    async def _next_chunks(self) -> AsyncIterator[bytes]:
        """The client's chunks, from the one iterator a retry continues (again()), kept when asked."""
        if self._source is None:
            self._source = aiter(self._chunks)
        source = self._source
        while True:
            self._source_broken = True  # until the read returns: a read that raises or is cancelled loses bytes
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                self._source_broken = False
                return
            self._source_broken = False
            if self._kept is not None and chunk:
                self._kept_size += len(chunk)
                if self._kept_size > self._keep_limit:
                    self._kept = None
                else:
                    self._kept.append(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._done:
            raise RuntimeError("a Payload can be read only once")
        limit = self.expected_size
        chunks = self._chunks if self._kept is None else self._next_chunks()
        async for chunk in chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if limit is not None and self.size > limit:
                raise errors.IncompleteBody(
                    f"The body is longer than the declared length of {limit} bytes."
                )
            if self._md5 is not None:
                self._md5.update(chunk)
            if self._sha256 is not None:
                self._sha256.update(chunk)
            for hasher in self._hashers.values():
                hasher.update(chunk)
            yield chunk
        self._verify()
        for check in self._final_checks:
            await check()
        self._done = True

    def _verify(self) -> None:
        if self.expected_size is not None and self.size != self.expected_size:
            raise errors.IncompleteBody(
                f"You sent {self.size} bytes but declared {self.expected_size} (Content-Length)."
            )
        if self._content_md5 is not None:
            if base64.b64encode(self._md5.digest()).decode() != self._content_md5:
                raise errors.BadDigest("The Content-MD5 you specified did not match what we received.")
        if self._sha256 is not None and self._sha256.hexdigest() != self._sha256_hex.lower():
            raise errors.XAmzContentSHA256Mismatch()
        for alg, value in self._expected.items():
            actual = b64(self._hashers[alg].digest())
            if actual != value:
                raise errors.BadDigest(
                    f"The {alg} you specified did not match the calculated checksum.",
                )

    @property
    def etag(self) -> str:
        """The object's ETag (hex MD5 of the bytes, unless given); valid once the stream ended."""
        if not self._done:
            raise RuntimeError("etag is known only after the payload was read to the end")
        return self.given_etag or self._md5.hexdigest()

    @property
    def checksums(self) -> dict[str, str]:
        """algorithm -> base64 checksum of what was received; valid once the stream ended."""
        if not self._done:
            raise RuntimeError("checksums are known only after the payload was read to the end")
        return {alg: b64(h.digest()) for alg, h in self._hashers.items()}
