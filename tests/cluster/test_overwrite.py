"""Overwrites through any node leave one copy, the newest: reads through every node agree (SQLite registry)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from gateway.cluster.registry import Retirement, open_registry

NODES = ("p1", "r1", "r2", "x1")
STORING = ("p1", "r1", "r2")
BUCKET = "overwrite"


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    sqlite_cluster["p1"].client().create_bucket(Bucket=BUCKET)
    return sqlite_cluster


def copies_on_disk(cluster, key: str) -> list[str]:
    """The storing nodes that have a file for ``key`` (keys here have no "/")."""
    return [n for n in STORING if (cluster[n].data_dir / BUCKET / f"{key}%obj").exists()]


def read_everywhere(s3: dict, key: str) -> dict[str, bytes]:
    return {name: s3[name].get_object(Bucket=BUCKET, Key=key)["Body"].read() for name in NODES}


@pytest.mark.parametrize("first,second", [("r1", "r2"), ("r2", "x1"), ("x1", "p1"), ("p1", "r1"), ("r1", "x1")])
def test_overwrite_through_another_node_is_what_every_node_reads(cluster, first, second):
    s3 = {name: cluster[name].client() for name in NODES}
    key = f"{first}-then-{second}"
    s3[first].put_object(Bucket=BUCKET, Key=key, Body=b"version 1")
    # Every node reads v1 first, so each has the old location in its cache.
    assert set(read_everywhere(s3, key).values()) == {b"version 1"}
    s3[second].put_object(Bucket=BUCKET, Key=key, Body=b"version 2, longer")
    assert read_everywhere(s3, key) == {name: b"version 2, longer" for name in NODES}
    for name in NODES:
        assert s3[name].head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(b"version 2, longer"), name
    assert len(copies_on_disk(cluster, key)) == 1, copies_on_disk(cluster, key)
    listed = [o for o in s3["x1"].list_objects_v2(Bucket=BUCKET, Prefix=key)["Contents"]]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, len(b"version 2, longer"))]
    # A DELETE through any node removes it everywhere.
    s3[first].delete_object(Bucket=BUCKET, Key=key)
    assert copies_on_disk(cluster, key) == []
    for name in NODES:
        with pytest.raises(ClientError) as info:
            s3[name].get_object(Bucket=BUCKET, Key=key)
        assert info.value.response["Error"]["Code"] == "NoSuchKey", name


def test_concurrent_overwrites_through_two_nodes_settle_on_one_version(cluster):
    s3 = {name: cluster[name].client() for name in NODES}
    # Large enough to be fsynced in a thread: the other node's notice can then arrive while the
    # object is stamped but not yet published, the case where the writer must drop its own copy.
    padding = b"." * (3 * 1024 * 1024)
    for round_ in range(6):
        key = f"race-{round_}"
        s3["r1"].put_object(Bucket=BUCKET, Key=key, Body=b"old")
        barrier = threading.Barrier(2, timeout=30)
        failures = []

        def write(name: str, key=key, barrier=barrier, failures=failures) -> None:
            try:
                barrier.wait()
                s3[name].put_object(Bucket=BUCKET, Key=key, Body=f"written through {name}".encode() + padding)
            except Exception as exc:  # noqa: BLE001 - reported below; a thread must not swallow it
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in ("r1", "r2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures
        bodies = set(read_everywhere(s3, key).values())
        assert len(bodies) == 1 and bodies <= {b"written through r1" + padding, b"written through r2" + padding}, \
            [b[:20] for b in bodies]
        assert len(copies_on_disk(cluster, key)) == 1, (round_, copies_on_disk(cluster, key))


def peer_listing(cluster, node: str, bucket: str) -> dict:
    """``node``'s own page of a listing of ``bucket``, as a node merging a listing asks for it."""
    from gateway.cluster.peer_auth import PeerSigner

    from .conftest import SECRET

    target = f"/_cluster/v1/list/{bucket}"
    request = urllib.request.Request(cluster[node].endpoint + target,
                                     headers=PeerSigner(SECRET, "p1").headers("GET", target))
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_a_node_lists_the_copy_an_overwrite_elsewhere_just_dropped_until_the_key_is_deleted(cluster):
    """A merged listing takes each node's page at a slightly different moment: the page of the node
    the overwrite went to just before the new copy landed, and the old holder's just after it dropped
    its copy, had the key on neither (a key only ever overwritten missing from LIST: rclone sync
    deleted its copy). The old holder lists the key a moment more, in the version that replaced its
    copy (never the dropped version: that one came back while a DELETE of the new one ran), marked."""
    s3 = {name: cluster[name].client() for name in NODES}
    key = "moved-away"
    s3["r1"].put_object(Bucket=BUCKET, Key=key, Body=b"old")
    s3["r2"].put_object(Bucket=BUCKET, Key=key, Body=b"the new one")
    assert copies_on_disk(cluster, key) == ["r2"]
    new_etag = s3["r2"].head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    page = peer_listing(cluster, "r1", BUCKET)
    listed = {o["key"]: o for o in page["objects"]}
    assert key in listed and (listed[key]["size"], listed[key]["etag"]) == (11, new_etag), page
    assert key in page.get("superseded", []), page
    # The merge lists the newest copy, never the dropped one, and repairs nothing.
    merged = s3["x1"].list_objects_v2(Bucket=BUCKET, Prefix=key)["Contents"]
    assert [(o["Key"], o["ETag"]) for o in merged] == [(key, s3["r2"].head_object(Bucket=BUCKET, Key=key)["ETag"])]
    assert "did not retire" not in cluster["x1"].log()
    s3["p1"].delete_object(Bucket=BUCKET, Key=key)
    assert key not in [o["key"] for o in peer_listing(cluster, "r1", BUCKET)["objects"]]
    assert "Contents" not in s3["x1"].list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_a_listing_during_a_delete_never_shows_the_version_an_earlier_overwrite_replaced(cluster):
    """v1 through r1, v2 through r2 (r1 drops v1), then a DELETE while listings run through every node:
    each listing has v2 or nothing. Listing the dropped copy itself showed v1 (7 rounds in 25) in the
    moment the DELETE had removed v2 on r2 and not yet reached r1."""
    s3 = {name: cluster[name].client() for name in NODES}
    stale = []
    for round_ in range(12):
        key = f"deleted-while-listed/{round_}"
        s3["r1"].put_object(Bucket=BUCKET, Key=key, Body=b"v1")
        v1 = s3["r1"].head_object(Bucket=BUCKET, Key=key)["ETag"]
        s3["r2"].put_object(Bucket=BUCKET, Key=key, Body=b"v2-longer")
        stop = threading.Event()

        def list_through(name: str, key=key, v1=v1, stop=stop) -> None:
            for _ in range(200):
                if stop.is_set():
                    return
                for o in s3[name].list_objects_v2(Bucket=BUCKET, Prefix=key).get("Contents", []):
                    if o["ETag"] == v1:
                        stale.append((round_, name))

        listers = [threading.Thread(target=list_through, args=(n,)) for n in NODES]
        for thread in listers:
            thread.start()
        time.sleep(0.05)
        s3[("p1", "x1")[round_ % 2]].delete_object(Bucket=BUCKET, Key=key)
        time.sleep(0.05)
        stop.set()
        for thread in listers:
            thread.join(timeout=30)
        for name in NODES:
            assert "Contents" not in s3[name].list_objects_v2(Bucket=BUCKET, Prefix=key), (round_, name)
    assert not stale, stale


