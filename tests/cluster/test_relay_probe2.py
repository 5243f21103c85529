"""Relay, proxy and placement edge cases found by probing a real cluster (1 primary + 2 redundant + 1 proxy,
SQLite registry, real gateway processes on loopback): multipart parts through the proxy, a client's bad or
abandoned body on its way to a peer, and a peer that answers like no gateway does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from gateway.cluster.registry import open_registry
from gateway.testing.disks import tmpfs

from .conftest import NODES, clients, error_of, wait_for

STORING = ("p1", "r1", "r2")


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    sqlite_cluster["p1"].client().create_bucket(Bucket="probe2")
    return sqlite_cluster


def peer_failures(cluster, node: str) -> dict[str, int]:
    """How many calls to each peer ``node`` counted as failed since it started (never goes down)."""
    return {peer: view["failed"] for peer, view in cluster.admin(node)["peers"].items()}


def upload_files(cluster, upload_id: str) -> dict[str, list[str]]:
    """Per storing node, the files of one multipart upload (record and parts) in its storage."""
    found = {}
    for name in STORING:
        root = cluster[name].data_dir / ".multipart" / "probe2" / upload_id
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*%obj")) if root.exists() else []
        if files:
            found[name] = files
    return found


def test_parts_of_an_upload_through_the_proxy_stay_on_one_node_and_a_part_sent_again_replaces_the_old(cluster):
    """The proxy used to send each part to the storing node answering fastest at that moment, so the
    parts of one upload were scattered, and a part uploaded again (an SDK retry) left its first copy
    on another node, where the relay could pick it when the upload was completed: the object then held
    the old part's bytes under the new part's ETag. A part now goes to the node holding its upload."""
    s3 = clients(cluster)
    s3["r1"].put_object(Bucket="probe2", Key="stir/on-r1", Body=b"r" * 4096)
    s3["p1"].put_object(Bucket="probe2", Key="stir/on-p1", Body=b"p" * 4096)
    for round_ in range(4):
        key = f"multipart/{round_}"
        upload = s3["x1"].create_multipart_upload(Bucket="probe2", Key=key)["UploadId"]
        parts = [bytes([65 + i]) * 2048 for i in range(8)]
        etags = []
        for i, body in enumerate(parts):
            etags.append(s3["x1"].upload_part(Bucket="probe2", Key=key, UploadId=upload, PartNumber=i + 1,
                                              Body=body)["ETag"])
            # Relayed reads between the parts move the proxy's view of which peer answers fastest.
            for stir in ("stir/on-r1", "stir/on-p1"):
                s3["x1"].head_object(Bucket="probe2", Key=stir)
        parts[0] = b"sent again " * 300
        etags[0] = s3["x1"].upload_part(Bucket="probe2", Key=key, UploadId=upload, PartNumber=1,
                                        Body=parts[0])["ETag"]
        where = upload_files(cluster, upload)
        assert len(where) == 1, f"the parts of upload {round_} are spread over {where}"
        assert len(next(iter(where.values()))) == 9, where  # the record and 8 parts
        s3["x1"].complete_multipart_upload(Bucket="probe2", Key=key, UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
        for name in NODES:
            assert s3[name].get_object(Bucket="probe2", Key=key)["Body"].read() == b"".join(parts), (round_, name)
        assert upload_files(cluster, upload) == {}, "the completed upload left parts behind"


@pytest.mark.parametrize("big", [False, True], ids=["small", "3MiB"])
def test_bad_digest_through_a_node_that_places_on_a_peer_is_400_and_the_peer_stays_healthy(cluster, big):
    """The proxy (and the primary when it places a PUT on a redundant node) streams the body to the
    peer and holds its last chunk back until the client's Content-MD5 or checksum verified. A mismatch
    used to surface as a failed peer connection: 503 ServiceUnavailable (which SDKs retry) and the
    healthy peer de-prioritized. It is the client's 400 BadDigest, and the peer is not blamed."""
    s3 = clients(cluster)
    body = b"a" * ((3 << 20) if big else 1000)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    wrong_sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    before = {via: peer_failures(cluster, via) for via in ("x1", "p1")}
    for via in ("x1", "p1"):
        for attempt in range(4):  # the primary places some PUTs on itself: several keys reach a peer
            key = f"bad-digest/{via}/{big}/{attempt}"
            for checks in ({"ContentMD5": wrong_md5}, {"ChecksumSHA256": wrong_sha}):
                with pytest.raises(ClientError) as info:
                    s3[via].put_object(Bucket="probe2", Key=key, Body=body, **checks)
                error = info.value.response
                assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (400, "BadDigest"), \
                    (via, checks, error["Error"])
            for name in STORING:
                assert not (cluster[name].data_dir / "probe2" / "bad-digest" / via).exists() or not list(
                    (cluster[name].data_dir / "probe2" / "bad-digest" / via).rglob("*%obj")), name
    assert {via: peer_failures(cluster, via) for via in ("x1", "p1")} == before


