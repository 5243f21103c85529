"""PUT of 4 KiB objects, durable: the gateway (presigned PUTs from wrk) against a plain Python loop
doing write + fsync + rename of the same number of same-sized files on the same filesystem.

Both overwrite a fixed set of keys at random, so each operation replaces an existing file, and
both run on the server core. The plain loop is one process doing one file at a time, which is the
best a single core can do when every write waits for fsync.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

from . import dataset, wrk
from .procs import SERVER_CORE, pinned
from .scenario import Scenario

SIZE = 4 * 1024
TARGET = 0.5


class PlainLoop:
    label = "python write+fsync+rename"

    def __init__(self, directory: str, count: int):
        self.directory = directory
        self.count = count
        os.makedirs(os.path.join(directory, "tmp"), exist_ok=True)

    def round(self, seconds: float) -> wrk.Sample:
        command = pinned(SERVER_CORE, [sys.executable, "-m", "benchmarks.put", self.directory, str(seconds),
                                       str(SIZE), str(self.count)])
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if done.returncode != 0:
            raise RuntimeError(f"the plain write loop failed: {done.stderr.strip()}")
        r = json.loads(done.stdout)
        return wrk.Sample(requests=r["ops"], seconds=r["seconds"], bytes=r["ops"] * SIZE, p50_ms=r["p50_ms"],
                          p99_ms=r["p99_ms"], errors=0, server_cpu_s=r["cpu_s"], client_cpu_s=0.0)


def plain_loop(directory: str, seconds: float, size: int, count: int) -> dict:
    """write + fsync + rename over ``count`` files for ``seconds``; what a durable PUT must at least do."""
    data = os.urandom(size)
    names = [os.path.join(directory, f"obj-{i:05d}") for i in range(count)]
    tmp = os.path.join(directory, "tmp", f"{os.getpid()}.tmp")
    latencies = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, random.choice(names))
        done = time.perf_counter()
        latencies.append(done - now)
        now = done
    elapsed = now - start
    latencies.sort()
    return {"ops": len(latencies), "seconds": elapsed, "cpu_s": time.process_time() - cpu_start,
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def run(gateway, work_dir: str, params, log) -> dict:
    keys = [f"put/obj-{i:05d}" for i in range(params.put_objects)]
    gateway.client().create_bucket(Bucket=dataset.PUT_BUCKET)
    lines = dataset.request_lines(gateway, "PUT", dataset.PUT_BUCKET, keys)
    requests_file = dataset.write_lines(os.path.join(work_dir, "put.txt"), lines)
    body_file = os.path.join(work_dir, "put-body.bin")
    with open(body_file, "wb") as f:
        f.write(os.urandom(SIZE))
    plain = PlainLoop(os.path.join(work_dir, "plain-put"), params.put_objects)

    def gateway_round(seconds):
        def one_round():
            sample = wrk.run(gateway.port, requests_file, seconds=seconds, connections=params.connections,
                             server_pids=gateway.pids(), body_file=body_file)
            sample.bytes = sample.requests * SIZE  # wrk counts response bytes; count the uploaded ones
            return sample
        return one_round

    gateway_round(params.warmup)()  # also creates most keys, so timed rounds overwrite like the loop does
    plain.round(params.warmup)
    scenario = Scenario("PUT 4 KiB", "rps", TARGET, gateway.label,
                        {gateway.label: gateway_round(params.duration), plain.label: lambda: plain.round(params.duration)})
    result = scenario.run(params.rounds, log)
    s3 = gateway.client()
    some_key = s3.list_objects_v2(Bucket=dataset.PUT_BUCKET, MaxKeys=1)["Contents"][0]["Key"]
    stored = s3.head_object(Bucket=dataset.PUT_BUCKET, Key=some_key)
    if stored["ContentLength"] != SIZE:
        raise RuntimeError(f"a PUT object has {stored['ContentLength']} bytes, expected {SIZE}")
    return result


if __name__ == "__main__":
    directory, seconds, size, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(plain_loop(directory, seconds, size, count)))
