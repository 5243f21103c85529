"""A relay that understands HTTP and nothing else: the floor of any HTTP relay written in Python here.

    python -m benchmarks.http_relay LISTEN_PORT TARGET_PORT [--pipelined]    # both on 127.0.0.1

Per request it does what every HTTP relay must and no more: parse the client's request with
httptools (as uvicorn does), send a GET for the same path on a pooled keep-alive connection to the
target, parse the answer with httptools and write it back to the client. No S3 (no signature, no
routing, no headers looked at), no lookup of where the object is, no error handling: answers only
plain GETs of a target that answers them all. The cluster benchmark runs it on the relaying nodes'
core in front of node B and reports ``http_relay_vs_local`` next to the gateway's relayed ratio
and ``pipe_proxy.py``'s (docs/cluster.md, "Benchmark").

``--pipelined``: every request goes out on one upstream connection, the requests of one event-loop
iteration written together, the answers matched to them in order (HTTP/1.1 pipelining); what
pipelining the peer connection would give at most (``pipelined_http_relay_vs_local``).
"""

from __future__ import annotations

import asyncio
import collections
import sys

import httptools


class _Answers(asyncio.Protocol):
    """A connection to the target that parses its answers (head lines and body pieces kept)."""

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list = []
        self.body: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


class _Upstream(_Answers):
    """One pooled connection to the target; hands each complete answer to ``answer``."""

    def __init__(self, pool: list):
        super().__init__()
        self.pool = pool
        self.answer = None

    def on_message_complete(self) -> None:
        answer, self.answer = self.answer, None
        self.pool.append(self)
        answer(self.parser.get_status_code(), self.headers, self.body)


class _Pipelined(_Answers):
    """The one upstream connection of --pipelined: requests queued per loop iteration, answers in order."""

    def __init__(self, loop):
        super().__init__()
        self.loop = loop
        self.waiting: collections.deque = collections.deque()
        self.unsent: list[bytes] = []

    def on_message_complete(self) -> None:
        self.waiting.popleft()(self.parser.get_status_code(), self.headers, self.body)

    def send(self, request: bytes, answer) -> None:
        if not self.unsent:
            self.loop.call_soon(self._flush)
        self.unsent.append(request)
        self.waiting.append(answer)

    def _flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        self.transport.writelines(unsent)


class _Client(asyncio.Protocol):
    """One client connection: each complete request goes out on an idle pooled connection (or a new one)."""

    def __init__(self, loop, pool: list, target_port: int):
        self.loop, self.pool, self.target_port = loop, pool, target_port
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        request = b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n" % self.url
        if isinstance(self.pool, _Pipelined):
            self.pool.send(request, self._answer)
        elif self.pool:
            self._send(self.pool.pop(), request)
        else:
            self.loop.create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        _, upstream = await self.loop.create_connection(lambda: _Upstream(self.pool), "127.0.0.1",
                                                        self.target_port)
        self._send(upstream, request)

    def _send(self, upstream: _Upstream, request: bytes) -> None:
        upstream.answer = self._answer
        upstream.transport.write(request)

    def _answer(self, status: int, headers: list, body: list[bytes]) -> None:
        if not self.transport.is_closing():
            self.transport.writelines((b"HTTP/1.1 %d OK\r\n%s\r\n" % (status, b"".join(headers)), *body))


async def serve(listen_port: int, target_port: int, pipelined: bool = False) -> None:
    loop = asyncio.get_running_loop()
    pool: list[_Upstream] | _Pipelined = []
    if pipelined:
        _, pool = await loop.create_connection(lambda: _Pipelined(loop), "127.0.0.1", target_port)
    server = await loop.create_server(lambda: _Client(loop, pool, target_port), "127.0.0.1", listen_port,
                                      backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop  # as the gateway runs (uvicorn[standard])

    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2]), "--pipelined" in sys.argv[3:]))


if __name__ == "__main__":
    main()
