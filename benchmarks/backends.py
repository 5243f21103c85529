"""Per-backend throughput: GET and PUT of 32 KiB objects through one gateway per backend (issue 4).

    python -m benchmarks.backends              # a Markdown table, then the results as JSON
    python -m benchmarks.backends --only smb,s3-moto --seconds 5
    python -m benchmarks.backends --table benchmarks/results/latest.json   # the table of a `make bench` run
    run(results) -> results                    # called by ``python -m benchmarks`` (make bench)

For each backend: start what it stores on (nothing, a plain directory, a private smbd, a moto
server, a second gateway), start ``gateway serve`` with that backend, write ``objects`` objects
of 32 KiB with boto3, then one wrk round of presigned SigV4 GETs of those objects (random pick per
request) and one of presigned PUTs (UNSIGNED-PAYLOAD, 32 KiB bodies) overwriting ``objects`` other
keys at random. Everything on the server side (the gateway and its store: smbd, moto, the second
gateway) runs on the server core, wrk on the client core, as in the other scenarios: a row is the
whole cost of one request on one core, so the rows compare with each other, not with nginx.

The rounds are short (``seconds``, 3 s by default, after a 1 s GET warm-up) so the six backends
take well under two minutes; the figures are for comparing backends, not for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gateway.testing.moto import MotoServer
from gateway.testing.samba import Smbd

from . import dataset, wrk
from .procs import SERVER_CORE, children, cpu_seconds, drop_into_page_cache, load_average, pinned
from .targets import PinnedGateway

SIZE = 32 * 1024
BUCKET = "bench"
BACKENDS = ("local", "sharedfs", "memory", "smb", "s3-moto", "s3-gateway")
DESCRIPTIONS = {
    "local": "local (fsync on)",
    "sharedfs": "sharedfs on a plain directory (fsync on)",
    "memory": "memory",
    "smb": "smb to smbd on loopback",
    "s3-moto": "s3 to a moto server",
    "s3-gateway": "s3 to a second gateway (local backend)",
}
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class Params:
    seconds: int = 3  # per timed round (wrk takes whole seconds)
    warmup: int = 1  # untimed GET seconds before the rounds
    objects: int = 200  # objects read by the GET round, and keys overwritten by the PUT round
    connections: int = 16  # enough to keep one server core busy, few enough for moto's latency
    backends: tuple[str, ...] = BACKENDS


@dataclass
class Store:
    """What one backend stores on: the gateway's config, the store's processes, its files."""

    config: str | None  # TOML for the gateway; None: the default local backend on the data dir
    pids: Callable[[], list[int]] = list  # the store's processes (their CPU is counted apart)
    files: list[Path] = field(default_factory=list)  # directories to pre-read into the page cache
    stops: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        for stop in reversed(self.stops):
            stop()


def backend_toml(kind: str, options: dict) -> str:
    """A gateway config whose default backend is one ``kind`` backend with ``options``."""
    lines = ['default_backend = "bench"', "", "[backends.bench]", f"type = {json.dumps(kind)}"]
    for key, value in options.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, str):
            value = json.dumps(value)  # a JSON string is a valid TOML basic string
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def start_store(name: str, base: Path) -> Store:
    """Start what backend ``name`` stores on, under ``base``, pinned to the server core."""
    server_prefix = pinned(SERVER_CORE, [])  # taskset (and nice as root): share the gateway's core
    if name == "local":
        return Store(None, files=[base / "cv-storage"])
    if name == "sharedfs":
        root = base / "shared"
        root.mkdir()
        return Store(backend_toml("sharedfs", {"root": str(root), "host_id": "bench"}), files=[root])
    if name == "memory":
        return Store(backend_toml("memory", {}))
    if name == "smb":
        smbd = Smbd(base / "smbd", command_prefix=server_prefix)
        smbd.start()
        # smbd forks one child per client connection (the backend's pool): count those too.
        pids = lambda: [smbd.process.pid, *children(smbd.process.pid)]
        return Store(backend_toml("smb", smbd.backend_options(path="cv-storage")), pids, [smbd.share_dir],
                     [smbd.stop])
    if name == "s3-moto":
        moto = MotoServer(base / "moto.log", command_prefix=server_prefix).start()
        options = moto.backend_options(bucket_prefix="cvgw-")
        return Store(backend_toml("s3", options), lambda: [moto.process.pid], [], [moto.stop])
    if name == "s3-gateway":
        remote = PinnedGateway(data_dir=base / "remote" / "cv-storage")
        try:
            remote.start()
        except BaseException:
            remote.stop()  # one that did not answer in time may still run
            raise
        options = {"endpoint_url": remote.endpoint, "region": "us-east-1", "access_key_id": remote.access_key,
                   "secret_access_key": remote.secret_key, "bucket_prefix": "cvgw-", "timeout": 10,
                   "max_attempts": 2}
        forget_log = lambda: remote.log_path.unlink(missing_ok=True)
        return Store(backend_toml("s3", options), remote.pids, [remote.data_dir], [forget_log, remote.stop])
    raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):  # a child that has just left
            pass
    return found


def timed_round(gateway: PinnedGateway, store: Store, requests_file: str, seconds: int, connections: int,
                body_file: str | None = None) -> dict:
    """One wrk round; the gateway's CPU comes from wrk.run, the store's is read around it."""
    store_pids = store.pids()
    before = _cpu_by_pid(store_pids)
    sample = wrk.run(gateway.port, requests_file, seconds=seconds, connections=connections,
                     server_pids=gateway.pids(), body_file=body_file)
    after = _cpu_by_pid(store_pids)
    store_cpu = sum(after[pid] - before[pid] for pid in before if pid in after)
    row = sample.as_dict()
    row["store_cpu_s"] = store_cpu
    row["store_cpu_us_per_request"] = store_cpu / sample.requests * 1e6 if sample.requests else float("nan")
    return row


def write_objects(gateway: PinnedGateway, keys: list[str], threads: int = 8) -> bytes:
    """PUT every key (random bytes, boto3, ``threads`` at once); returns the first key's body."""
    first = os.urandom(SIZE)

    def write(chunk: list[str]) -> None:
        s3 = gateway.client()
        for key in chunk:
            s3.put_object(Bucket=BUCKET, Key=key, Body=first if key == keys[0] else os.urandom(SIZE))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, [keys[i::threads] for i in range(threads)]))
    return first


