"""The gateway's own CPU cost per request, without a socket: ``python -m benchmarks.app_overhead``.

Drives the whole ASGI app (``gateway.app.create_app``) in-process with the scope uvicorn +
httptools build for a presigned SigV4 request (boto3, ``signature_version="s3v4"``, as the wrk
benchmark sends it), a receive that hands over the body and a send that only checks the status.
No server, no network, no load generator: the figure is deterministic to a few percent even on a
loaded machine (min over repeats of N requests), so it is the regression tool for the hot path,
while ``make bench`` gives the end-to-end ratio to nginx.

It also times the pieces of a GET one by one (request parsing, SigV4 verification, the local
backend's get) so a regression shows where it is. ``--profile`` prints a cProfile of the GET loop.

    .venv/bin/python -m benchmarks.app_overhead                 # GET 4 KiB, 32 KiB, HEAD, PUT 4 KiB
    .venv/bin/python -m benchmarks.app_overhead --sizes 4096 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from urllib.parse import unquote, urlsplit

ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key-0123456789"
BUCKET = "bench"
HOST = "127.0.0.1:8086"


def presigned_scopes(method: str, keys: list[str], body_size: int = 0) -> list[dict]:
    """One ASGI scope per key, as uvicorn's httptools protocol builds it for the presigned URL."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=f"http://{HOST}", aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    operation = {"GET": "get_object", "HEAD": "head_object", "PUT": "put_object"}[method]
    scopes = []
    for key in keys:
        url = urlsplit(s3.generate_presigned_url(operation, Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600))
        headers = [(b"host", HOST.encode())]
        if body_size:
            headers.append((b"content-length", str(body_size).encode()))
        scopes.append({
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8086), "client": ("127.0.0.1", 40000), "scheme": "http", "method": method,
            "root_path": "", "path": unquote(url.path), "raw_path": url.path.encode(),
            "query_string": url.query.encode(), "headers": headers, "state": {},
        })
    return scopes


class Driver:
    """Calls the app with prepared scopes; checks each answer's status without storing anything."""

    def __init__(self, app, expect_status: int, body: bytes = b""):
        self.app = app
        self.expect = expect_status
        self.body_message = {"type": "http.request", "body": body, "more_body": False}
        self.bad: list = []

    async def receive(self):
        return self.body_message

    async def send(self, message):
        if message["type"] == "http.response.start" and message["status"] != self.expect:
            self.bad.append(message["status"])

    async def loop(self, scopes: list[dict], count: int) -> None:
        app, receive, send = self.app, self.receive, self.send
        n = len(scopes)
        for i in range(count):
            await app(scopes[i % n], receive, send)
        if self.bad:
            raise RuntimeError(f"{len(self.bad)} of {count} requests answered {self.bad[0]}, "
                               f"expected {self.expect}")