def test_listings_never_miss_a_key_that_is_only_being_overwritten(cluster):
    """Overwrites through r1 and r2 in turn (the key moves between them each time) while listings run
    through the proxy and the primary: every listing has the key, and no overwrite in flight is taken
    for one that failed to retire its older copy (it was a warning on every busy key)."""
    s3 = {name: cluster[name].client() for name in NODES}
    key = "busy-key"
    s3["r1"].put_object(Bucket=BUCKET, Key=key, Body=b"first")
    stop = threading.Event()
    failures: list = []

    def overwrite(name: str) -> None:
        try:
            for i in range(400):
                if stop.is_set():
                    return
                s3[name].put_object(Bucket=BUCKET, Key=key, Body=f"{name}-{i}".encode())
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    writers = [threading.Thread(target=overwrite, args=(n,)) for n in ("r1", "r2")]
    for thread in writers:
        thread.start()
    missing, listings = [], 0
    deadline = time.monotonic() + 8
    try:
        while time.monotonic() < deadline and listings < 600:
            lister = ("x1", "p1")[listings % 2]
            keys = [o["Key"] for o in s3[lister].list_objects_v2(Bucket=BUCKET, Prefix="busy-").get("Contents", [])]
            listings += 1
            if keys != [key]:
                missing.append((lister, keys))
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=60)
    assert not failures, failures
    assert listings > 50
    assert not missing, f"{len(missing)} of {listings} listings without the key: {missing[:5]}"
    time.sleep(0.5)  # a repair of the last listings had its HEADs answered (it no longer starts at once)
    for name in NODES:
        assert "did not retire" not in cluster[name].log(), name


