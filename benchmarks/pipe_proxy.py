"""A relay that understands nothing: pipes each client connection's bytes to its own connection to a target.

    python -m benchmarks.pipe_proxy LISTEN_PORT TARGET_PORT     # both on 127.0.0.1

The cluster benchmark runs it on the relaying nodes' core, in front of a node's local hit: its rate
is the ceiling of any relay on this machine (two more socket reads and writes per request, no
parsing, signing or lookup), printed next to the gateway's relayed rate (docs/cluster.md,
"Benchmark"). uvloop when installed (it is, with uvicorn[standard]), as the gateway runs.
"""

from __future__ import annotations

import asyncio
import sys


class _Pipe(asyncio.Protocol):
    """One direction's receiving end; writes what it receives to ``peer``'s transport."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []  # received before the other side's connection was up

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Back-pressure: when the peer cannot take more, stop reading this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(listen_port: int, target_port: int) -> None:
    loop = asyncio.get_running_loop()

    def accepted() -> _Pipe:
        client = _Pipe()

        async def connect() -> None:
            try:
                _, upstream = await loop.create_connection(_Pipe, "127.0.0.1", target_port)
            except OSError:
                client.transport.close()
                return
            client.peer, upstream.peer = upstream, client
            for data in client.pending:
                upstream.transport.write(data)
            client.pending.clear()

        loop.create_task(connect())
        return client

    server = await loop.create_server(accepted, "127.0.0.1", listen_port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(listen_port, target_port))
    else:
        uvloop.run(serve(listen_port, target_port))


if __name__ == "__main__":
    main()
