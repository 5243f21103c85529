"""GET /metrics (Prometheus text) and the distribution in `cluster status`, after a workload on a real cluster."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

NODES = ("p1", "r1", "r2", "x1")
BUCKET = "measured"
PUTS = 30
SAMPLE = re.compile(r'^([a-z_]+)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+)$')


def scrape(cluster, name: str, path: str = "/metrics") -> dict[tuple[str, frozenset], float]:
    """Every sample of a node's /metrics as {(metric, frozenset of label pairs): value}; checks the format."""
    with urllib.request.urlopen(cluster[name].endpoint + path, timeout=5) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[match.group(1), labels] = float(match.group(3))
    return samples


def value(samples, metric: str, **labels) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def total(samples, metric: str, **labels) -> float:
    """Sum of the samples of ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (m, ls), v in samples.items() if m == metric and wanted <= ls)


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    sqlite_cluster["p1"].client().create_bucket(Bucket=BUCKET)
    return sqlite_cluster


def test_metrics_show_placement_forwards_relays_and_the_location_cache(cluster):
    s3 = {name: cluster[name].client() for name in NODES}
    before = {name: scrape(cluster, name) for name in ("p1", "x1")}
    for i in range(PUTS):
        s3["p1"].put_object(Bucket=BUCKET, Key=f"placed/{i:02d}", Body=b"p")
    for i in range(10):
        s3["x1"].put_object(Bucket=BUCKET, Key=f"proxied/{i}", Body=b"x")
    for _ in range(3):  # the second and third rounds find the location in x1's cache
        for i in range(10):
            assert s3["x1"].get_object(Bucket=BUCKET, Key=f"proxied/{i}")["Body"].read() == b"x"
    with pytest.raises(ClientError):
        s3["x1"].head_object(Bucket=BUCKET, Key="not-there")

    p1 = scrape(cluster, "p1")
    placed = {n: value(p1, "gateway_cluster_objects_placed_total", node=n)
              - value(before["p1"], "gateway_cluster_objects_placed_total", node=n) for n in ("p1", "r1", "r2")}
    assert sum(placed.values()) == PUTS, placed
    assert sum(1 for n in placed.values() if n > 0) >= 2, placed  # spread, not all on one node
    assert value(p1, "gateway_info", version=value_of_label(p1, "gateway_info", "version"), node_id="p1",
                 role="primary") == 1
    for peer in ("r1", "r2", "x1"):
        assert value(p1, "gateway_cluster_peer_healthy", peer=peer) == 1, peer
    assert value(p1, "gateway_cluster_nodes", role="redundant") == 2
    # PUTs the primary placed on a redundant node went there as peer calls.
    assert total(p1, "gateway_cluster_peer_requests_total", operation="put", outcome="ok") >= \
        placed["r1"] + placed["r2"]

    x1 = scrape(cluster, "x1")
    forwards = {op: total(x1, "gateway_cluster_proxy_forwards_total", operation=op)
                - total(before["x1"], "gateway_cluster_proxy_forwards_total", operation=op) for op in ("put", "get")}
    assert forwards == {"put": 10, "get": 30}, forwards
    targets = {labels for (metric, labels) in x1 if metric == "gateway_cluster_proxy_forwards_total"}
    assert {dict(ls)["target"] for ls in targets} <= {"p1", "r1", "r2"}
    hits = value(x1, "gateway_cluster_location_cache_lookups_total", result="hit") - value(
        before["x1"], "gateway_cluster_location_cache_lookups_total", result="hit")
    assert hits >= 20, hits
    # The one uncached lookup (the HEAD of a key no node has) counts once: it was counted twice (the
    # forward's look, then the lookup's), and a hit ratio came out low.
    misses = value(x1, "gateway_cluster_location_cache_lookups_total", result="miss") - value(
        before["x1"], "gateway_cluster_location_cache_lookups_total", result="miss")
    assert misses == 1, misses
    assert total(x1, "gateway_cluster_peer_requests_total", operation="head", outcome="missing") >= 3
    assert value(x1, "gateway_cluster_peer_healthy", peer="p1") == 1
    assert scrape(cluster, "x1", "/_admin/metrics").keys() >= {k for k in x1 if k[0] == "gateway_cluster_nodes"}


def value_of_label(samples, metric: str, label: str) -> str:
    return next(dict(ls)[label] for (m, ls) in samples if m == metric)


def test_deprioritized_peer_shows_in_metrics_until_it_answers_again(cluster):
    s3 = cluster["p1"].client()
    cluster["r2"].pause()
    try:
        with pytest.raises(ClientError) as info:  # r2 cannot say whether it has it: 503, r2 times out
            s3.get_object(Bucket=BUCKET, Key="never-written")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        p1 = scrape(cluster, "p1")
        assert value(p1, "gateway_cluster_peer_healthy", peer="r2") == 0
        assert value(p1, "gateway_cluster_peer_healthy", peer="r1") == 1
        assert total(p1, "gateway_cluster_peer_requests_total", peer="r2", outcome="unreachable") >= 1
        assert value(p1, "gateway_cluster_peer_failures_total", peer="r2") >= 1
    finally:
        cluster["r2"].resume()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and value(scrape(cluster, "p1"), "gateway_cluster_peer_healthy", peer="r2") != 1:
        time.sleep(0.2)  # p1's heartbeat pings limited peers
    assert value(scrape(cluster, "p1"), "gateway_cluster_peer_healthy", peer="r2") == 1


def test_cluster_status_shows_the_distribution(cluster):
    s3 = cluster["p1"].client()
    for i in range(12):
        s3.put_object(Bucket=BUCKET, Key=f"status/{i}", Body=b"s")
        s3.get_object(Bucket=BUCKET, Key=f"status/{i}")["Body"].read()
    time.sleep(1.2)  # two heartbeats (0.5 s): the counts are published with them
    rows = {row["node_id"]: row for row in cluster.status()}
    assert all({"placed", "reads"} <= set(row) for row in rows.values())
    own = rows["p1"]["balance"]
    assert sum(v["placed"] for v in own.values()) >= 12 and sum(v["reads"] for v in own.values()) >= 12
    # The per-node columns sum every node's published view, so they cover at least the primary's.
    for node, counts in own.items():
        assert rows[node]["placed"] >= counts["placed"] and rows[node]["reads"] >= counts["reads"], node
    assert rows["x1"]["placed"] == 0 and rows["x1"]["reads"] == 0  # a proxy stores and serves nothing itself
    table = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--registry", cluster.registry],
                           check=False, capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split()
    assert header[-2:] == ["PLACED", "READS"], header
    p1_line = next(line for line in table.stdout.splitlines() if line.startswith("p1 "))
    assert int(p1_line.split()[-2]) == rows["p1"]["placed"]
    assert "primary p1 sent:" in table.stdout, table.stdout


def test_bucket_named_metrics_still_works_for_s3_clients(cluster):
    s3 = cluster["p1"].client()
    s3.create_bucket(Bucket="metrics")
    s3.put_object(Bucket="metrics", Key="k", Body=b"not a scrape")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="metrics")["Contents"]] == ["k"]
    assert s3.get_object(Bucket="metrics", Key="k")["Body"].read() == b"not a scrape"
    s3.delete_object(Bucket="metrics", Key="k")
    s3.delete_bucket(Bucket="metrics")


def test_stand_alone_node_serves_metrics_too(tmp_path):
    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage") as gw:
        with urllib.request.urlopen(gw.endpoint + "/metrics", timeout=5) as response:
            text = response.read().decode()
    assert re.search(r'^gateway_info\{version="[^"]+"\} 1$', text, re.MULTILINE), text
    assert "gateway_cluster_" not in text


@pytest.mark.parametrize("through", ["p1", "x1"])
def test_a_multipart_upload_counts_as_one_placement_and_its_bookkeeping_as_none(cluster, through):
    """The parts and the upload's record are the gateway's own writes (the .multipart bucket): they
    counted as object PUTs and DELETEs, so one upload through a proxy showed as several."""
    s3 = cluster[through].client()
    key = f"multipart/through-{through}"
    before = scrape(cluster, through)
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = [s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n, Body=b"m" * 2048)
             for n in (1, 2)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": p["ETag"]} for n, p in zip((1, 2), parts)]})
    after = scrape(cluster, through)
    placed = (total(after, "gateway_cluster_objects_placed_total")
              - total(before, "gateway_cluster_objects_placed_total"))
    assert placed == 1, placed
    deleted = (total(after, "gateway_cluster_requests_served_total", operation="delete")
               - total(before, "gateway_cluster_requests_served_total", operation="delete"))
    assert deleted == 0, deleted


@pytest.mark.parametrize("through", ["p1", "x1"])
def test_a_refused_put_is_no_placement(cluster, through):
    """A PUT refused (BadDigest: nothing stored) was counted in objects_placed_total and in the
    PLACED column of `cluster status`, which the docs define as PUTs stored on that node."""
    import base64
    import hashlib

    s3 = cluster[through].client()
    before = scrape(cluster, through)
    wrong = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()
    for i in range(5):
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=BUCKET, Key=f"refused/{i}", Body=b"these bytes", ContentMD5=wrong)
        assert info.value.response["Error"]["Code"] == "BadDigest"
    s3.put_object(Bucket=BUCKET, Key="refused/stored", Body=b"fine")
    after = scrape(cluster, through)
    placed = (total(after, "gateway_cluster_objects_placed_total")
              - total(before, "gateway_cluster_objects_placed_total"))
    assert placed == 1, placed
