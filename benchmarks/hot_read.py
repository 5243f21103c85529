"""GET of small and large objects: the gateway (presigned, authenticated) against nginx."""

from __future__ import annotations

import os

from . import dataset, wrk
from .nginx import Nginx
from .procs import drop_into_page_cache
from .scenario import Scenario

TARGETS = {4 * 1024: ("rps", 0.35), 32 * 1024: ("rps", 0.35), 1024 * 1024: ("bytes_per_s", 0.6)}
LARGE = 1024 * 1024  # from here on, nginx runs with sendfile on and off and the better one counts


def run(gateway, work_dir: str, params, log) -> list[dict]:
    plain_root = os.path.join(work_dir, "plain")
    results = []
    started: list[Nginx] = []
    try:
        nginx_on = Nginx(plain_root, sendfile=True)
        started.append(nginx_on.start())
        nginx_off = None
        if any(s >= LARGE for s in params.sizes):
            nginx_off = Nginx(plain_root, sendfile=False)
            started.append(nginx_off.start())
        for size in params.sizes:
            count = params.large_objects if size >= LARGE else params.objects
            keys = dataset.keys_for(size, count)
            log(f"writing {count} objects of {dataset.size_label(size)} through the gateway ...")
            dataset.write_objects(gateway, plain_root, size, keys)
            lines = dataset.request_lines(gateway, "GET", dataset.BUCKET, keys)
            requests_file = dataset.write_lines(os.path.join(work_dir, f"get-{size}.txt"), lines)
            dataset.check_same_bytes(gateway.port, nginx_on.port, lines[0], plain_root)
            read = drop_into_page_cache(dataset.all_files(str(gateway.data_dir)) + dataset.all_files(plain_root))
            log(f"  pre-read {read / 1e6:,.0f} MB into the page cache")

            servers = [gateway, nginx_on] + ([nginx_off] if size >= LARGE and nginx_off else [])
            metric, target = TARGETS.get(size, ("rps", 0.35))

            def runner(server, seconds):
                return lambda: wrk.run(server.port, requests_file, seconds=seconds,
                                       connections=params.connections, server_pids=server.pids())

            for server in servers:  # warm up: connections, caches, the signing-key cache
                runner(server, params.warmup)()
            scenario = Scenario(f"GET {dataset.size_label(size)}", metric, target, gateway.label,
                                {server.label: runner(server, params.duration) for server in servers})
            results.append(scenario.run(params.rounds, log))
    finally:
        for nginx in started:
            nginx.stop()
    return results
