"""``GET /metrics``: Prometheus text exposition (format 0.0.4) of this node's cluster counters.

Hand-written rather than prometheus_client: the figures already live in the
cluster objects (PeerClient.calls, PeerHealth, Balancer, LocationCache), so
exposing them is a dozen lines of formatting, and a registry of metric
objects would only copy them. Read on demand; nothing is kept twice.

Also served as ``/_admin/metrics``, which no bucket can shadow (see
gateway/app.py for when ``/metrics`` reaches this router).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from .. import __version__

router = APIRouter()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value as Prometheus reads it: integers in full (``:g`` kept 6 digits, so a counter
    past 999999 showed as 1.23457e+06 and stood still between steps), floats exact, +Inf/-Inf/NaN."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)


class Exposition:
    """Collects metric families and renders them as Prometheus text."""

    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str], float]]) -> None:
        """One metric family: HELP and TYPE lines, then one line per (labels, value)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def cluster_metrics(out: Exposition, cluster) -> None:
    """The cluster's figures: peer calls and health, the request distribution, the location cache."""
    out.family("gateway_cluster_nodes", "gauge", "Nodes in this node's snapshot of the registry, by role.",
               [({"role": role}, sum(1 for n in cluster.nodes.values() if n.role == role))
                for role in ("primary", "redundant", "proxy")])
    out.family("gateway_cluster_registry_up", "gauge",
               "1 while the cluster registry answers this node's heartbeat rounds, 0 since one could not reach it.",
               [({}, 1 if cluster.registry_outage.up else 0)])
    out.family("gateway_cluster_registry_failed_rounds_total", "counter",
               "Heartbeat rounds of this node that could not reach the cluster registry.",
               [({}, cluster.registry_outage.failed_rounds)])
    calls = cluster.client.calls
    out.family("gateway_cluster_peer_requests_total", "counter",
               "Requests this node sent to a peer (relays, forwards, placements, fan-outs), by operation and "
               "outcome: ok, missing (404), error, unreachable (no answer in time), refused (bad signature).",
               [({"peer": p, "operation": op, "outcome": result}, n) for (p, op, result), n in sorted(calls.items())])
    health = cluster.health.snapshot()
    peers = sorted(set(cluster.peers(storing=False)) | set(health))
    out.family("gateway_cluster_peer_healthy", "gauge",
               "1 when the peer answers, 0 while it is de-prioritized (asked after every healthy peer); a peer "
               "asked nothing for three heartbeats is pinged, so a dead one shows without traffic.",
               [({"peer": p}, 1 if health.get(p, {}).get("healthy", True) else 0) for p in peers])
    out.family("gateway_cluster_peer_latency_seconds", "gauge", "Smoothed answer time of the peer.",
               [({"peer": p}, health[p]["latency_ms"] / 1000) for p in peers if p in health])
    out.family("gateway_cluster_peer_failures_total", "counter", "Calls to the peer that got no answer.",
               [({"peer": p}, health[p]["failed"]) for p in peers if p in health])
    balancer = cluster.balancer
    out.family("gateway_cluster_objects_placed_total", "counter",
               "PUTs through this node stored on each node (the primary's and a proxy's placement).",
               [({"node": node}, n) for node, n in sorted(balancer.placed.items())])
    out.family("gateway_cluster_requests_served_total", "counter",
               "Object requests through this node answered by each node (itself included), by operation.",
               [({"node": node, "operation": op}, n) for (node, op), n in sorted(balancer.served.items())])
    if cluster.role == "proxy":
        out.family("gateway_cluster_proxy_forwards_total", "counter",
                   "Object requests this proxy forwarded, by the node that answered and operation.",
                   [({"target": node, "operation": op}, n) for (node, op), n in sorted(balancer.served.items())])
    out.family("gateway_cluster_requests_outstanding", "gauge", "Requests in flight to each node (placement "
               "and, on shared storage, the primary's reads).",
               [({"node": node}, n) for node, n in sorted(balancer.outstanding.items())])
    out.family("gateway_cluster_pass_through_reads_total", "counter",
               "Plain reads of objects the location cache places on a peer, sent to that peer's S3 read route "
               "and its answer passed to the client, by outcome: passed; declined, failed, busy, released (answered "
               "the usual way instead); cut (the peer failed after the answer began).",
               [({"outcome": o}, n) for o, n in sorted(cluster.client.pass_through.items())])
    out.family("gateway_cluster_pass_through_pipelined_total", "counter",
               "Pass-through reads sent on a peer's pipelined connection (the others went on a pooled one).",
               [({}, cluster.client.lean.stats["pipelined"])])
    out.family("gateway_cluster_store_full", "gauge",
               "1 for each node's store found full lately (ENOSPC, EDQUOT): no writes are placed there for "
               "full_store_retry seconds.",
               [({"node": node, "backend": backend}, 1) for node, backend in cluster.full_stores()])
    out.family("gateway_cluster_store_failed", "gauge",
               "1 for each node's store that failed lately (EIO, EROFS, ESTALE, its backend unreachable): no "
               "writes are placed there for failed_store_retry seconds.",
               [({"node": node, "backend": backend}, 1) for node, backend in cluster.failed_stores()])
    cache = cluster.locations
    out.family("gateway_cluster_location_cache_lookups_total", "counter",
               "Lookups in the cache of where objects live: hit (a node), negative (known missing), miss.",
               [({"result": "hit"}, cache.hits), ({"result": "negative"}, cache.negative_hits),
                ({"result": "miss"}, cache.misses)])
    out.family("gateway_cluster_location_cache_entries", "gauge", "Entries in the location cache.",
               [({}, len(cache))])
    out.family("gateway_cluster_pending_retirements", "gauge",
               "Older copies an unreachable peer must still drop (sent when it answers again).",
               [({"peer": p}, n) for p, n in sorted(cluster.pending_retirements().items())])
    out.family("gateway_cluster_repaired_copies_total", "counter",
               "Older copies that an overwrite had not retired, found by a listing or `gateway cluster repair` "
               "through this node and retired, by the node that held them.",
               [({"node": node}, n) for node, n in sorted(cluster.repaired.items())])


