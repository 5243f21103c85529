"""Multipart uploads continued through another node than the one that began them (SDKs behind a load
balancer or DNS round robin over the storing nodes): 1 primary + 2 redundant + 1 proxy on the SQLite
registry, real gateway processes, the holder of an upload stopped with kill -9."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from gateway.services.cluster_nodes import write_unreachable_error

from .conftest import NODES, clients, error_of

STORING = ("p1", "r1", "r2")
BUCKET = "mpx"
PART = 2048  # above the cluster tests' GATEWAY_MIN_PART_SIZE (1024)


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    sqlite_cluster["p1"].client().create_bucket(Bucket=BUCKET)
    return sqlite_cluster


def holders(cluster, upload_id: str) -> list[str]:
    """The storing nodes whose storage holds files of the upload (its record, its parts)."""
    return [name for name in STORING if (cluster[name].data_dir / ".multipart" / BUCKET / upload_id).exists()]


def assert_unreachable(error: ClientError, upload_id: str, key: str, holder: str, what) -> None:
    response = error.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503, (what, response)
    assert response["Error"]["Code"] == "ServiceUnavailable", (what, response)
    assert response["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), (what, response)
    message = response["Error"]["Message"]
    assert upload_id in message and key in message and holder in message, (what, message)
    assert ".multipart" not in message and "/upload" not in message and "part/" not in message, (what, message)


@pytest.mark.parametrize("start,via", [(s, v) for s in NODES for v in NODES if v != s])
def test_an_upload_begun_on_one_node_is_continued_and_completed_through_another(cluster, start, via):
    """Parts through both nodes, a part sent again through the other one, ListParts and Complete
    through the other: the object is the one uploaded, readable through every node, and nothing of
    the upload is left on any node."""
    s3 = clients(cluster)
    key = f"continued/{start}-then-{via}"
    upload = s3[start].create_multipart_upload(Bucket=BUCKET, Key=key, Metadata={"camera": "7"})["UploadId"]
    where = holders(cluster, upload)
    assert len(where) == 1, where
    if start != "x1":
        assert where == [start]
    first = s3[start].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"a" * PART)["ETag"]
    second = s3[via].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=2, Body=b"b" * PART)["ETag"]
    # An SDK retry through the other node: the part is replaced where the upload is, not left elsewhere.
    first = s3[via].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"A" * PART)["ETag"]
    third = s3[via].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=3, Body=b"c" * 10)["ETag"]
    assert holders(cluster, upload) == where, "the parts of the upload are spread over several nodes"
    for name in NODES:
        parts = s3[name].list_parts(Bucket=BUCKET, Key=key, UploadId=upload)["Parts"]
        assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [
            (1, first, PART), (2, second, PART), (3, third, 10)], name
    done = s3[via].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in ((1, first), (2, second), (3, third))]})
    assert done["ETag"].endswith('-3"'), done
    for name in NODES:
        got = s3[name].get_object(Bucket=BUCKET, Key=key)
        assert got["Body"].read() == b"A" * PART + b"b" * PART + b"c" * 10, name
        assert got["ETag"] == done["ETag"] and got["Metadata"] == {"camera": "7"}, name
    assert holders(cluster, upload) == [], "the completed upload left files behind"
    for name in NODES:
        error = error_of(lambda c=s3[name]: c.list_parts(Bucket=BUCKET, Key=key, UploadId=upload))
        assert error.response["Error"]["Code"] == "NoSuchUpload", name
        # A Complete sent again (its answer lost, or a forwarding node gave up waiting): done, from any node.
        again = s3[name].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in ((1, first), (2, second), (3, third))]})
        assert again["ETag"] == done["ETag"], name


@pytest.mark.parametrize("start", STORING)
def test_an_upload_is_aborted_through_another_node(cluster, start):
    s3 = clients(cluster)
    for via in (n for n in NODES if n != start):
        key = f"aborted/{start}-then-{via}"
        upload = s3[start].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        s3[start].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * PART)
        # Another key's name is no way to the upload (NoSuchUpload, as on the node holding it).
        error = error_of(lambda c=s3[via], u=upload: c.abort_multipart_upload(Bucket=BUCKET, Key="other", UploadId=u))
        assert error.response["Error"]["Code"] == "NoSuchUpload", via
        s3[via].abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
        assert holders(cluster, upload) == [], via
        for name in NODES:
            error = error_of(lambda c=s3[name], k=key, u=upload: c.upload_part(
                Bucket=BUCKET, Key=k, UploadId=u, PartNumber=2, Body=b"y"))
            assert error.response["Error"]["Code"] == "NoSuchUpload", (via, name)
            uploads = s3[name].list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
            assert uploads == [], (via, name)


def test_upload_part_copy_through_another_node(cluster):
    s3 = clients(cluster)
    s3["r1"].put_object(Bucket=BUCKET, Key="copy/source", Body=b"0123456789" * 300)
    key = "copy/target"
    upload = s3["r2"].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    first = s3["p1"].upload_part_copy(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1,
                                      CopySource={"Bucket": BUCKET, "Key": "copy/source"})["CopyPartResult"]["ETag"]
    second = s3["x1"].upload_part_copy(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=2,
                                       CopySource={"Bucket": BUCKET, "Key": "copy/source"},
                                       CopySourceRange="bytes=0-9")["CopyPartResult"]["ETag"]
    assert holders(cluster, upload) == ["r2"]
    s3["r1"].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]})
    for name in NODES:
        assert s3[name].get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"0123456789" * 301, name


def test_completion_errors_keep_their_detail_fields_through_every_node(cluster):
    """A completion forwarded to the node holding the upload lost the fields of the holder's error
    document: EntityTooSmall without ProposedSize and MinSizeAllowed, InvalidPart without PartNumber
    and ETag, where a single gateway (and the holder itself) give them."""
    s3 = clients(cluster)
    upload = s3["r1"].create_multipart_upload(Bucket=BUCKET, Key="fields")["UploadId"]
    etags = [s3["r1"].upload_part(Bucket=BUCKET, Key="fields", UploadId=upload, PartNumber=n,
                                  Body=b"tiny!")["ETag"] for n in (1, 2)]
    for via in NODES:
        small = error_of(lambda: s3[via].complete_multipart_upload(
            Bucket=BUCKET, Key="fields", UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]}))
        error = small.response["Error"]
        assert error["Code"] == "EntityTooSmall", (via, error)
        assert error.get("ProposedSize") == "5" and error.get("MinSizeAllowed") == "1024", (via, error)
        wrong = error_of(lambda: s3[via].complete_multipart_upload(
            Bucket=BUCKET, Key="fields", UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"bad"'}]}))
        error = wrong.response["Error"]
        assert error["Code"] == "InvalidPart" and error.get("PartNumber") == "1", (via, error)
        assert error.get("ETag") == '"bad"', (via, error)
    s3["x1"].abort_multipart_upload(Bucket=BUCKET, Key="fields", UploadId=upload)


def test_an_unknown_upload_is_no_such_upload_through_every_node(cluster):
    s3 = clients(cluster)
    for name in NODES:
        for call in (lambda c: c.upload_part(Bucket=BUCKET, Key="k", UploadId="0" * 32, PartNumber=1, Body=b"x"),
                     lambda c: c.list_parts(Bucket=BUCKET, Key="k", UploadId="0" * 32),
                     lambda c: c.abort_multipart_upload(Bucket=BUCKET, Key="k", UploadId="0" * 32),
                     lambda c: c.complete_multipart_upload(Bucket=BUCKET, Key="k", UploadId="0" * 32, MultipartUpload={
                         "Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]})):
            error = error_of(lambda c=s3[name], call=call: call(c))
            assert error.response["Error"]["Code"] == "NoSuchUpload", (name, error.response)


def test_list_multipart_uploads_through_every_node_shows_every_nodes_uploads(cluster):
    s3 = clients(cluster)
    started = {}
    for name in NODES:
        for n in range(2):
            key = f"listed/{name}-{n}"
            started[key, s3[name].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]] = name
    expected = sorted(started, key=lambda k: (k[0].encode(), k[1]))
    try:
        for name in NODES:
            uploads = s3[name].list_multipart_uploads(Bucket=BUCKET, Prefix="listed/")["Uploads"]
            assert [(u["Key"], u["UploadId"]) for u in uploads] == expected, name
            # Paged over the merged list, in S3's order.
            seen, markers = [], {}
            while True:
                page = s3[name].list_multipart_uploads(Bucket=BUCKET, Prefix="listed/", MaxUploads=3, **markers)
                seen += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
                if not page["IsTruncated"]:
                    break
                markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
            assert seen == expected, name
            prefixes = s3[name].list_multipart_uploads(Bucket=BUCKET, Prefix="listed/", Delimiter="-")
            assert [p["Prefix"] for p in prefixes["CommonPrefixes"]] == [f"listed/{n}-" for n in sorted(NODES)], name
    finally:
        for (key, upload), name in started.items():
            s3[NODES[(NODES.index(name) + 1) % len(NODES)]].abort_multipart_upload(Bucket=BUCKET, Key=key,
                                                                                   UploadId=upload)
    for name in NODES:
        assert s3[name].list_multipart_uploads(Bucket=BUCKET, Prefix="listed/").get("Uploads", []) == [], name


def test_the_holder_killed_is_a_503_with_retry_after_and_the_upload_completes_after_its_restart(cluster):
    """kill -9 of the node holding an upload: UploadPart, ListParts, Complete and Abort through the other
    nodes are 503 with Retry-After naming the upload (never a 404 NoSuchUpload a client takes as final,
    never the gateway's internal names); listing the uploads leaves the node out. Back, it completes."""
    s3 = clients(cluster)
    key = "killed/holder"
    upload = s3["r2"].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    first = s3["r2"].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"1" * PART)["ETag"]
    other = s3["r1"].create_multipart_upload(Bucket=BUCKET, Key="killed/other")["UploadId"]
    s3["x1"].list_parts(Bucket=BUCKET, Key=key, UploadId=upload)  # the location cache of x1 names r2
    cluster["r2"].kill()  # kill -9
    try:
        for via in ("p1", "r1", "x1"):
            calls = {
                "UploadPart": lambda c: c.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=2,
                                                      Body=b"2" * PART),
                "ListParts": lambda c: c.list_parts(Bucket=BUCKET, Key=key, UploadId=upload),
                "Complete": lambda c: c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                                                  MultipartUpload={"Parts": [
                                                                      {"PartNumber": 1, "ETag": first}]}),
                "Abort": lambda c: c.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload),
            }
            for what, call in calls.items():
                assert_unreachable(error_of(lambda c=s3[via], call=call: call(c)), upload, key, "r2", (via, what))
            uploads = s3[via].list_multipart_uploads(Bucket=BUCKET, Prefix="killed/")["Uploads"]
            assert [u["UploadId"] for u in uploads] == [other], via
    finally:
        cluster.restart("r2")
    second = s3["r1"].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=2, Body=b"2" * 10)["ETag"]
    for name in NODES:
        uploads = s3[name].list_multipart_uploads(Bucket=BUCKET, Prefix="killed/")["Uploads"]
        assert sorted(u["UploadId"] for u in uploads) == sorted([upload, other]), name
    s3["p1"].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]})
    for name in NODES:
        assert s3[name].get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"1" * PART + b"2" * 10, name
    s3["x1"].abort_multipart_upload(Bucket=BUCKET, Key="killed/other", UploadId=other)


