"""Relay, proxy and load balancing across 1 primary + 2 redundant + 1 proxy on the SQLite registry."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from .conftest import NODES, clients, error_of


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    nodes = sqlite_cluster
    nodes["p1"].client().create_bucket(Bucket="relay")
    return nodes


def test_bucket_created_on_one_node_exists_on_every_node(cluster):
    for name, s3 in clients(cluster).items():
        assert "relay" in [b["Name"] for b in s3.list_buckets()["Buckets"]], name
        s3.head_bucket(Bucket="relay")


@pytest.mark.parametrize("writer", NODES)
def test_object_put_on_one_node_is_readable_headable_deletable_through_every_other(cluster, writer):
    s3 = clients(cluster)
    key = f"from-{writer}/face.jpg"
    body = f"image written through {writer}".encode() * 100
    s3[writer].put_object(Bucket="relay", Key=key, Body=body, ContentType="image/jpeg", Metadata={"camera": "7"})
    for name in NODES:
        got = s3[name].get_object(Bucket="relay", Key=key)
        assert got["Body"].read() == body, name
        assert got["ContentType"] == "image/jpeg" and got["Metadata"] == {"camera": "7"}, name
        head = s3[name].head_object(Bucket="relay", Key=key)
        assert head["ContentLength"] == len(body), name
        ranged = s3[name].get_object(Bucket="relay", Key=key, Range="bytes=6-10")
        assert ranged["Body"].read() == body[6:11], name
    deleter = NODES[(NODES.index(writer) + 1) % len(NODES)]
    s3[deleter].delete_object(Bucket="relay", Key=key)
    for client in s3.values():
        assert error_of(lambda client=client: client.head_object(Bucket="relay", Key=key)).response[
            "ResponseMetadata"]["HTTPStatusCode"] == 404
        error = error_of(lambda client=client: client.get_object(Bucket="relay", Key=key))
        assert error.response["Error"]["Code"] == "NoSuchKey"


def negative_hits(node) -> float:
    """The node's cached-miss lookups (GET /metrics)."""
    with urllib.request.urlopen(node.endpoint + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r'^gateway_cluster_location_cache_lookups_total\{result="negative"\} (\S+)$', text,
                           re.MULTILINE).group(1))