def test_a_client_that_abandons_its_upload_through_the_proxy_is_not_a_failed_peer(cluster):
    """A client that closes its connection halfway through a PUT: nothing is stored, the proxy goes on
    serving, and the peer that was receiving the body is not counted as failed (it used to be
    de-prioritized, with a registry reload and an 'unreachable' in the metrics, for the client's doing)."""
    s3 = clients(cluster)
    before = peer_failures(cluster, "x1")
    for attempt in range(3):
        url = s3["x1"].generate_presigned_url("put_object", Params={"Bucket": "probe2", "Key": "abandoned"},
                                              ExpiresIn=60)
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                         f"Content-Length: {8 << 20}\r\n\r\n".encode())
            for _ in range(32):
                sock.sendall(b"y" * 65536)  # 2 of the 8 MiB announced
            time.sleep(0.3)
    time.sleep(0.5)
    assert peer_failures(cluster, "x1") == before
    for name in NODES:
        with pytest.raises(ClientError) as info:
            s3[name].head_object(Bucket="probe2", Key="abandoned")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, name
    s3["x1"].put_object(Bucket="probe2", Key="after-abandon", Body=b"fine")
    assert s3["r2"].get_object(Bucket="probe2", Key="after-abandon")["Body"].read() == b"fine"


class _NotAGateway:
    """An HTTP server that answers every request 200 with an empty body: what a web server, a load
    balancer's default page or a half-upgraded node at a peer's address may do."""

    def __init__(self, host: str):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((host, 0))
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.address = f"http://{host}:{self.server.getsockname()[1]}"
        self.requests = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server.close()


def _cluster_cli(cluster, *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "cluster", *args, "--registry", cluster.registry],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def _heartbeat(cluster, node_id: str) -> None:
    """Record a heartbeat of ``node_id`` in the registry, as its gateway would."""
    async def run():
        registry = open_registry(cluster.registry)
        try:
            await registry.heartbeat(node_id, {"heartbeat_interval": 3600.0})
        finally:
            await registry.close()

    asyncio.run(run())