def test_concurrent_puts_of_a_new_key_through_every_node_never_lose_it(cluster):
    """Two PUTs of one key at once on the same node (as well as on others): the later one by time must
    be what that node keeps, whichever is fsynced first. Renamed over the newer one, the older one
    undid what the other nodes had decided (they had dropped their copies for the newer one), and
    after eight 200s the key was gone from every node."""
    s3 = {name: cluster[name].client(max_pool_connections=16) for name in NODES}
    writers = [name for name in NODES for _ in range(2)]
    lost, mixed = [], []
    for round_ in range(30):
        key = f"new-race-{round_}"
        barrier = threading.Barrier(len(writers), timeout=30)
        failures = []

        def write(name: str, number: int, key=key, barrier=barrier, failures=failures) -> None:
            try:
                barrier.wait()
                s3[name].put_object(Bucket=BUCKET, Key=key, Body=f"v{number}".encode())
            except Exception as exc:  # noqa: BLE001 - reported below; a thread must not swallow it
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(n, i)) for i, n in enumerate(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures
        try:
            bodies = set(read_everywhere(s3, key).values())
        except ClientError as exc:
            lost.append((key, exc.response["Error"]["Code"], copies_on_disk(cluster, key)))
            continue
        if len(bodies) != 1:
            mixed.append((key, bodies))
    assert not lost, f"keys every PUT of which was answered 200, then missing: {lost}"
    assert not mixed, mixed


def test_node_that_was_down_during_an_overwrite_drops_its_old_copy_when_back(cluster):
    s3 = {name: cluster[name].client() for name in NODES}
    s3["r2"].put_object(Bucket=BUCKET, Key="missed", Body=b"old, on r2")
    cluster["r2"].kill()
    try:
        s3["r1"].put_object(Bucket=BUCKET, Key="missed", Body=b"new, on r1")
        assert cluster.admin("r1")["pending_retirements"] == {"r2": 1}
    finally:
        cluster.restart("r2")
    # r1 pings r2 on its heartbeat, finds it back, and tells it to drop the old copy.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and cluster.admin("r1")["pending_retirements"]:
        time.sleep(0.2)
    assert cluster.admin("r1")["pending_retirements"] == {}
    assert copies_on_disk(cluster, "missed") == ["r1"]
    assert read_everywhere(s3, "missed") == {name: b"new, on r1" for name in NODES}


def test_retirement_survives_a_restart_of_the_writer(cluster):
    """The writer is killed before the node that missed the overwrite comes back: that node still
    drops its old copy, at start-up, before it serves anything (the retirement is in the registry)."""
    s3 = {name: cluster[name].client() for name in NODES}
    s3["r2"].put_object(Bucket=BUCKET, Key="writer-restarts", Body=b"old, on r2")
    cluster["r2"].kill()
    try:
        s3["r1"].put_object(Bucket=BUCKET, Key="writer-restarts", Body=b"new, on r1")
        assert cluster.admin("r1")["pending_retirements"] == {"r2": 1}
        cluster["r1"].kill()  # kill -9: whatever r1 kept in memory is gone
        cluster.restart("r1")
    finally:
        cluster.restart("r2")
    # No waiting: r2 applied it before it answered its first request.
    assert copies_on_disk(cluster, "writer-restarts") == ["r1"]
    assert cluster["r2"].client().get_object(Bucket=BUCKET, Key="writer-restarts")["Body"].read() == b"new, on r1"
    s3 = {name: cluster[name].client() for name in NODES}
    assert read_everywhere(s3, "writer-restarts") == {name: b"new, on r1" for name in NODES}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and cluster.admin("r1")["pending_retirements"]:
        time.sleep(0.2)
    assert cluster.admin("r1")["pending_retirements"] == {}


def test_running_node_applies_a_retirement_on_its_next_heartbeat(cluster):
    """A node that was only cut off (it kept running) finds what it missed in the registry: here the
    retirement is written there directly, as a writer that could not reach the node does."""
    s3 = cluster["r2"].client()
    s3.put_object(Bucket=BUCKET, Key="cut-off", Body=b"old, on r2")
    old = s3.head_object(Bucket=BUCKET, Key="cut-off")
    newer = Retirement(BUCKET, "cut-off", old["LastModified"].timestamp() + 60, '"a-newer-etag"')

    asyncio.run(_add(cluster.registry, "r2", newer))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and copies_on_disk(cluster, "cut-off"):
        time.sleep(0.1)
    assert copies_on_disk(cluster, "cut-off") == []
    # An entry for a version older than the copy is applied too, and leaves the copy alone.
    s3.put_object(Bucket=BUCKET, Key="kept", Body=b"current")
    asyncio.run(_add(cluster.registry, "r2", Retirement(BUCKET, "kept", 1.0, '"ancient"')))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and asyncio.run(_pending(cluster.registry, "r2")):
        time.sleep(0.1)
    assert asyncio.run(_pending(cluster.registry, "r2")) == []
    assert s3.get_object(Bucket=BUCKET, Key="kept")["Body"].read() == b"current"


async def _add(url: str, node: str, item: Retirement) -> None:
    registry = open_registry(url)
    try:
        assert await registry.add_retirement(node, item, limit=10)
    finally:
        await registry.close()


async def _pending(url: str, node: str) -> list:
    registry = open_registry(url)
    try:
        return await registry.retirements(node, 10)
    finally:
        await registry.close()


@pytest.mark.parametrize("first,second", [("r1", "r2"), ("x1", "p1")])
def test_create_only_puts_racing_through_two_nodes_give_one_200_and_one_412(cluster, first, second):
    """If-None-Match: * through two nodes at the same moment: the registry's lock orders them, so one
    creates the object and the other finds it (each node alone would let both pass the check)."""
    s3 = {name: cluster[name].client() for name in NODES}
    for round_ in range(6):
        key = f"create-only-{first}-{second}-{round_}"
        barrier = threading.Barrier(2, timeout=30)
        outcome = {}

        def put(name, key=key, barrier=barrier, outcome=outcome):
            barrier.wait()
            try:
                s3[name].put_object(Bucket=BUCKET, Key=key, Body=f"by {name}".encode(), IfNoneMatch="*")
                outcome[name] = 200
            except ClientError as exc:
                outcome[name] = exc.response["ResponseMetadata"]["HTTPStatusCode"]

        threads = [threading.Thread(target=put, args=(n,)) for n in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcome.values()) == [200, 412], (round_, outcome)
        winner = next(name for name, status in outcome.items() if status == 200)
        assert read_everywhere(s3, key) == {name: f"by {winner}".encode() for name in NODES}
        assert len(copies_on_disk(cluster, key)) == 1


def test_create_only_put_is_checked_against_the_cluster_not_a_cached_miss(cluster):
    """The proxy remembers a miss for a second and is not told of other nodes' writes; the check of a
    conditional PUT must ask the nodes again, or it would replace what another node just created."""
    s3 = {name: cluster[name].client() for name in NODES}
    for round_ in range(3):
        key = f"cached-miss-{round_}"
        with pytest.raises(ClientError):
            s3["x1"].head_object(Bucket=BUCKET, Key=key)  # x1 now caches "missing"
        s3["r2"].put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
        with pytest.raises(ClientError) as info:
            s3["x1"].put_object(Bucket=BUCKET, Key=key, Body=b"second", IfNoneMatch="*")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        etag = s3["r2"].head_object(Bucket=BUCKET, Key=key)["ETag"]
        s3["x1"].put_object(Bucket=BUCKET, Key=key, Body=b"replaced", IfMatch=etag)  # If-Match finds it too
        assert read_everywhere(s3, key) == {name: b"replaced" for name in NODES}


def test_node_that_left_and_rejoins_with_its_data_drops_what_was_replaced(cluster):
    """`cluster leave` of a node that is down, then the node started again on its old data: the
    retirements recorded for it while it was away still apply (they used to leave with it)."""
    s3 = {name: cluster[name].client() for name in NODES}
    s3["r1"].put_object(Bucket=BUCKET, Key="rejoined", Body=b"old, on r1")
    cluster["r1"].kill()
    try:
        s3["x1"].put_object(Bucket=BUCKET, Key="rejoined", Body=b"new")
        # --force: r1 holds objects (leave refuses that otherwise); it comes back with them.
        left = subprocess.run([sys.executable, "-m", "gateway", "cluster", "leave", "--registry", cluster.registry,
                               "--node-id", "r1", "--force"], capture_output=True, text=True, timeout=60)
        assert left.returncode == 0, left.stderr
    finally:
        cluster.restart("r1")
    cluster.wait_known(4)
    assert "r1" not in copies_on_disk(cluster, "rejoined")
    s3 = {name: cluster[name].client() for name in NODES}
    assert read_everywhere(s3, "rejoined") == {name: b"new" for name in NODES}


def test_nodes_register_again_when_the_registry_file_is_replaced(cluster):
    """The SQLite registry deleted while every node runs (an operator's mistake, a restored disk): each
    node finds the registry empty at its next heartbeat and registers again; nothing needs a restart."""
    path = cluster.registry.split("://", 1)[1]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--json", "--registry",
                              cluster.registry], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and {r["node_id"] for r in json.loads(out.stdout)} == set(NODES):
            break
        time.sleep(0.3)
    assert out.returncode == 0 and {r["node_id"] for r in json.loads(out.stdout)} == set(NODES), out.stderr
    roles = {r["node_id"]: r["role"] for r in json.loads(out.stdout)}
    assert roles == {"p1": "primary", "r1": "redundant", "r2": "redundant", "x1": "proxy"}
    cluster.wait_known(4)
    s3 = {name: cluster[name].client() for name in NODES}
    s3["r2"].put_object(Bucket=BUCKET, Key="after-reset", Body=b"works")
    assert read_everywhere(s3, "after-reset") == {name: b"works" for name in NODES}
