"""Bridges between the gateway's async byte streams and boto3's blocking file objects.

boto3 is synchronous and runs in worker threads; object bodies are async
iterators on the event loop. :class:`PayloadReader` lets botocore read a
Payload from a worker thread, one chunk at a time (bounded memory), and
holds one chunk back until the next is known, so the Payload's checks
(length, Content-MD5, checksums: they run when its iterator ends) fail
*before* botocore has sent the last byte. The remote store then sees a
short body and stores nothing.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterable

from gateway import errors

_END = object()


class PayloadReader:
    """A read-only, unseekable file object over an async iterable, for use from a worker thread.

    :param timeout: seconds to wait for the next chunk from the client before failing with
        400 RequestTimeout (the remote request is open meanwhile, so the wait must end).
    :param setting: the name of the setting ``timeout`` comes from, for the error message.
    """

    def __init__(self, chunks: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop, timeout: float,
                 setting: str = "timeout"):
        self._iterator = chunks.__aiter__()
        self._loop = loop
        self._timeout = timeout
        self._setting = setting
        self._current = memoryview(b"")
        self._ahead: object = None  # the chunk after _current, _END, or None before the first fetch
        self.error: BaseException | None = None  # what the body raised, for the caller to re-raise
        self.sent = 0

    async def _next_chunk(self):
        try:
            return await self._iterator.__anext__()
        except StopAsyncIteration:
            return _END

    def _fetch(self):
        future = asyncio.run_coroutine_threadsafe(self._next_chunk(), self._loop)
        try:
            try:
                return future.result(self._timeout)
            except TimeoutError:
                if not future.cancel():  # done after all: a chunk just came, or the body raised TimeoutError
                    return future.result()
                # The client stopped sending its body: S3 answers 400 RequestTimeout. A bare
                # TimeoutError would reach the client as a 500, as if the gateway had failed.
                raise errors.RequestTimeout(
                    f"{errors.RequestTimeout.default_message} No part of the request body arrived for "
                    f"{self._timeout:g} seconds ({self._setting}); retry the request without pausing that long."
                ) from None
        except BaseException as exc:
            future.cancel()
            self.error = exc
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    # botocore's CRT signer and urllib3 look for seek/tell; only "stay where you are" can be honoured.
    def tell(self) -> int:
        return self.sent

    def seek(self, offset: int, whence: int = 0) -> int:
        if (whence == 0 and offset == self.sent) or (whence == 1 and offset == 0):
            return self.sent
        raise io.UnsupportedOperation("a streamed request body cannot be rewound")

    def read(self, size: int = -1) -> bytes:
        if self._ahead is None:
            self._ahead = self._fetch()
        while not self._current and self._ahead is not _END:
            self._current = memoryview(self._ahead)
            self._ahead = self._fetch()  # the body's checks run here, before the last chunk goes out
        if not self._current:
            return b""
        if size is None or size < 0:
            size = len(self._current)
        out = bytes(self._current[:size])
        self._current = self._current[size:]
        self.sent += len(out)
        return out