def test_a_peer_that_answers_like_no_gateway_is_an_unreachable_node_not_a_500(cluster):
    """A storing node registered at an address where something else answers 200 with an empty body:
    HEAD of a missing key gave 500 (the info header missing) and every LIST in the cluster 500 (no JSON
    page). Such a peer is a node that cannot be asked: a miss is 503 with Retry-After, a LIST leaves it
    out, a hit elsewhere is served, and the peer is de-prioritized."""
    s3 = clients(cluster)
    s3["r1"].put_object(Bucket="probe2", Key="garbage/here", Body=b"on r1")
    fake = _NotAGateway("127.0.0.2")
    _cluster_cli(cluster, "join", "--advertise", fake.address, "--role", "redundant", "--node-id", "odd1")
    _heartbeat(cluster, "odd1")  # a node that runs (a node only joined, never seen, is not asked at all)
    try:
        cluster.wait_known(5)
        for name in NODES:
            wait_for(lambda: any(n["node_id"] == "odd1" and n["last_seen"] > 0 for n in cluster.admin(name)["nodes"]),
                     10, f"{name} seeing odd1 run")
        for name in ("p1", "r2", "x1"):
            assert s3[name].get_object(Bucket="probe2", Key="garbage/here")["Body"].read() == b"on r1", name
            assert s3[name].head_object(Bucket="probe2", Key="garbage/here")["ContentLength"] == 5, name
            for method in ("head_object", "get_object"):
                with pytest.raises(ClientError) as info:
                    getattr(s3[name], method)(Bucket="probe2", Key="garbage/missing")
                meta = info.value.response["ResponseMetadata"]
                assert meta["HTTPStatusCode"] == 503, (name, method, info.value.response["Error"])
                assert meta["HTTPHeaders"].get("retry-after"), (name, method)
            listed = s3[name].list_objects_v2(Bucket="probe2", Prefix="garbage/")
            assert [o["Key"] for o in listed.get("Contents", [])] == ["garbage/here"], name
        assert fake.requests > 0, "the fake peer was never asked"
        assert not cluster.admin("x1")["peers"]["odd1"]["healthy"]
        for name in NODES:
            assert "Traceback" not in cluster[name].log(), name
    finally:
        _cluster_cli(cluster, "leave", "--node-id", "odd1")
        fake.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(any(m["node_id"] == "odd1" for m in cluster.admin(n)["nodes"]) for n in NODES):
        time.sleep(0.2)


def test_slow_readers_of_large_objects_through_the_proxy_do_not_block_other_requests_to_that_peer(cluster):
    """70 clients that start a GET of a large object through the proxy and read nothing: each holds a
    connection to the node holding it as long as it stalls. They took all 64 connections the proxy's
    pool had per peer, and every LIST, PUT, DELETE and large GET through the proxy that needed that peer
    then waited without end. Streamed bodies now have connections of their own (one per client
    request), so the rest goes on; when the readers leave, their connections go too."""
    s3 = clients(cluster)
    big = bytes(range(256)) * (32 * 4096)  # 32 MiB: more than the socket buffers on the way hold
    s3["r1"].put_object(Bucket="probe2", Key="stall/big", Body=big)
    s3["r1"].put_object(Bucket="probe2", Key="stall/small", Body=b"small")
    readers = []
    try:
        for _ in range(70):
            url = s3["x1"].generate_presigned_url("get_object", Params={"Bucket": "probe2", "Key": "stall/big"},
                                                  ExpiresIn=120)
            parts = urlsplit(url)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((parts.hostname, parts.port))
            sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            readers.append(sock)
        assert readers[-1].recv(12) == b"HTTP/1.1 200"  # the last one started: all 70 are under way
        patient = cluster["x1"].client(read_timeout=10, connect_timeout=5)
        started = time.monotonic()
        assert patient.get_object(Bucket="probe2", Key="stall/small")["Body"].read() == b"small"
        keys = [o["Key"] for o in patient.list_objects_v2(Bucket="probe2", Prefix="stall/")["Contents"]]
        assert keys == ["stall/big", "stall/small"]
        patient.put_object(Bucket="probe2", Key="stall/during", Body=b"written meanwhile")
        patient.delete_object(Bucket="probe2", Key="stall/during")
        ranged = patient.get_object(Bucket="probe2", Key="stall/big", Range="bytes=0-2097151")["Body"].read()
        assert ranged == big[:2 << 20]
        assert time.monotonic() - started < 8
    finally:
        for sock in readers:
            sock.close()
    assert s3["x1"].get_object(Bucket="probe2", Key="stall/big")["Body"].read() == big