def check_get(gateway: PinnedGateway, line: str, expected: bytes) -> None:
    """One presigned GET before timing: it must answer 200 with the object's bytes."""
    target = line.split(" ", 1)[1]
    with urllib.request.urlopen(gateway.endpoint + target, timeout=10) as response:
        body = response.read()
    if response.status != 200 or body != expected:
        raise RuntimeError(f"a presigned GET answered {response.status} with {len(body)} bytes; "
                           f"expected 200 with {len(expected)} bytes")


def measure(name: str, base: Path, params: Params, log: Callable[[str], None]) -> dict:
    """Start the store and a gateway on it, write the objects, then one GET and one PUT round."""
    started = time.monotonic()
    base.mkdir(parents=True)
    store = start_store(name, base)
    gateway = PinnedGateway(data_dir=base / "cv-storage", config=store.config)
    try:
        gateway.start()
        gateway.client().create_bucket(Bucket=BUCKET)
        get_keys = [f"get/obj-{i:05d}" for i in range(params.objects)]
        first_body = write_objects(gateway, get_keys)
        get_file = dataset.write_lines(str(base / "get.txt"),
                                       dataset.request_lines(gateway, "GET", BUCKET, get_keys))
        put_keys = [f"put/obj-{i:05d}" for i in range(params.objects)]
        put_file = dataset.write_lines(str(base / "put.txt"),
                                       dataset.request_lines(gateway, "PUT", BUCKET, put_keys))
        body_file = str(base / "put-body.bin")
        with open(body_file, "wb") as f:
            f.write(os.urandom(SIZE))
        with open(get_file) as f:
            check_get(gateway, f.readline().strip(), first_body)
        for directory in store.files:
            drop_into_page_cache(dataset.all_files(str(directory)))
        # Warm up: connections to the store, the signing-key cache, the page cache.
        wrk.run(gateway.port, get_file, seconds=params.warmup, connections=params.connections,
                server_pids=gateway.pids())
        get = timed_round(gateway, store, get_file, params.seconds, params.connections)
        put = timed_round(gateway, store, put_file, params.seconds, params.connections, body_file)
    except BaseException:
        log(f"  the end of the gateway's log ({name}):\n{gateway.log()[-3000:]}")
        raise
    finally:
        gateway.stop()
        store.stop()
        for path in (gateway.log_path, gateway.log_path.with_suffix(".toml")):
            path.unlink(missing_ok=True)
    for label, row in (("GET", get), ("PUT", put)):
        log(f"  {name:<11} {label} {row['rps']:>8,.0f} req/s  p99 {row['p99_ms']:7.2f} ms  "
            f"gateway {row['cpu_us_per_request']:6,.0f} µs/req  store {row['store_cpu_us_per_request']:6,.0f} µs/req"
            + (f"  {row['errors']} ERRORS" if row["errors"] else ""))
    return {"description": DESCRIPTIONS[name], "get": get, "put": put,
            "elapsed_s": round(time.monotonic() - started, 1)}


