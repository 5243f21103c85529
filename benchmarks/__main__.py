"""``python -m benchmarks`` (``make bench``): GET and PUT hot paths against nginx and a plain loop.

Writes benchmarks/results/bench-<time>.json and .png (and latest.json / latest.png) and prints a table.
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
from dataclasses import asdict, dataclass

from . import hot_read, put, report
from .procs import load_average, machine
from .targets import PinnedGateway

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class Params:
    sizes: list[int]
    objects: int  # small objects per size, picked at random per request
    large_objects: int  # 1 MiB objects
    put_objects: int  # keys the PUT rounds overwrite at random
    connections: int
    duration: int  # seconds per timed round (wrk takes whole seconds)
    warmup: int
    rounds: int
    only: str
    quick: bool = False


def parse_args(argv) -> Params:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per timed round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per server; medians are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed whole seconds per server first")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--objects", type=int, default=2000, help="objects per small size (default 2000)")
    parser.add_argument("--large-objects", type=int, default=200, help="1 MiB objects (default 200)")
    parser.add_argument("--put-objects", type=int, default=1000, help="keys the PUT rounds overwrite")
    parser.add_argument("--sizes", default="4096,32768,1048576", help="GET object sizes in bytes")
    parser.add_argument("--only", choices=("all", "get", "put", "cluster", "fuse", "backends"), default="all",
                        help="one part only; `all` runs GET, PUT, then the cluster, FUSE and per-backend benchmarks")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run, not for the record")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup, args.objects, args.large_objects = 2, 1, 1, 500, 50
    bounded = [("duration", args.duration, 1, 60), ("warmup", args.warmup, 1, 60), ("rounds", args.rounds, 1, 10),
               ("connections", args.connections, 1, 1024)]
    for name, value, low, high in bounded:
        if not low <= value <= high:
            parser.error(f"--{name} must be between {low} and {high} (every load is bounded in time)")
    return Params(sorted(int(s) for s in args.sizes.split(",")), args.objects, args.large_objects,
                  args.put_objects, args.connections, args.duration, args.warmup, args.rounds, args.only,
                  args.quick)


def _stop_on_sigterm(signum, frame):
    # Turn SIGTERM (timeout, kill) into an exception so the servers and the temp data are cleaned up;
    # a second one during that clean-up is ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    params = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            print(f"{tool} is not installed: run `make test-deps` (Debian package {tool})", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("warning: one CPU core: server and load generator share it; ratios still hold, absolutes not")

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.time()
    load_before = load_average()
    if load_before > 1.0:
        log(f"warning: load average {load_before:.1f} before the run: other work competes for the cores, "
            "so absolute numbers will be low and ratios noisy")
    # On the project's disk (not a tmpfs /tmp): gateway files and nginx's plain files side by side.
    os.makedirs(RESULTS, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="data-", dir=RESULTS)
    gateway = PinnedGateway(data_dir=os.path.join(work_dir, "cv-storage"))
    results = []
    try:
        if params.only in ("all", "get", "put"):
            gateway.start()
            gateway.client().create_bucket(Bucket="bench")
            log(f"gateway on :{gateway.port}, data in {work_dir}; {params.rounds} rounds of {params.duration:g} s, "
                f"{params.connections} connections; server on core 0, wrk on core 1")
            if params.only in ("all", "get"):
                results += hot_read.run(gateway, work_dir, params, log)
            if params.only in ("all", "put"):
                results.append(put.run(gateway, work_dir, params, log))
    finally:
        gateway.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    others = run_other_benchmarks(params, log)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "elapsed_s": round(time.time() - started, 1), "machine": machine(),
                "load_average": {"before": load_before, "after": load_average()}, "params": asdict(params),
                "results": results, **others}
    json_path = os.path.join(RESULTS, f"bench-{stamp}.json")
    report.write_json(json_path, document)
    shutil.copyfile(json_path, os.path.join(RESULTS, "latest.json"))
    png_path = os.path.join(RESULTS, f"bench-{stamp}.png")
    m = document["machine"]
    if results:
        report.write_chart(png_path, results, f"cv-gateway hot paths, {m['cores']} x {m['cpu']}, {stamp}")
        shutil.copyfile(png_path, os.path.join(RESULTS, "latest.png"))
    with open(os.path.join(RESULTS, f"bench-{stamp}.md"), "w") as f:
        f.write(report.markdown(document) + "\n")
    print()
    if results:
        print(report.table(results))
    for name in others:
        print(f"\n{name}: {json.dumps(others[name], indent=2)}")
    print(f"\nwrote {json_path}{' and ' + png_path if results else ''} ({document['elapsed_s']:.0f} s)")
    if any(r["errors"] for r in results):
        print("some requests failed (non-2xx or socket errors): the numbers above are not valid", file=sys.stderr)
        return 1
    if any("error" in value for value in others.values() if isinstance(value, dict)):
        return 1
    return 0


def run_other_benchmarks(params: Params, log) -> dict:
    """The cluster relay, FUSE and per-backend benchmarks (their own modules, own servers); each adds its key.

    A failure is recorded under that key (``{"error": ...}``) so the other results are still written."""
    separate = ("cluster", "fuse", "backends")
    wanted = list(separate) if params.only == "all" else [params.only] if params.only in separate else []
    others: dict = {}
    for name in wanted:
        log(f"running the {name} benchmark ...")
        try:
            if name == "cluster":
                from . import cluster_bench

                cluster_bench.run(others, rounds=params.rounds, seconds=2 if params.quick else cluster_bench.DURATION)
            elif name == "backends":  # issue 4: GET/PUT of 32 KiB through one gateway per backend
                from . import backends

                backends.run(others, backends.Params(seconds=2, objects=100) if params.quick else None, log)
            else:
                from . import fuse_bench

                sizes = dict(big=32 * 1024 * 1024, small=200, listing=1_500) if params.quick else {}
                fuse_bench.run(others, rounds=params.rounds, **sizes)
        except Exception as exc:  # keep the other results; the error is in the JSON and the exit status
            log(f"  the {name} benchmark failed: {exc}")
            others[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return others


if __name__ == "__main__":
    sys.exit(main())