def test_a_write_that_a_frozen_node_receives_after_its_sender_gave_up_is_not_applied(cluster):
    """The primary places an overwrite on the node its cache names; that node is frozen (SIGSTOP), so
    the primary gives up after the peer timeout and answers 503 (or, once it counts r2 as failed,
    places the overwrite elsewhere). The client writes again through another
    node: 200. When the frozen node runs again, it found the first PUT in its socket and stored it, with a
    modification time newer than the acknowledged write, which it then replaced everywhere (last writer
    wins): an acknowledged write lost to one that was refused. A peer write older than the peer timeout
    is now refused by the node that receives it (its sender has answered the client already)."""
    s3 = clients(cluster)
    s3["r2"].put_object(Bucket="probe2", Key="frozen/k", Body=b"v1 on r2")
    assert s3["p1"].get_object(Bucket="probe2", Key="frozen/k")["Body"].read() == b"v1 on r2"  # p1: on r2
    cluster["r2"].pause()
    try:
        try:
            # 503 when the primary sent it to r2 and gave up; 200 when it already knew r2 failed
            # and placed the overwrite elsewhere (its copy on r2 is then retired).
            s3["p1"].put_object(Bucket="probe2", Key="frozen/k", Body=b"v2, refused or placed elsewhere")
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        s3["r1"].put_object(Bucket="probe2", Key="frozen/k", Body=b"v3, acknowledged")
    finally:
        cluster["r2"].resume()
    time.sleep(2)  # r2 handles what waited in its sockets, and its heartbeat applies the retirement
    for name in NODES:
        assert s3[name].get_object(Bucket="probe2", Key="frozen/k")["Body"].read() == b"v3, acknowledged", name