def render(service, gateway=None) -> str:
    out = Exposition()
    cluster = service.cluster
    labels = {"version": __version__}
    if cluster is not None:
        labels |= {"node_id": cluster.node_id, "role": cluster.role or ""}
    out.family("gateway_info", "gauge", "This gateway: version, and node id and role in a cluster.", [(labels, 1)])
    if gateway is not None:
        out.family("gateway_http_fast_reads_total", "counter",
                   "Plain object reads (GET, HEAD) answered below ASGI by the gateway's HTTP protocol.",
                   [({}, gateway.fast_reads)])
        if gateway.local_reads is not None:
            out.family("gateway_local_reads_total", "counter",
                       "Object files handed to readers on this host over --local-socket (docs/fuse.md, Local reads).",
                       [({}, gateway.local_reads.answered)])
    read_cache_metrics(out, service.local_backends)
    if service.reaper is not None and service.reaper.expiry > 0:
        out.family("gateway_multipart_uploads_aborted_total", "counter",
                   "Unfinished multipart uploads this node aborted after multipart_expiry.",
                   [({}, service.reaper.aborted)])
    if cluster is not None:
        cluster_metrics(out, cluster)
    return out.text()


def read_cache_metrics(out: Exposition, backends: dict) -> None:
    """The local backends' caches of small objects (plugins/readcache.py), per backend."""
    caches = [(name, b.small_objects) for name, b in backends.items()
              if getattr(b, "small_objects", None) is not None]
    if not caches:
        return
    for metric, kind, help_text, value in (
        ("hits_total", "counter", "Object reads answered from the cache of small objects.", lambda c: c.hits),
        ("misses_total", "counter", ("Object reads the cache of small objects did not answer: the "
                         "object's file was opened, or there was none (a missing key), or it was too large "
                         "to cache. hits / (hits + misses) is the share of reads served from memory."),
         lambda c: c.misses),
        ("bytes", "gauge", "Bytes held by the cache of small objects (data and overhead).", lambda c: c.size),
        ("entries", "gauge", "Objects held by the cache of small objects.", len),
        ("open_files", "gauge", "Objects the cache holds as open files (64 KiB to 1 MiB, sent with sendfile).",
         lambda c: c.files),
    ):
        out.family(f"gateway_local_read_cache_{metric}", kind, help_text,
                   [({"backend": name}, value(cache)) for name, cache in caches])


@router.get("/metrics")
@router.get("/_admin/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics of this node."""
    state = request.app.state
    return PlainTextResponse(render(state.service, getattr(state, "gateway", None)), media_type=CONTENT_TYPE)