def run(results: dict, params: Params | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Measure every backend and add ``results["backends"]``; return ``results``.

    A backend that fails (its store cannot start, requests fail) gets ``{"error": ...}`` and the
    others still run; ``results["backends"]["error"]`` then names the failures (so ``make bench``
    exits with status 1)."""
    params = params or Params()
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make test-deps` (Debian package wrk)")
    section: dict = {"params": {"size": SIZE, "seconds": params.seconds, "warmup": params.warmup,
                                "objects": params.objects, "connections": params.connections},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": {"before": load_average()},
                     "results": {}}
    results["backends"] = section
    os.makedirs(RESULTS_DIR, exist_ok=True)
    # On the project's disk (not a tmpfs /tmp), like the other scenarios.
    work_dir = Path(tempfile.mkdtemp(prefix="backends-", dir=RESULTS_DIR))
    failures = []
    started = time.monotonic()
    try:
        for name in params.backends:
            log(f"backend {name}: {DESCRIPTIONS.get(name, '?')} ...")
            try:
                row = measure(name, work_dir / name, params, log)
            except Exception as exc:  # noqa: BLE001  (keep the other backends' numbers)
                log(f"  {name} failed: {exc}")
                section["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                failures.append(name)
                continue
            section["results"][name] = row
            if row["get"]["errors"] or row["put"]["errors"]:
                failures.append(name)  # non-2xx or socket errors: that row's numbers are not valid
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    section["elapsed_s"] = round(time.monotonic() - started, 1)
    section["load_average"]["after"] = load_average()
    if failures:
        section["error"] = f"backends with errors (see their entries): {', '.join(failures)}"
    return results


def markdown(section: dict) -> str:
    """The throughput table of docs/backends.md, from ``results["backends"]``."""
    header = ("| backend | GET 32 KiB req/s | GET p99 ms | PUT 32 KiB req/s | PUT p99 ms | "
              "CPU µs per GET: gateway + store | CPU µs per PUT: gateway + store |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, row in section["results"].items():
        if "error" in row:
            first_line = row["error"].splitlines()[0][:200].replace("|", "/")  # one table cell
            lines.append(f"| {DESCRIPTIONS.get(name, name)} | failed: {first_line} | | | | | |")
            continue
        get, put = row["get"], row["put"]

        def cpu(r: dict) -> str:
            store = f" + {r['store_cpu_us_per_request']:,.0f}" if r["store_cpu_s"] else ""
            return f"{r['cpu_us_per_request']:,.0f}{store}"

        lines.append(f"| {row['description']} | {get['rps']:,.0f} | {get['p99_ms']:.1f} | {put['rps']:,.0f} | "
                     f"{put['p99_ms']:.1f} | {cpu(get)} | {cpu(put)} |")
    p, load = section["params"], section["load_average"]
    lines.append("")
    lines.append(f"Run of {section['started']}: {p['objects']} objects of {p['size'] // 1024} KiB per backend, "
                 f"one {p['seconds']} s round each for GET and PUT, {p['connections']} connections; load average "
                 f"{load.get('before', 0):.1f} before, {load.get('after', 0):.1f} after; "
                 f"{section.get('elapsed_s', 0):.0f} s in all.")
    return "\n".join(lines)


def _stop_on_sigterm(signum, frame):
    # SIGTERM (timeout, kill) becomes an exception, so the servers and the temp data are cleaned up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Params()
    parser.add_argument("--seconds", type=int, default=defaults.seconds, help="whole seconds per timed round")
    parser.add_argument("--objects", type=int, default=defaults.objects, help="objects per backend (32 KiB)")
    parser.add_argument("--connections", type=int, default=defaults.connections, help="wrk connections")
    parser.add_argument("--only", default=",".join(BACKENDS), help=f"comma-separated subset of {', '.join(BACKENDS)}")
    parser.add_argument("--table", metavar="JSON", help="measure nothing: print the Markdown table of a saved run "
                                                        "(benchmarks/results/latest.json after `make bench`)")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            saved = json.load(f)
        if "results" not in saved.get("backends", {}):
            parser.error(f"{args.table} has no per-backend results (run `make bench` or --only backends)")
        print(markdown(saved["backends"]))
        return 0
    chosen = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = [name for name in chosen if name not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")
    for name, value, low, high in (("seconds", args.seconds, 1, 60), ("objects", args.objects, 1, 100_000),
                                   ("connections", args.connections, 1, 1024)):
        if not low <= value <= high:
            parser.error(f"--{name} must be between {low} and {high} (every load is bounded)")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    results = run({}, Params(seconds=args.seconds, objects=args.objects, connections=args.connections,
                             backends=chosen))
    print(markdown(results["backends"]))
    print(json.dumps(results, indent=2))
    return 1 if "error" in results["backends"] else 0


if __name__ == "__main__":
    sys.exit(main())
