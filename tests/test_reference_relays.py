"""The cluster benchmark's reference relays (benchmarks/http_relay.py) answer what they relay.

Their numbers are what the gateway's relayed ratio is read against (docs/cluster.md, "Benchmark");
a reference that mixed up answers (the pipelined one matches answers to requests by order) would
make that comparison meaningless without anyone noticing. Here each answers many concurrent reads
of different objects with the right bodies.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.testing.server import GatewayProcess, free_port

OBJECTS = {f"obj-{n}": bytes([n]) * (1000 + 5000 * n) for n in range(8)}


@pytest.fixture(scope="module")
def anonymous_gateway():
    with GatewayProcess(args=["--allow-anonymous"]) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="relayed")
        for key, body in OBJECTS.items():
            s3.put_object(Bucket="relayed", Key=key, Body=body)
        yield gw


@pytest.mark.parametrize("mode", [[], ["--pipelined"]], ids=["pooled", "pipelined"])
def test_the_http_relay_answers_each_read_with_its_object(anonymous_gateway, mode):
    port = free_port("127.0.0.1")
    relay = subprocess.Popen([sys.executable, "-m", "benchmarks.http_relay", str(port), str(anonymous_gateway.port),
                              *mode], stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout.readline().strip() == "ready", "benchmarks.http_relay did not start"

        def read(key: str) -> tuple[str, bytes]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/relayed/{key}", timeout=10) as response:
                return key, response.read()

        keys = list(OBJECTS) * 25
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(read, keys))
        assert len(answers) == len(keys)
        wrong = [key for key, body in answers if body != OBJECTS[key]]
        assert not wrong, f"{len(wrong)} reads got another object's body, e.g. {wrong[:3]}"
    finally:
        relay.kill()
        relay.wait(timeout=10)