def test_a_key_written_through_one_node_is_read_at_once_through_another_that_had_just_missed_it(cluster):
    """Every node caches a miss for a second (repeated misses do not ask every node); a write of the
    key tells the nodes that had just missed it (gateway/cluster/watchers.py), so a client that writes
    through one node and reads through another reads what it wrote at once. Through the proxy that
    was a 404 for up to a second after the PUT was answered."""
    s3 = clients(cluster)
    for reader in NODES:
        for writer in NODES:
            key = f"read-after-write/{reader}-after-{writer}"
            assert error_of(lambda: s3[reader].get_object(Bucket="relay", Key=key)).response["Error"]["Code"] == \
                "NoSuchKey"
            cached = negative_hits(cluster[reader])
            assert error_of(lambda: s3[reader].head_object(Bucket="relay", Key=key)).response[
                "ResponseMetadata"]["HTTPStatusCode"] == 404
            assert negative_hits(cluster[reader]) > cached, "the second miss came from the cache"
            s3[writer].put_object(Bucket="relay", Key=key, Body=key.encode())
            assert s3[reader].get_object(Bucket="relay", Key=key)["Body"].read() == key.encode(), (reader, writer)
            assert s3[reader].head_object(Bucket="relay", Key=key)["ContentLength"] == len(key)
    # The same for an object that a multipart upload completes.
    key = "read-after-write/multipart"
    assert error_of(lambda: s3["x1"].get_object(Bucket="relay", Key=key)).response["Error"]["Code"] == "NoSuchKey"
    upload = s3["r1"].create_multipart_upload(Bucket="relay", Key=key)["UploadId"]
    part = s3["r1"].upload_part(Bucket="relay", Key=key, UploadId=upload, PartNumber=1, Body=b"one part")
    s3["r1"].complete_multipart_upload(Bucket="relay", Key=key, UploadId=upload,
                                       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3["x1"].get_object(Bucket="relay", Key=key)["Body"].read() == b"one part"


def test_tricky_keys_relay_through_every_node(cluster):
    """Keys that break object stores (escapes, dot segments, unicode, 1,024 bytes) keep their exact
    names on the way through the peer routes: read, listed and deleted through the other nodes."""
    from gateway.testing.conformance_keys import TRICKY_KEYS

    s3 = clients(cluster)
    s3["p1"].create_bucket(Bucket="tricky")
    keys = sorted(set(TRICKY_KEYS))
    for i, key in enumerate(keys):
        s3["r1"].put_object(Bucket="tricky", Key=key, Body=f"{i}".encode())
    for name in ("p1", "r2", "x1"):
        for i, key in enumerate(keys):
            assert s3[name].get_object(Bucket="tricky", Key=key)["Body"].read() == f"{i}".encode(), (name, key)
            assert s3[name].head_object(Bucket="tricky", Key=key)["ContentLength"] == len(f"{i}"), (name, key)
        listed, token = [], None
        while True:
            page = s3[name].list_objects_v2(Bucket="tricky", **({"ContinuationToken": token} if token else {}))
            listed += [o["Key"] for o in page.get("Contents", [])]
            if not page["IsTruncated"]:
                break
            token = page["NextContinuationToken"]
        assert sorted(listed, key=lambda k: k.encode()) == sorted(keys, key=lambda k: k.encode()), name
    for key in keys:
        s3["x1"].delete_object(Bucket="tricky", Key=key)
    for name in NODES:
        assert s3[name].list_objects_v2(Bucket="tricky")["KeyCount"] == 0, name


def test_missing_bucket_and_missing_key_are_told_apart_through_every_node(cluster):
    # A node tries its own storage without asking whether it has the bucket, and asks only when no
    # peer has the bucket either: a bucket that only one node's storage holds is still a bucket.
    (cluster["r1"].data_dir / "only-on-r1").mkdir()  # a bucket directory made by hand, on one node
    s3 = clients(cluster)
    for name in NODES:
        code = error_of(lambda c=s3[name]: c.get_object(Bucket="no-such-bucket", Key="k")).response["Error"]["Code"]
        assert code == "NoSuchBucket", name
        assert error_of(lambda c=s3[name]: c.get_object(Bucket="relay", Key="no/such/key")).response[
            "Error"]["Code"] == "NoSuchKey", name
        for method in ("get_object", "head_object"):
            response = error_of(lambda c=s3[name], m=method: getattr(c, m)(Bucket="only-on-r1", Key="k")).response
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 404, (name, method)
            if method == "get_object":
                assert response["Error"]["Code"] == "NoSuchKey", name


def test_large_object_streams_through_the_proxy_both_ways(cluster):
    s3 = clients(cluster)
    body = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MiB: streamed, not read in one piece
    s3["x1"].put_object(Bucket="relay", Key="big.bin", Body=body)
    for name in NODES:
        assert s3[name].get_object(Bucket="relay", Key="big.bin")["Body"].read() == body, name


def test_primary_spreads_new_objects_over_itself_and_the_redundant_nodes(cluster):
    s3 = cluster["p1"].client()
    for i in range(30):
        s3.put_object(Bucket="relay", Key=f"spread/{i:03d}", Body=b"x")
    placed = cluster.admin("p1")["balance"]
    assert set(placed) == {"p1", "r1", "r2"}, placed
    # Each stored object is on exactly one node: the local listings add up to 30.
    on_disk = sum(len(list((cluster[n].data_dir / "relay" / "spread").glob("*%obj")))
                  for n in ("p1", "r1", "r2") if (cluster[n].data_dir / "relay" / "spread").exists())
    assert on_disk == 30
    # An overwrite through the primary replaces the object where it lives.
    s3.put_object(Bucket="relay", Key="spread/000", Body=b"new")
    assert cluster["r2"].client().get_object(Bucket="relay", Key="spread/000")["Body"].read() == b"new"


def test_a_node_down_when_a_bucket_was_made_gets_it_with_its_first_write(cluster):
    """A bucket created while a redundant node is down is missing there. The node's first write to
    it creates it: a PUT placed there by the primary (ensure-bucket on the peer route), or one sent
    to the node itself (it asks its peers whether the bucket exists). No write fails for it."""
    s3 = clients(cluster)
    cluster["r2"].kill()  # kill -9
    try:
        s3["p1"].create_bucket(Bucket="late-placed")
        s3["p1"].create_bucket(Bucket="late-direct")
    finally:
        cluster.restart("r2")
    assert not (cluster["r2"].data_dir / "late-placed").exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not cluster.admin("p1")["peers"]["r2"]["healthy"]:
        time.sleep(0.2)  # the heartbeat probes limited peers
    s3["r2"].put_object(Bucket="late-direct", Key="first", Body=b"written on r2 itself")
    assert (cluster["r2"].data_dir / "late-direct" / "first%obj").exists()
    for i in range(30):
        s3["p1"].put_object(Bucket="late-placed", Key=f"k{i:02d}", Body=f"value {i}".encode())
    on_r2 = list((cluster["r2"].data_dir / "late-placed").glob("*%obj"))
    assert on_r2, "the primary placed none of 30 writes on r2"
    for name in NODES:
        keys = [o["Key"] for o in s3[name].list_objects_v2(Bucket="late-placed")["Contents"]]
        assert keys == [f"k{i:02d}" for i in range(30)], name
        key = on_r2[0].name[:-len("%obj")]
        assert s3[name].get_object(Bucket="late-placed", Key=key)["Body"].read() == f"value {int(key[1:])}".encode()
        assert s3[name].get_object(Bucket="late-direct", Key="first")["Body"].read() == b"written on r2 itself"


def test_primary_stores_an_overwrite_itself_when_the_node_holding_the_key_is_down(cluster):
    """The primary places an overwrite on the node its location cache says holds the key. When that
    node is down (its connection refused), the primary places the new version on another node (itself
    or r2, the less busy), and the node drops its old copy once it answers again: no failed write, no
    old version served."""
    s3 = clients(cluster)
    s3["r1"].put_object(Bucket="relay", Key="fallback", Body=b"old, on r1")
    assert s3["p1"].get_object(Bucket="relay", Key="fallback")["Body"].read() == b"old, on r1"  # p1 learns: on r1
    on_p1, on_r1, on_r2 = (cluster[name].data_dir / "relay" / "fallback%obj" for name in ("p1", "r1", "r2"))
    assert on_r1.exists() and not on_p1.exists() and not on_r2.exists()
    cluster["r1"].kill()  # kill -9
    try:
        s3["p1"].put_object(Bucket="relay", Key="fallback", Body=b"the new version")
        assert on_p1.exists() or on_r2.exists(), "the overwrite was not stored on another node"
        assert " instead of r1: " in cluster["p1"].log(), "the overwrite was not placed on r1 first"
        for name in ("p1", "r2", "x1"):
            assert s3[name].get_object(Bucket="relay", Key="fallback")["Body"].read() == b"the new version", name
    finally:
        cluster.restart("r1")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and on_r1.exists():
        time.sleep(0.2)  # told on the primary's first heartbeat round after r1 answers again
    assert not on_r1.exists(), "r1 kept the old version"
    for name in NODES:
        assert s3[name].get_object(Bucket="relay", Key="fallback")["Body"].read() == b"the new version", name


def test_an_overwrite_sent_to_a_frozen_holder_is_stored_elsewhere_not_refused(cluster):
    """The primary places an overwrite on the node holding the key; that node is frozen (SIGSTOP: the
    connection is accepted and the body sent, no answer comes). After the peer timeout the write is
    placed again with the body the primary kept, not answered 503 (it was, since part of the body
    had gone out), and every node reads the new version, the frozen one too once it runs again."""
    s3 = clients(cluster)
    s3["r2"].put_object(Bucket="relay", Key="frozen-holder", Body=b"old, on r2")
    assert s3["p1"].get_object(Bucket="relay", Key="frozen-holder")["Body"].read() == b"old, on r2"
    new = b"new version " * 2000  # 24 KB: all of it is sent to r2 before the primary waits for an answer
    reader = cluster["p1"].client(retries={"total_max_attempts": 1, "mode": "standard"})
    cluster["r2"].pause()
    try:
        started = time.monotonic()
        reader.put_object(Bucket="relay", Key="frozen-holder", Body=new)  # no client retry: one try
        assert time.monotonic() - started < 15
        assert "placed on" in cluster["p1"].log() and "instead of r2" in cluster["p1"].log()
        for name in ("p1", "r1", "x1"):
            assert s3[name].get_object(Bucket="relay", Key="frozen-holder")["Body"].read() == new, name
    finally:
        cluster["r2"].resume()
    for name in NODES:
        assert s3[name].get_object(Bucket="relay", Key="frozen-holder")["Body"].read() == new, name


def test_listing_merges_all_nodes_in_order_without_duplicates_and_pages(cluster):
    s3 = clients(cluster)
    expected = []
    for i, writer in enumerate(["r1", "r2", "p1", "r1", "r2", "p1", "r1"] * 3):
        key = f"merge/{i:02d}"
        s3[writer].put_object(Bucket="relay", Key=key, Body=b"m")
        expected.append(key)
    for name in NODES:
        keys, token = [], None
        while True:
            kwargs = {"ContinuationToken": token} if token else {}
            page = s3[name].list_objects_v2(Bucket="relay", Prefix="merge/", MaxKeys=4, **kwargs)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page["IsTruncated"]:
                break
            token = page["NextContinuationToken"]
        assert keys == sorted(expected), name
        top = s3[name].list_objects_v2(Bucket="relay", Delimiter="/")
        assert "merge/" in [p["Prefix"] for p in top.get("CommonPrefixes", [])], name


def test_listing_metadata_through_every_node(cluster):
    """ListObjectsV2 metadata=true through a storing node or the proxy: the merged page of objects
    stored on different nodes carries each one's metadata (the peers' pages say they do)."""
    from gateway.fuse.client import ObjectClient  # the mount's client: it asks with metadata=true

    s3 = clients(cluster)
    for writer in ("p1", "r1", "r2", "x1"):
        s3[writer].put_object(Bucket="relay", Key=f"listmeta/{writer}", Body=b"m", Metadata={"writer": writer})
    for name in NODES:
        node = cluster[name]
        client = ObjectClient(node.endpoint, node.access_key, node.secret_key)
        try:
            page = client.list_page("relay", "listmeta/", "/")
        finally:
            client.close()
        assert [(o.key, o.metadata) for o in page.objects] == \
            [(f"listmeta/{w}", {"writer": w}) for w in ("p1", "r1", "r2", "x1")], name


def test_peer_routes_refuse_client_credentials_and_unsigned_requests(cluster):
    import urllib.error
    import urllib.request

    url = cluster["r1"].endpoint + "/_cluster/v1/objects/relay/anything"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 403
    unsigned = urllib.request.Request(cluster["r1"].endpoint + "/_cluster/v1/locations/relay/anything", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(unsigned, timeout=5)
    assert info.value.code == 403
    s3 = cluster["r1"].client()
    # A correctly SigV4-signed S3 request to a peer path is refused too (bucket names cannot start with "_").
    error = error_of(lambda: s3.get_object(Bucket="_cluster", Key="v1/objects/relay/anything"))
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)


def test_ping_answers_who_and_what_a_node_is(cluster):
    """Nodes ping each other when they start (so the others re-read the registry) and to probe a
    de-prioritized peer; the answer names the node and its role, and nothing is logged as failed."""
    import json
    import urllib.request

    from gateway.cluster.peer_auth import PeerSigner

    from .conftest import SECRET

    target = "/_cluster/v1/ping"
    for name, role in (("p1", "primary"), ("r1", "redundant"), ("x1", "proxy")):
        request = urllib.request.Request(cluster[name].endpoint + target,
                                         headers=PeerSigner(SECRET, "r2").headers("GET", target))
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read()) == {"node_id": name, "role": role, "plain_http_peers": True}
        assert "peer request GET /_cluster/v1/ping failed" not in cluster[name].log(), name