def test_a_node_running_again_after_a_freeze_serves_no_copy_that_an_overwrite_replaced_meanwhile(cluster):
    """r2 holds v1 and is frozen (SIGSTOP, as a paused VM) past the peer timeout; the key is overwritten
    through r1, which gives up on r2 and leaves v1's retirement in the registry (and in r2's socket); the
    write is acknowledged. A read sent through r2 meanwhile waits in r2's socket. When r2 runs again it
    answered that read with v1 from its own disk, before it had dropped it: a read older than the write
    it followed. Now it holds reads of its own copies (503, Retry-After) until it has caught up."""
    s3 = clients(cluster)
    s3["r2"].put_object(Bucket="probe2", Key="stale/k", Body=b"v1 on r2")
    reader = cluster["r2"].client(read_timeout=60)
    assert reader.get_object(Bucket="probe2", Key="stale/k")["Body"].read() == b"v1 on r2"  # a kept-alive connection
    outcome: list = []

    def read() -> None:
        try:
            outcome.append(reader.get_object(Bucket="probe2", Key="stale/k")["Body"].read())
        except ClientError as exc:
            outcome.append(exc.response)

    cluster["r2"].pause()
    try:
        # r1 finds r2 failed (a miss it cannot settle), so the overwrite does not wait for r2: v1's
        # retirement goes to the registry and to r2 on a new connection, which r2 reads only after the
        # reads waiting on the connections it had already accepted.
        assert error_of(lambda: s3["r1"].head_object(Bucket="probe2", Key="stale/nowhere")).response[
            "ResponseMetadata"]["HTTPStatusCode"] == 503
        s3["r1"].put_object(Bucket="probe2", Key="stale/k", Body=b"v2, acknowledged")
        waiting = threading.Thread(target=read)
        waiting.start()
        time.sleep(0.5)  # the read is in r2's socket
    finally:
        cluster["r2"].resume(settle=False)
    waiting.join(60)
    assert outcome and outcome[0] != b"v1 on r2", "r2 served the copy the acknowledged overwrite replaced"
    if outcome[0] != b"v2, acknowledged":
        assert outcome[0]["ResponseMetadata"]["HTTPStatusCode"] == 503, outcome[0]
        assert outcome[0]["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
        assert "standing still" in outcome[0]["Error"]["Message"]
    deadline = time.monotonic() + 10
    while True:  # caught up: every node serves v2
        try:
            bodies = {name: s3[name].get_object(Bucket="probe2", Key="stale/k")["Body"].read() for name in NODES}
        except ClientError:
            bodies = {}
        if set(bodies.values()) == {b"v2, acknowledged"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(bodies.values()) == {b"v2, acknowledged"}, bodies


def test_an_overwrite_through_the_primary_goes_elsewhere_when_the_holder_has_just_failed(cluster):
    """The primary sends an overwrite to the node holding the key, unless that node has just failed:
    then waiting for it would only fail the write too. Placed elsewhere, the old copy on the failed
    node is retired when it runs again, and every node serves the new version."""
    s3 = clients(cluster)
    s3["r2"].put_object(Bucket="probe2", Key="failed-holder/k", Body=b"v1 on r2")
    s3["r2"].put_object(Bucket="probe2", Key="failed-holder/other", Body=b"also on r2")
    assert s3["p1"].get_object(Bucket="probe2", Key="failed-holder/k")["Body"].read() == b"v1 on r2"
    cluster["r2"].pause()
    try:
        with pytest.raises(ClientError) as info:  # the primary learns that r2 fails
            s3["p1"].get_object(Bucket="probe2", Key="failed-holder/other")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        s3["p1"].put_object(Bucket="probe2", Key="failed-holder/k", Body=b"v2 placed elsewhere")
    finally:
        cluster["r2"].resume()
    deadline = time.monotonic() + 20
    while True:
        bodies = {name: s3[name].get_object(Bucket="probe2", Key="failed-holder/k")["Body"].read() for name in NODES}
        if set(bodies.values()) == {b"v2 placed elsewhere"}:
            break
        assert time.monotonic() < deadline, f"the old copy on r2 was not retired: {bodies}"
        time.sleep(0.5)


def test_a_node_whose_disk_is_full_makes_the_write_507_through_the_proxy(tmp_path):
    """A storing node out of space answers its peers InsufficientStorage, and the node the client
    wrote to passes it on: 507 with the reason, not a 500 or the 503 of an unreachable node."""
    from .conftest import ClusterNodes, wait_for

    with tmpfs(tmp_path / "full", "1m") as disk:
        nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
        try:
            nodes.add_many([("full", "primary"), ("proxy", "proxy")])
            # Listed is not enough: the proxy asks a node once it has seen it heartbeat (Membership.peers).
            wait_for(lambda: any(n["node_id"] == "full" and n["last_seen"] > 0 for n in nodes.admin("proxy")["nodes"]),
                     10, "the proxy seeing the storing node")
            s3 = nodes["proxy"].client()
            s3.create_bucket(Bucket="fill")
            with open(disk / "filler", "wb", buffering=0) as f:  # take every byte the bucket left
                with pytest.raises(OSError):
                    for _ in range(1024):
                        f.write(b"\0" * 4096)
            with pytest.raises(ClientError) as info:
                s3.put_object(Bucket="fill", Key="k", Body=b"x" * 64 * 1024)
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 507, info.value.response
            assert info.value.response["Error"]["Code"] == "InsufficientStorage"
            (disk / "filler").unlink()
            s3.put_object(Bucket="fill", Key="k", Body=b"after space was freed")
            assert s3.get_object(Bucket="fill", Key="k")["Body"].read() == b"after space was freed"
        finally:
            nodes.stop()


def test_a_proxy_that_knows_no_storing_node_refuses_to_create_a_bucket(tmp_path):
    """It answered 200 and made the bucket nowhere; a client then got NoSuchBucket on its first PUT."""
    from .conftest import ClusterNodes

    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        nodes.add("proxy", "proxy")
        with pytest.raises(ClientError) as info:
            nodes["proxy"].client().create_bucket(Bucket="nowhere")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert "knows no storing node" in info.value.response["Error"]["Message"]
    finally:
        nodes.stop()
