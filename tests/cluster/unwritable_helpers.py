"""What the tests of stores left out of write placement share (test_full_node.py, test_failed_store.py)."""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from botocore.exceptions import ClientError

from .conftest import ClusterNodes


def stored_on(nodes, name: str, bucket: str) -> int:
    """How many objects node ``name`` holds in ``bucket`` (its files, counted on its disk)."""
    return sum(1 for _ in (nodes[name].data_dir / bucket).rglob("*%obj"))


def store_left_out_in_metrics(nodes, name: str, family: str, left_out: str) -> bool:
    """Whether node ``name``'s /metrics lists node ``left_out`` under ``family``
    (gateway_cluster_store_full or gateway_cluster_store_failed)."""
    with urllib.request.urlopen(nodes[name].endpoint + "/metrics", timeout=10) as response:
        return f'{family}{{node="{left_out}",backend="' in response.read().decode()


def write_many(s3, bucket: str, prefix: str, count: int, body: bytes, refused_status: int,
               says: tuple[str, ...] = ()) -> list[str]:
    """PUT ``count`` objects one after another (no client retries); the keys refused with
    ``refused_status``, whose messages must contain every string of ``says``. Any other error fails."""
    refused = []
    for n in range(count):
        key = f"{prefix}-{n}"
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == refused_status, exc.response
            message = exc.response["Error"]["Message"]
            assert all(s in message for s in says), exc.response["Error"]
            refused.append(key)
    return refused


@contextlib.contextmanager
def primary_redundant_proxy(base: Path, redundant: str, env: dict[str, str]) -> Iterator[ClusterNodes]:
    """p1 (primary), node ``redundant`` and x1 (proxy) on an SQLite registry in ``base``, started with
    ``env`` and known to each other; stopped at the end."""
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    try:
        nodes.add("p1", "primary", env)
        nodes.add_many([(redundant, "redundant"), ("x1", "proxy")], env)
        nodes.wait_known(3)
        yield nodes
    finally:
        nodes.stop()