def timed(run, count: int, repeats: int) -> dict:
    """µs per call (wall and CPU), min and median over ``repeats`` rounds of ``count`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        run(count)
        wall.append((time.perf_counter() - w0) / count * 1e6)
        cpu.append((time.process_time() - c0) / count * 1e6)
    return {"min_us": min(wall), "median_us": statistics.median(wall), "cpu_min_us": min(cpu)}


async def timed_async(driver, scopes: list[dict], count: int, repeats: int, concurrency: int) -> dict:
    """timed() for requests that suspend (PUT): ``concurrency`` tasks share ``count`` requests."""
    wall, cpu = [], []
    share = max(1, count // concurrency)
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(driver.loop(scopes[i::concurrency] or scopes, share) for i in range(concurrency)))
        done = share * concurrency
        wall.append((time.perf_counter() - w0) / done * 1e6)
        cpu.append((time.process_time() - c0) / done * 1e6)
    return {"min_us": min(wall), "median_us": statistics.median(wall), "cpu_min_us": min(cpu)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--requests", type=int, default=20_000, help="requests per round (default 20,000)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the minimum is the figure (default 5)")
    parser.add_argument("--objects", type=int, default=100, help="objects per size, cycled through (default 100)")
    parser.add_argument("--sizes", default="4096,32768", help="GET object sizes in bytes (default 4096,32768)")
    parser.add_argument("--put-requests", type=int, default=2_000,
                        help="PUT 4 KiB requests per round (each one fsyncs; default 2,000; 0 skips)")
    parser.add_argument("--no-pieces", action="store_true", help="skip the per-piece timings")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the GET loop (first size)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 1_000_000 or not 1 <= args.repeats <= 50:
        parser.error("--requests must be 1..1,000,000 and --repeats 1..50 (every loop is bounded)")

    # Not on a tmpfs: the same kind of disk the gateway runs on (the PUT rounds fsync).
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="overhead-", dir=results_dir)
    try:
        asyncio.run(_run(args, os.path.join(work, "cv-storage")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


async def _run(args, data_dir: str) -> None:
    import logging

    from gateway.app import create_app
    from gateway.config import Settings

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(data_dir=data_dir, access_key=ACCESS_KEY, secret_key=SECRET_KEY, log_level="warning")
    app = create_app(settings)
    await app.service.start()
    try:
        await _measure(app, args)
    finally:
        await app.service.close()


async def _measure(app, args) -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backend = app.service.backend_for(BUCKET)
    await backend.create_bucket(BUCKET)
    loop = asyncio.get_running_loop()

    def runner(driver, scopes):
        # The app never suspends with this receive and send, so one coroutine runs a whole round;
        # driving it with send(None) keeps the event loop's own cost out of the figure.
        def run(count):
            coro = driver.loop(scopes, count)
            try:
                coro.send(None)
            except StopIteration:
                return
            coro.close()
            raise RuntimeError("the app suspended: the in-process driver cannot time it")
        return run

    put_body = os.urandom(4096)
    print(f"{args.repeats} rounds of {args.requests:,} requests (PUT: {args.put_requests:,}); "
          f"µs per request, min over rounds (median); Python {sys.version.split()[0]}")
    rows = []
    for size in sizes:
        keys = [f"{size}/obj-{i:05d}" for i in range(args.objects)]
        await _store(app, keys, os.urandom(size))
        get_scopes = presigned_scopes("GET", keys)
        rows.append((f"GET {size // 1024} KiB", timed(runner(Driver(app, 200), get_scopes), args.requests,
                                                      args.repeats)))
        rows.append((f"GET {size // 1024} KiB, protocol", timed(_protocol_runner(app, get_scopes), args.requests,
                                                                args.repeats)))
    head_scopes = presigned_scopes("HEAD", [f"{sizes[0]}/obj-{i:05d}" for i in range(args.objects)])
    rows.append(("HEAD", timed(runner(Driver(app, 200), head_scopes), args.requests, args.repeats)))
    if args.put_requests:
        # PUTs wait for fsync in a worker thread: they run on the event loop, one at a time and 16
        # at a time (wall time per request: what parallel fsyncs buy; CPU: what a PUT costs).
        put_scopes = presigned_scopes("PUT", [f"put/obj-{i:05d}" for i in range(args.objects)], len(put_body))
        for label, concurrency in (("PUT 4 KiB, 1 at once", 1), ("PUT 4 KiB, 16 at once", 16)):
            rows.append((label, await timed_async(Driver(app, 200, put_body), put_scopes, args.put_requests,
                                                  max(1, args.repeats // 2), concurrency)))
    for label, r in rows:
        print(f"  {label:<20} {r['min_us']:8.1f} ({r['median_us']:.1f})   CPU {r['cpu_min_us']:.1f}")

    if not args.no_pieces:
        print("pieces of a GET of the first size:")
        for label, r in _pieces(app, backend, sizes[0], args):
            print(f"  {label:<20} {r['min_us']:8.1f} ({r['median_us']:.1f})")

    if args.profile:
        scopes = presigned_scopes("GET", [f"{sizes[0]}/obj-{i:05d}" for i in range(args.objects)])
        run = runner(Driver(app, 200), scopes)
        profiler = cProfile.Profile()
        profiler.enable()
        run(args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    del loop


class _Transport:
    """What the HTTP protocol needs of a transport; counts the bytes written, checks the status."""

    def __init__(self):
        self.written = 0
        self.bad = 0
        self.closed = False

    def writelines(self, parts) -> None:
        if self.closed:
            raise RuntimeError("the protocol wrote to the connection after closing it")
        self.written += sum(map(len, parts))
        if not parts[0].startswith(b"HTTP/1.1 200 "):
            self.bad += 1

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8086), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        # The protocol's idle timer may close this connection once the rounds are over; during a
        # round a close means a request was refused, and the next writelines() reports it.
        self.closed = True


def _protocol_runner(app, scopes: list[dict]):
    """The whole front end (gateway/api/protocol.py) on raw request bytes, without a socket: what
    `gateway serve` runs per request, minus the kernel's work and the event loop's polling."""
    import uvicorn
    from uvicorn.server import ServerState

    from gateway.api.protocol import protocol_for

    config = uvicorn.Config(app, lifespan="off", access_log=False, proxy_headers=False, log_level="warning")
    config.load()
    state = ServerState()
    protocol = protocol_for(app)(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    requests = [(f"GET {s['raw_path'].decode()}?{s['query_string'].decode()} HTTP/1.1\r\n"
                 f"Host: {HOST}\r\n\r\n").encode() for s in scopes]
    n = len(requests)

    def run(count):
        feed = protocol.data_received
        for i in range(count):
            feed(requests[i % n])
        if transport.bad or transport.closed:
            raise RuntimeError(f"{transport.bad} requests were not answered 200"
                               + (" and the protocol closed the connection" if transport.closed else ""))
    return run


async def _store(app, keys: list[str], data: bytes) -> None:
    """PUT the objects through the app itself (presigned, like the benchmark's dataset)."""
    scopes = presigned_scopes("PUT", keys, len(data))
    driver = Driver(app, 200, data)
    for scope in scopes:
        await app(scope, driver.receive, driver.send)
    if driver.bad:
        raise RuntimeError(f"storing the objects failed: status {driver.bad[0]}")


def _pieces(app, backend, size: int, args):
    """Each piece of the GET path on its own, with the inputs the app would give it."""
    from gateway.api.s3.request import S3Request

    keys = [f"{size}/obj-{i:05d}" for i in range(args.objects)]
    scopes = presigned_scopes("GET", keys)
    auth = app.s3.auth
    reqs = [S3Request.from_scope(s, None, "id") for s in scopes]
    n = len(scopes)

    def parse(count):
        for i in range(count):
            S3Request.from_scope(scopes[i % n], None, "id")

    def verify(count):
        for i in range(count):
            r = reqs[i % n]
            auth.authenticate(r.method, r.raw_path, r.query_string, r.headers, r.query_pairs)

    def get(count):
        for i in range(count):
            coro = backend.get(BUCKET, keys[i % n], None)
            try:
                coro.send(None)
            except StopIteration as stop:
                stop.value.close()

    return [("parse scope", timed(parse, args.requests, args.repeats)),
            ("SigV4 verify", timed(verify, args.requests, args.repeats)),
            ("backend.get", timed(get, args.requests, args.repeats))]


if __name__ == "__main__":
    sys.exit(main())
