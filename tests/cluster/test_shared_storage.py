"""Shared storage mode: the storing nodes use one directory through the sharedfs backend (as on NFS/EFS/SMB)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from .conftest import ClusterNodes

NODES = ("p1", "r1", "x1")


def _started(base, groups: list[tuple[list[tuple[str, str]], str | None]]) -> ClusterNodes:
    """A cluster on an SQLite registry: each group of (name, role) nodes with its config, the first
    group first (the primary registers before the others); stopped if any fails to start."""
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    try:
        for specs, config in groups:
            nodes.add_many(specs, config=config)
        nodes.wait_known(sum(len(specs) for specs, _ in groups))
    except BaseException:
        nodes.stop()
        raise
    return nodes


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster-shared")
    (base / "shared").mkdir()
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{base / "shared"}"\n'
    nodes = _started(base, [([("p1", "primary")], config), ([("r1", "redundant"), ("x1", "proxy")], config)])
    yield nodes
    nodes.stop()


def test_shared_storage_cluster_reads_lists_and_deletes_consistently(shared_cluster):
    s3 = {name: shared_cluster[name].client() for name in NODES}
    s3["p1"].create_bucket(Bucket="shared")
    for i, writer in enumerate(NODES * 3):
        s3[writer].put_object(Bucket="shared", Key=f"obj/{i:02d}", Body=f"{i}".encode())
    expected = [f"obj/{i:02d}" for i in range(9)]
    for name in NODES:
        for i, key in enumerate(expected):
            assert s3[name].get_object(Bucket="shared", Key=key)["Body"].read() == f"{i}".encode()
        # Every storing node lists the same files: the merged listing must not repeat them.
        keys = [o["Key"] for o in s3[name].list_objects_v2(Bucket="shared")["Contents"]]
        assert keys == expected, name
    s3["x1"].delete_object(Bucket="shared", Key="obj/00")
    for name in NODES:
        with pytest.raises(ClientError) as info:
            s3[name].head_object(Bucket="shared", Key="obj/00")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def _served(cluster, name: str) -> dict[tuple[str, str], float]:
    """requests_served_total of a node's /metrics as {(node, operation): count}, and outstanding per node."""
    with urllib.request.urlopen(cluster[name].endpoint + "/metrics", timeout=5) as response:
        text = response.read().decode()
    served = {}
    for node, op, count in re.findall(
            r'^gateway_cluster_requests_served_total\{node="([^"]+)",operation="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        served[node, op] = float(count)
    for node, count in re.findall(r'^gateway_cluster_requests_outstanding\{node="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        served[node, "outstanding"] = float(count)
    return served


def test_busy_primary_hands_reads_of_shared_objects_to_the_redundant_node(shared_cluster):
    s3 = shared_cluster["p1"].client(max_pool_connections=20)
    s3.create_bucket(Bucket="balanced")
    # Bigger than what the loopback socket buffers hold, so an unread response keeps its GET in flight.
    big = b"v" * (32 * 1024 * 1024)
    s3.put_object(Bucket="balanced", Key="big", Body=big)
    before = _served(shared_cluster, "p1")
    open_bodies = []
    try:
        for _ in range(8):  # responses left unread: the primary has GETs in flight
            open_bodies.append(s3.get_object(Bucket="balanced", Key="big")["Body"])
        during = _served(shared_cluster, "p1")
        handed = during.get(("r1", "get"), 0) - before.get(("r1", "get"), 0)
        local = during.get(("p1", "get"), 0) - before.get(("p1", "get"), 0)
        assert handed >= 1 and local >= 5, during  # the first ones locally, then spread
        assert during[("p1", "outstanding")] >= 5 and during[("r1", "outstanding")] >= 1, during
        assert open_bodies[-1].read(1024) == b"v" * 1024
    finally:
        for body in open_bodies:
            body.close()
    # Once the responses are gone nothing stays counted as in flight.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = _served(shared_cluster, "p1")
        if after.get(("p1", "outstanding"), 0) == 0 and after.get(("r1", "outstanding"), 0) == 0:
            break
        time.sleep(0.2)
    assert after.get(("p1", "outstanding"), 0) == 0 and after.get(("r1", "outstanding"), 0) == 0, after
    # An idle primary serves reads itself.
    s3.put_object(Bucket="balanced", Key="small", Body=b"s")
    for _ in range(5):
        assert s3.get_object(Bucket="balanced", Key="small")["Body"].read() == b"s"
    assert _served(shared_cluster, "p1").get(("r1", "get"), 0) == after.get(("r1", "get"), 0)


@pytest.fixture(scope="module")
def mixed_cluster(tmp_path_factory):
    """The middle of a migration (docs/migration.md): r1 serves from the share, p1 and r2 from their own disks."""
    base = tmp_path_factory.mktemp("cluster-mixed")
    (base / "share").mkdir()
    shared = f'[backends.local]\ntype = "sharedfs"\nroot = "{base / "share"}"\n'
    nodes = _started(base, [([("p1", "primary")], None), ([("r1", "redundant")], shared), ([("r2", "redundant")], None)])
    yield nodes
    nodes.stop()


def test_an_overwrite_through_a_node_on_the_share_retires_the_old_copy_on_a_node_not_migrated_yet(mixed_cluster):
    s3 = {name: mixed_cluster[name].client() for name in ("p1", "r1", "r2")}
    s3["p1"].create_bucket(Bucket="mixed")
    s3["r2"].put_object(Bucket="mixed", Key="cam/1.jpg", Body=b"old, on r2's disk")
    s3["r1"].put_object(Bucket="mixed", Key="cam/1.jpg", Body=b"new, on the share")
    # r2 reads its own disk first, p1 takes the first answer of r1 and r2: both must see the new version.
    for name in ("r2", "p1", "r1"):
        for _ in range(5):
            assert s3[name].get_object(Bucket="mixed", Key="cam/1.jpg")["Body"].read() == b"new, on the share", name


def test_an_overwrite_through_a_node_not_migrated_yet_retires_the_old_copy_on_the_share(mixed_cluster):
    s3 = {name: mixed_cluster[name].client() for name in ("p1", "r1", "r2")}
    s3["p1"].create_bucket(Bucket="mixed-back")
    s3["r1"].put_object(Bucket="mixed-back", Key="cam/2.jpg", Body=b"old, on the share")
    s3["r2"].put_object(Bucket="mixed-back", Key="cam/2.jpg", Body=b"new, on r2's disk")
    for name in ("r1", "p1", "r2"):
        for _ in range(5):
            got = s3[name].get_object(Bucket="mixed-back", Key="cam/2.jpg")["Body"].read()
            assert got == b"new, on r2's disk", name
    # A newer version on the share is kept: an older one written through r2 is dropped instead.
    s3["r1"].put_object(Bucket="mixed-back", Key="cam/3.jpg", Body=b"v1 share")
    s3["r2"].put_object(Bucket="mixed-back", Key="cam/3.jpg", Body=b"v2 r2")
    s3["r1"].put_object(Bucket="mixed-back", Key="cam/3.jpg", Body=b"v3 share")
    for name in ("r1", "p1", "r2"):
        assert s3[name].get_object(Bucket="mixed-back", Key="cam/3.jpg")["Body"].read() == b"v3 share", name


def test_every_node_of_a_cluster_part_way_through_a_migration_lists_every_object(mixed_cluster):
    """r1, already on the share, lists the share and the disks of the nodes not moved yet."""
    s3 = {name: mixed_cluster[name].client() for name in ("p1", "r1", "r2")}
    s3["p1"].create_bucket(Bucket="mixed-list")
    expected = []
    for i in range(9):
        writer = ("p1", "r1", "r2")[i % 3]
        key = f"cam/{writer}/{i}.jpg"
        s3[writer].put_object(Bucket="mixed-list", Key=key, Body=b"x")
        expected.append(key)
    for name in ("r1", "p1", "r2"):
        listed = [o["Key"] for page in s3[name].get_paginator("list_objects_v2").paginate(
            Bucket="mixed-list", PaginationConfig={"PageSize": 2}) for o in page.get("Contents", [])]
        assert listed == sorted(expected), name
        only_p1 = s3[name].list_objects_v2(Bucket="mixed-list", Prefix="cam/p1/")
        assert [o["Key"] for o in only_p1["Contents"]] == [k for k in sorted(expected) if "/p1/" in k], name
        folders = s3[name].list_objects_v2(Bucket="mixed-list", Prefix="cam/", Delimiter="/")["CommonPrefixes"]
        assert [f["Prefix"] for f in folders] == ["cam/p1/", "cam/r1/", "cam/r2/"], name


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts the share with mount --bind (needs root)")
class _TwoMounts:
    """p1 and r1 on one "share": a tmpfs (another filesystem than the mount points' own, as NFS would
    be) bind-mounted on each node's mount point, like the same export on two servers. ``unmount`` and
    ``mount`` take r1's away and give it back; everything is unmounted at the end."""

    def __init__(self, tmp_path, require_mount: bool):
        self.export = tmp_path / "export"
        self.mounts = {name: tmp_path / f"mnt-{name}" for name in ("p1", "r1")}
        self.mounted: list = []
        self.nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
        self.require_mount = require_mount

    def __enter__(self):
        for path in (self.export, *self.mounts.values()):
            path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "cv-export", str(self.export)], check=True)
        try:
            for name in self.mounts:
                self.mount(name)
            config = ('default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{}"\n'
                      + ("require_mount = true\n" if self.require_mount else ""))
            self.nodes.add_many([("p1", "primary")], config=config.format(self.mounts["p1"]))
            self.nodes.add_many([("r1", "redundant")], config=config.format(self.mounts["r1"]))
            self.nodes.wait_known(2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def mount(self, name: str) -> None:
        subprocess.run(["mount", "--bind", str(self.export), str(self.mounts[name])], check=True)
        self.mounted.append(self.mounts[name])

    def unmount(self, name: str) -> None:
        subprocess.run(["umount", str(self.mounts[name])], check=True)
        self.mounted.remove(self.mounts[name])

    def __exit__(self, *exc) -> None:
        self.nodes.stop()
        for path in self.mounted:
            subprocess.run(["umount", str(path)], check=False)
        subprocess.run(["umount", str(self.export)], check=False)


def test_a_share_unmounted_under_a_running_node_is_a_503_never_a_404(tmp_path):
    """require_mount is checked at start-up, and again whenever the share would answer "not there":
    unmounted, root is the bare mount-point directory, where every bucket seems gone."""
    with _TwoMounts(tmp_path, require_mount=True) as share:
        mounts = share.mounts
        s3 = {name: share.nodes[name].client() for name in mounts}
        s3["p1"].create_bucket(Bucket="mounted")
        s3["p1"].put_object(Bucket="mounted", Key="cam/1.jpg", Body=b"on the share")

        share.unmount("r1")
        assert s3["p1"].get_object(Bucket="mounted", Key="cam/1.jpg")["Body"].read() == b"on the share"
        # A read through the unmounted node is relayed to one whose share is mounted; only what no
        # node has is the 503 (this node could not look), never a 404.
        assert s3["r1"].get_object(Bucket="mounted", Key="cam/1.jpg")["Body"].read() == b"on the share"
        assert s3["r1"].head_object(Bucket="mounted", Key="cam/1.jpg")["ContentLength"] == len(b"on the share")
        calls = {
            "get": lambda: s3["r1"].get_object(Bucket="mounted", Key="cam/none.jpg"),
            "list": lambda: s3["r1"].list_objects_v2(Bucket="mounted"),
            "list buckets": lambda: s3["r1"].list_buckets(),
            "create bucket": lambda: s3["r1"].create_bucket(Bucket="another"),
            "delete": lambda: s3["r1"].delete_object(Bucket="mounted", Key="cam/none.jpg"),
        }
        for what, call in calls.items():
            with pytest.raises(ClientError) as info:
                call()
            error = info.value.response["Error"]
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, (what, error)
            assert "not mounted" in error["Message"] and "mount the share again" in error["Message"], (what, error)
        # A write through it goes to a node whose share is mounted (its store is noted failed).
        s3["r1"].put_object(Bucket="mounted", Key="cam/3.jpg", Body=b"placed on p1")
        assert s3["p1"].get_object(Bucket="mounted", Key="cam/3.jpg")["Body"].read() == b"placed on p1"
        assert os.listdir(mounts["r1"]) == []  # nothing was written on the bare directory

        share.mount("r1")
        s3["r1"].put_object(Bucket="mounted", Key="cam/2.jpg", Body=b"back")
        assert s3["p1"].get_object(Bucket="mounted", Key="cam/2.jpg")["Body"].read() == b"back"


def test_without_require_mount_a_write_through_a_node_whose_share_is_gone_is_not_stored_on_the_bare_directory(
        tmp_path):
    """The default (require_mount = false): a PUT through a node whose share was unmounted made the bucket
    again on the bare mount-point directory (the other nodes have it) and stored the object there,
    answered 200; once the share was mounted over it again, the object was gone for every node."""
    with _TwoMounts(tmp_path, require_mount=False) as share:
        s3 = {name: share.nodes[name].client() for name in share.mounts}
        s3["p1"].create_bucket(Bucket="mounted")
        share.unmount("r1")
        s3["r1"].put_object(Bucket="mounted", Key="cam/1.jpg", Body=b"acknowledged")  # placed on p1
        assert not (share.mounts["r1"] / "mounted").exists()  # nothing on the bare directory
        share.mount("r1")
        for name in share.mounts:
            assert s3[name].get_object(Bucket="mounted", Key="cam/1.jpg")["Body"].read() == b"acknowledged", name


def test_a_delete_never_reaches_a_frozen_node_on_the_share_late(tmp_path):
    """A node on the share frozen (a GC pause, a hung NFS client) and known as failed: the DELETE was sent
    to it without waiting, and it ran when the node woke, deleting the share's file, by then a newer PUT
    acknowledged after the DELETE: gone for every node."""
    (tmp_path / "shared").mkdir()
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{tmp_path / "shared"}"\n'
    cluster = _started(tmp_path, [([("p1", "primary")], config), ([("r1", "redundant"), ("r2", "redundant")], config)])
    try:
        p1 = cluster["p1"].client(retries={"total_max_attempts": 1, "mode": "standard"})
        r1 = cluster["r1"].client()
        p1.create_bucket(Bucket="late")
        cluster["r2"].pause()
        try:
            with pytest.raises(ClientError):
                p1.head_object(Bucket="late", Key="nowhere")  # waits for r2 once: p1 counts it failed
            p1.put_object(Bucket="late", Key="k", Body=b"v1")
            p1.delete_object(Bucket="late", Key="k")
            r1.put_object(Bucket="late", Key="k", Body=b"v2, acknowledged after the delete")
        finally:
            cluster["r2"].resume()
        time.sleep(2)  # r2 runs what waited in its sockets
        for name in ("p1", "r1", "r2"):
            body = cluster[name].client().get_object(Bucket="late", Key="k")["Body"].read()
            assert body == b"v2, acknowledged after the delete", name
    finally:
        cluster.stop()
