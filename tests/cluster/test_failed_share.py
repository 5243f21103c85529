"""A storing node whose mount of the shared storage drops while it runs takes no placed writes for a
while, and serves reads through the nodes that still see the share (gateway/cluster/unwritable.py).

Real cluster on shared storage: one tmpfs "share", mounted (bind) at the primary's and the redundant
node's own mount points, as each server mounts the NFS export; a proxy. The redundant node's mount is
taken away while it runs (an automounter's timeout, an operator's umount). Before, the primary and
the proxy kept placing about half of the writes there, each a 503; then one write per placing node
still was; now that one is placed again elsewhere.
"""

from __future__ import annotations

import subprocess

from botocore.exceptions import ClientError

from gateway.testing.disks import bind_mount, tmpfs

from .conftest import ClusterNodes, wait_for
from .unwritable_helpers import store_left_out_in_metrics, write_many

RETRY = 6  # failed_store_retry
BODY = b"s" * 8 * 1024


def placed_on(nodes, name: str) -> int:
    """How many writes the primary placed on node ``name`` (its balancer's count)."""
    return nodes.admin("p1")["balance"].get(name, {}).get("placed", 0)


def test_writes_go_around_a_node_that_lost_its_mount_of_the_share_and_reads_through_it_go_on(tmp_path):
    with tmpfs(tmp_path / "share", "64m") as share, bind_mount(share, tmp_path / "p1-mnt") as p1_mnt, \
            bind_mount(share, tmp_path / "r1-mnt") as r1_mnt:
        nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
        try:
            env = {"GATEWAY_FAILED_STORE_RETRY": str(RETRY)}
            config = 'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{}"\nrequire_mount = true\n'
            nodes.add("p1", "primary", env, config=config.format(p1_mnt))
            nodes.add("r1", "redundant", env, config=config.format(r1_mnt))
            nodes.add("x1", "proxy", env)
            nodes.wait_known(3)
            primary, proxy, r1 = nodes["p1"].client(), nodes["x1"].client(), nodes["r1"].client()
            primary.create_bucket(Bucket="events")
            stored = write_many(primary, "events", "before", 10, BODY, 503)
            assert stored == [] and placed_on(nodes, "r1") > 0, "the primary never placed a write on r1"

            subprocess.run(["umount", "-l", str(r1_mnt)], check=True, timeout=30)
            refused = (write_many(primary, "events", "via-primary", 30, BODY, 503, says=("not mounted",))
                       + write_many(proxy, "events", "via-proxy", 30, BODY, 503, says=("not mounted",)))
            assert refused == [], f"{len(refused)} of 60 writes were answered 503: {refused}"
            assert store_left_out_in_metrics(nodes, "x1", "gateway_cluster_store_failed", "r1"), \
                "the proxy never placed a write on r1"

            def r1_publishes_its_failed_store() -> bool:
                # A write sent to r1 itself goes to the primary; it finds r1's store failed again when
                # the note lapsed (it lasts RETRY seconds from the last write that failed there).
                assert write_many(r1, "events", "direct", 1, BODY, 503) == []
                return {r["node_id"]: r["storage_failed"] for r in nodes.status()}["r1"] == ["shared"]

            wait_for(r1_publishes_its_failed_store, 10, "r1 publishing storage_failed")

            # A key that is nowhere is a 404 through the nodes that see the share (and a DELETE of it a
            # 204): r1, whose mount failed, holds nothing the share lacks. Every miss was a 503 naming it.
            for client in (primary, proxy):
                for call in (lambda: client.head_object(Bucket="events", Key="never-written"),
                             lambda: client.get_object(Bucket="events", Key="never-written")):
                    try:
                        call()
                        raise AssertionError("a key that is nowhere was found")
                    except ClientError as exc:
                        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404, exc.response
                assert client.delete_object(Bucket="events", Key="never-written")["ResponseMetadata"][
                    "HTTPStatusCode"] == 204

            # Reads through the node without the share are answered by a node that sees it.
            keys = [f"before-{n}" for n in range(10)] + ["direct-0"] + [
                f"{p}-{n}" for p in ("via-primary", "via-proxy") for n in range(30)]
            unread = [k for k in keys if r1.get_object(Bucket="events", Key=k)["Body"].read() != BODY]
            assert not unread, f"not readable through r1: {unread}"

            # Mounted again: once failed_store_retry has passed, writes are placed there again.
            subprocess.run(["mount", "--bind", str(share), str(r1_mnt)], check=True, timeout=30)
            wait_for(lambda: not store_left_out_in_metrics(nodes, "p1", "gateway_cluster_store_failed", "r1"),
                     RETRY + 15, "the primary forgetting the failed store")
            before = placed_on(nodes, "r1")
            assert write_many(primary, "events", "after", 30, BODY, 503) == []
            assert placed_on(nodes, "r1") > before, "no write was placed on r1 after its share came back"
        finally:
            nodes.stop()