def test_peer_routes_answer_malformed_requests_with_400_and_store_nothing(cluster):
    """Only a node with the cluster secret gets this far, but a bad value is still a clear 400, not a 500."""
    import urllib.error
    import urllib.request

    from gateway.cluster import wire
    from gateway.cluster.peer_auth import HEADER, PeerSigner

    from .conftest import SECRET

    def call(method, target, headers=None, body=None):
        signed = PeerSigner(SECRET, "r2").headers(method, target)
        request = urllib.request.Request(cluster["r1"].endpoint + target, data=body, method=method,
                                         headers={**signed, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    assert call("GET", "/_cluster/v1/list/relay?max-keys=abc")[0] == 400
    assert call("GET", "/_cluster/v1/list/relay?max-keys=%C2%B2")[0] == 400
    for header, value in ((wire.SIZE_HEADER, "abc"), (wire.META_HEADER, "{bad"), (wire.META_HEADER, "[]"),
                          (wire.ALGORITHMS_HEADER, "BOGUS")):
        status, body = call("PUT", "/_cluster/v1/objects/relay/peer-bad", {header: value}, b"xyz")
        assert status == 400 and header.encode() in body, (header, value, status, body)
    assert not (cluster["r1"].data_dir / "relay" / "peer-bad%obj").exists()
    for target in ("/_cluster/v1/locations/relay/", "/_cluster/v1/locations/"):
        assert call("DELETE", target)[0] == 400, target
    assert call("DELETE", "/_cluster/v1/locations/relay/some/key")[0] == 204
    assert call("DELETE", "/_cluster/v1/locations/no-such-bucket-here")[0] == 204  # "deleted": nothing to forget
    # A signature time that is no number at all is refused before the signature is checked.
    target = "/_cluster/v1/ping"
    signature = PeerSigner(SECRET, "r2").headers("GET", target)[HEADER].split(":", 1)[1]
    for stamp in ("nan", "inf"):
        request = urllib.request.Request(cluster["r1"].endpoint + target,
                                         headers={HEADER: f"{stamp}:{signature}", "x-cluster-node": "r2"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 403 and b"malformed" in info.value.read()
    assert "Traceback" not in cluster["r1"].log()


def test_killed_node_objects_give_503_with_retry_after_then_come_back(cluster):
    s3 = clients(cluster)
    s3["r2"].put_object(Bucket="relay", Key="on-r2", Body=b"kept by r2")
    s3["r1"].put_object(Bucket="relay", Key="on-r1", Body=b"kept by r1")
    cluster["r2"].kill()  # kill -9
    try:
        for name in ("p1", "r1", "x1"):
            client = s3[name]
            error = error_of(lambda client=client: client.get_object(Bucket="relay", Key="on-r2"))
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503, name
            assert error.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), name
            assert "unreachable" in error.response["Error"]["Message"] or "cannot be reached" in \
                error.response["Error"]["Message"], name
            # Which node answered (S3's HostId, from x-amz-id-2): the log to read for its RequestId.
            assert error.response["ResponseMetadata"]["HostId"] == name
            head = error_of(lambda client=client: client.head_object(Bucket="relay", Key="on-r2"))
            assert head.response["ResponseMetadata"]["HTTPStatusCode"] == 503, name
            # Everything else still works.
            assert s3[name].get_object(Bucket="relay", Key="on-r1")["Body"].read() == b"kept by r1", name
            s3[name].put_object(Bucket="relay", Key=f"while-down/{name}", Body=b"w")
            assert s3[name].get_object(Bucket="relay", Key=f"while-down/{name}")["Body"].read() == b"w"
        assert "r2" in cluster.admin("p1")["peers"] and not cluster.admin("p1")["peers"]["r2"]["healthy"]
        before = len(cluster["p1"].log())
        for _ in range(20):  # an outage's 503s are warnings, said now and then, not an ERROR line each
            error_of(lambda: s3["p1"].get_object(Bucket="relay", Key="on-r2"))
        said = [line for line in cluster["p1"].log()[before:].splitlines() if "ServiceUnavailable" in line]
        assert not any("ERROR" in line for line in said) and len(said) <= 3, said
    finally:
        cluster.restart("r2")
    for name in NODES:
        assert s3[name].get_object(Bucket="relay", Key="on-r2")["Body"].read() == b"kept by r2", name


def test_a_delete_while_the_holder_is_down_is_done_and_applied_when_it_returns(cluster):
    """The deletion goes to the registry for the node that cannot be told (as an overwrite's retirement
    does), so the DELETE succeeds (it was a 503) and the node drops its copy before it serves again."""
    s3 = clients(cluster)
    deleters = ("p1", "r1", "x1")
    for name in deleters:
        s3["r2"].put_object(Bucket="relay", Key=f"del/{name}", Body=b"kept by r2")
    batch = [f"del/batch-{i}" for i in range(3)]
    for key in batch:
        s3["r2"].put_object(Bucket="relay", Key=key, Body=b"kept by r2")
    assert (cluster["r2"].data_dir / "relay" / "del" / "p1%obj").exists()
    cluster["r2"].kill()  # kill -9
    try:
        done = s3["x1"].delete_objects(Bucket="relay", Delete={"Objects": [{"Key": k} for k in batch]})
        assert sorted(d["Key"] for d in done["Deleted"]) == batch and not done.get("Errors"), done
        for name in deleters:
            s3[name].delete_object(Bucket="relay", Key=f"del/{name}")  # the first one finds r2 down itself
            # Until r2 is back its copy cannot be asked about: a read is a 503, never the deleted object.
            error = error_of(lambda name=name: s3[name].get_object(Bucket="relay", Key=f"del/{name}"))
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        cluster.restart("r2")
    for key in [f"del/{name}" for name in deleters] + batch:
        for reader in NODES:
            error = error_of(lambda: s3[reader].get_object(Bucket="relay", Key=key))
            assert error.response["Error"]["Code"] == "NoSuchKey", (key, reader)
    assert not list((cluster["r2"].data_dir / "relay" / "del").glob("*%obj"))


def test_stopped_peer_is_deprioritized_and_reads_of_other_objects_do_not_wait_for_it(cluster):
    s3 = clients(cluster)
    s3["r1"].put_object(Bucket="relay", Key="fast/on-r1", Body=b"r1 answers")
    s3["r2"].put_object(Bucket="relay", Key="fast/on-r2", Body=b"r2 is stopped")
    cluster["r2"].pause()  # SIGSTOP: r2 keeps its socket open but answers nothing
    try:
        # A miss has to wait for the stopped peer once (up to the peer timeout) and must say 503, not 404.
        error = error_of(lambda: s3["p1"].get_object(Bucket="relay", Key="fast/nowhere"))
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        view = cluster.admin("p1")["peers"]["r2"]
        assert not view["healthy"] and "timed out" in view["last_error"], view
        # r2 is now asked last: objects elsewhere are served from the healthy peers first.
        for _ in range(5):
            assert s3["p1"].get_object(Bucket="relay", Key="fast/on-r1")["Body"].read() == b"r1 answers"
        assert cluster.admin("p1")["peers"]["r1"]["healthy"]
        error = error_of(lambda: s3["x1"].get_object(Bucket="relay", Key="fast/on-r2"))
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        cluster["r2"].resume()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not cluster.admin("p1")["peers"]["r2"]["healthy"]:
        time.sleep(0.2)  # the heartbeat probes limited peers
    assert cluster.admin("p1")["peers"]["r2"]["healthy"]
    assert s3["p1"].get_object(Bucket="relay", Key="fast/on-r2")["Body"].read() == b"r2 is stopped"


def test_cluster_status_lists_every_node_with_role_and_health(cluster):
    # Earlier tests stopped r2; every node's view converges once its heartbeat probe reaches r2.
    deadline = time.monotonic() + 10
    rows = {row["node_id"]: row for row in cluster.status()}
    while time.monotonic() < deadline and not all(r["healthy"] for r in rows.values()):
        time.sleep(0.3)
        rows = {row["node_id"]: row for row in cluster.status()}
    assert set(rows) == set(NODES)
    assert [rows[n]["role"] for n in NODES] == ["primary", "redundant", "redundant", "proxy"]
    assert rows["p1"]["install_order"] < min(rows[n]["install_order"] for n in NODES[1:])
    for name in NODES:
        assert rows[name]["address"] == cluster[name].endpoint
        assert rows[name]["last_seen"] > 0
    assert all(rows[n]["healthy"] for n in NODES), {n: (r["healthy"], r["deprioritized_by"]) for n, r in rows.items()}
    assert rows["r1"]["objects"] is not None and rows["x1"]["objects"] is None


@pytest.mark.parametrize("node", ["r1", "x1", "p1"])
def test_multipart_upload_through_any_node_is_readable_everywhere(cluster, node):
    s3 = clients(cluster)
    key = f"multipart/through-{node}"
    upload = s3[node].create_multipart_upload(Bucket="relay", Key=key)["UploadId"]
    parts = [b"a" * 2048, b"b" * 2048, b"c" * 100]
    etags = [s3[node].upload_part(Bucket="relay", Key=key, UploadId=upload, PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    listed = s3[node].list_parts(Bucket="relay", Key=key, UploadId=upload)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    s3[node].complete_multipart_upload(Bucket="relay", Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    for name in NODES:
        got = s3[name].get_object(Bucket="relay", Key=key)
        assert got["Body"].read() == b"".join(parts), name
        assert got["ETag"].endswith('-3"'), name


@pytest.mark.parametrize("node", ["r1", "x1", "p1"])
def test_a_wrong_object_checksum_on_completion_stores_nothing_on_any_node(cluster, node):
    """Checked before the object is stored, also where a proxy assembles the parts and sends the
    object on to a storing node (which must not keep a copy of an object the client disowned)."""
    import base64
    import zlib

    s3 = clients(cluster)
    key = f"multipart/checked-{node}"
    upload = s3[node].create_multipart_upload(Bucket="relay", Key=key)["UploadId"]
    parts = [b"x" * 2048, b"y" * 100]
    done = {"Parts": [{"PartNumber": i + 1, "ETag": s3[node].upload_part(
        Bucket="relay", Key=key, UploadId=upload, PartNumber=i + 1, Body=p)["ETag"]} for i, p in enumerate(parts)]}
    crc = zlib.crc32(b"".join(parts))
    with pytest.raises(ClientError) as caught:
        s3[node].complete_multipart_upload(Bucket="relay", Key=key, UploadId=upload, MultipartUpload=done,
                                           ChecksumCRC32=base64.b64encode((crc ^ 1).to_bytes(4, "big")).decode())
    assert caught.value.response["Error"]["Code"] == "BadDigest"
    for name in NODES:
        with pytest.raises(ClientError) as missing:
            s3[name].head_object(Bucket="relay", Key=key)
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, name
    s3[node].complete_multipart_upload(Bucket="relay", Key=key, UploadId=upload, MultipartUpload=done,
                                       ChecksumCRC32=base64.b64encode(crc.to_bytes(4, "big")).decode())
    assert s3["r2"].get_object(Bucket="relay", Key=key)["Body"].read() == b"".join(parts)


def _fast_reads(node) -> float:
    import re
    import urllib.request

    with urllib.request.urlopen(node.endpoint + "/_admin/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r"^gateway_http_fast_reads_total (\S+)$", text, re.MULTILINE).group(1))


def test_the_holder_answers_relayed_reads_below_asgi(cluster):
    # The peer route's object GET and HEAD take the same front-end path as S3 plain reads
    # (gateway/api/protocol.py): the node holding the object counts them.
    s3 = clients(cluster)
    s3["r2"].put_object(Bucket="relay", Key="held-by-r2", Body=b"relayed body")
    before = _fast_reads(cluster["r2"])
    for name in ("p1", "r1"):
        assert s3[name].get_object(Bucket="relay", Key="held-by-r2")["Body"].read() == b"relayed body"
        assert s3[name].head_object(Bucket="relay", Key="held-by-r2")["ContentLength"] == len(b"relayed body")
    # Each relayed GET and HEAD reached r2's peer route at least once (first lookups may ask every peer).
    assert _fast_reads(cluster["r2"]) - before >= 4


@pytest.mark.parametrize("deleter", ["p1", "x1"])
def test_deleting_a_bucket_discards_its_uploads_on_every_node(cluster, deleter):
    """Uploads begun through every node (each kept where its record was placed) go with the bucket,
    whichever node is asked to delete it."""
    s3 = clients(cluster)
    bucket = f"uploads-gone-{deleter}"
    s3["p1"].create_bucket(Bucket=bucket)
    for name in NODES:
        s3[name].create_multipart_upload(Bucket=bucket, Key=f"via-{name}")
    assert len(s3["x1"].list_multipart_uploads(Bucket=bucket).get("Uploads", [])) >= 1
    s3[deleter].delete_bucket(Bucket=bucket)
    s3["p1"].create_bucket(Bucket=bucket)
    for name in NODES:
        assert s3[name].list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [], name
    s3["p1"].delete_bucket(Bucket=bucket)