@pytest.mark.parametrize("retried_via", ["r1", "x1", "r2"])
def test_a_complete_cut_short_before_it_retired_the_old_copy_is_answered_and_finished_when_sent_again(
        cluster, retried_via):
    """The holder killed after it stored the object and before the older copy on another node was
    retired: the client's retry found that older copy first (local first) and was NoSuchUpload, or,
    through the holder, 200 while other nodes went on reading the old version. The retry finds the
    completed object on the node that has it, answers 200 and retires the older copy."""
    s3 = clients(cluster)
    key = f"cut-short/{retried_via}"
    s3["r1"].put_object(Bucket=BUCKET, Key=key, Body=b"old version")
    old_file = cluster["r1"].data_dir / BUCKET / "cut-short" / f"{retried_via}%obj"
    saved = old_file.read_bytes()
    upload = s3["r2"].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part = s3["r2"].upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"new" * PART)["ETag"]
    listed = {"Parts": [{"PartNumber": 1, "ETag": part}]}
    # r2 has just asked r1 (a relayed read): r1, restarted by the test before, is not a peer r2 gives up on,
    # whose retirement would wait in the registry and drop the copy put back below when r1 starts.
    assert s3["r2"].get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"old version"
    done = s3["r2"].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload=listed)
    # As if the Complete had been cut short before its retirement: r1's older copy is there again.
    cluster["r1"].stop()
    old_file.parent.mkdir(exist_ok=True)  # (emptied, it went with the copy)
    old_file.write_bytes(saved)
    cluster.restart("r1")
    cluster.wait_known(4)
    assert s3["r1"].get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"old version"
    again = s3[retried_via].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                                      MultipartUpload=listed)
    assert again["ETag"] == done["ETag"], again
    for name in NODES:
        assert s3[name].get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"new" * PART, name
    assert not old_file.exists()


def test_a_failed_write_says_it_could_not_be_completed():
    """A PUT's 503 is about the write (it read as if it were about a GET: "may be on a server")."""
    error = write_unreachable_error("The write of object 'k'", "r2")
    assert error.status == 503 and error.headers["Retry-After"]
    assert "could not be completed" in error.message and "r2" in error.message and "may be" not in error.message
