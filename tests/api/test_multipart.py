"""Multipart uploads against a gateway whose min_part_size is 64 KiB, so parts stay small but real."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from s3_helpers import BACKEND_CONFIGS, error_code, raw_request, status_of

from gateway.testing.server import GatewayProcess

MIN_PART = 64 * 1024


@pytest.fixture(scope="module", params=sorted(BACKEND_CONFIGS))
def small_parts(request, tmp_path_factory):
    """A gateway per backend whose parts may be as small as MIN_PART."""
    config = f"min_part_size = {MIN_PART}\n" + (BACKEND_CONFIGS[request.param] or "")
    with GatewayProcess(tmp_path_factory.mktemp("mp") / "cv-storage", config=config) as gw:
        yield gw


@pytest.fixture
def mp(small_parts):
    return small_parts.client()


@pytest.fixture
def mbucket(mp, request):
    name = "mp-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:50].strip("-")
    mp.create_bucket(Bucket=name)
    return name


def _etag_of_parts(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def _upload(mp, bucket, key, parts, **create_args):
    upload_id = mp.create_multipart_upload(Bucket=bucket, Key=key, **create_args)["UploadId"]
    etags = []
    for number, data in enumerate(parts, 1):
        response = mp.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        assert response["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        etags.append(response["ETag"])
    return upload_id, etags


def _upload_with_sha256(mp, bucket, key, parts):
    """An upload whose parts carry SHA256 checksums: (upload id, the completion's part list)."""
    upload_id = mp.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    listed = []
    for number, data in enumerate(parts, 1):
        answer = mp.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                                ChecksumAlgorithm="SHA256")
        assert "ChecksumSHA256" in answer
        listed.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": answer["ChecksumSHA256"]})
    return upload_id, listed


def test_complete_upload(mp, mbucket):
    parts = [os.urandom(MIN_PART), os.urandom(MIN_PART + 5), b"tail"]
    upload_id, etags = _upload(mp, mbucket, "video/clip.mp4", parts, ContentType="video/mp4",
                               Metadata={"camera": "9"})
    done = mp.complete_multipart_upload(
        Bucket=mbucket, Key="video/clip.mp4", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert done["ETag"] == _etag_of_parts(parts)
    assert done["Key"] == "video/clip.mp4"
    assert done["Bucket"] == mbucket
    got = mp.get_object(Bucket=mbucket, Key="video/clip.mp4")
    assert got["Body"].read() == b"".join(parts)
    assert got["ETag"] == _etag_of_parts(parts)
    assert got["ContentType"] == "video/mp4"
    assert got["Metadata"] == {"camera": "9"}
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-mp-parts-count"] == "3"
    # The upload is gone once completed.
    assert "Uploads" not in mp.list_multipart_uploads(Bucket=mbucket)
    with pytest.raises(ClientError) as info:
        mp.list_parts(Bucket=mbucket, Key="video/clip.mp4", UploadId=upload_id)
    assert error_code(info.value) == "NoSuchUpload"


def test_complete_sent_again_after_success_gets_the_same_answer(mp, mbucket):
    """An SDK retry of a Complete whose answer was lost: S3 answers it as done, not NoSuchUpload."""
    parts = [os.urandom(MIN_PART), b"tail"]
    upload_id, etags = _upload(mp, mbucket, "retried", parts, ChecksumAlgorithm="CRC32")
    listed = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
    first = mp.complete_multipart_upload(Bucket=mbucket, Key="retried", UploadId=upload_id,
                                         MultipartUpload={"Parts": listed})
    again = mp.complete_multipart_upload(Bucket=mbucket, Key="retried", UploadId=upload_id,
                                         MultipartUpload={"Parts": listed})
    for field in ("ETag", "Key", "Bucket", "Location", "ChecksumCRC32"):
        assert again.get(field) == first.get(field), field
    assert again["ETag"] == _etag_of_parts(parts)
    assert mp.get_object(Bucket=mbucket, Key="retried")["Body"].read() == b"".join(parts)

    def complete(parts_listed, key="retried"):
        with pytest.raises(ClientError) as info:
            mp.complete_multipart_upload(Bucket=mbucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts_listed})
        return error_code(info.value)

    # Not the same completion: another part list, ETags that are no MD5, another key.
    assert complete(listed[:1]) == "NoSuchUpload"
    assert complete([{"PartNumber": 1, "ETag": '"not-an-md5"'}]) == "NoSuchUpload"
    assert complete(listed, key="another") == "NoSuchUpload"
    # The key overwritten since: the retry cannot be told from a stale one, and is not answered as done.
    mp.put_object(Bucket=mbucket, Key="retried", Body=b"newer")
    assert complete(listed) == "NoSuchUpload"
    assert mp.get_object(Bucket=mbucket, Key="retried")["Body"].read() == b"newer"


def test_complete_sent_again_with_part_checksums(mp, mbucket):
    parts = [os.urandom(MIN_PART), b"tail"]
    upload_id, listed = _upload_with_sha256(mp, mbucket, "k", parts)
    first = mp.complete_multipart_upload(Bucket=mbucket, Key="k", UploadId=upload_id,
                                         MultipartUpload={"Parts": listed})
    again = mp.complete_multipart_upload(Bucket=mbucket, Key="k", UploadId=upload_id,
                                         MultipartUpload={"Parts": listed})
    assert again["ETag"] == first["ETag"] == _etag_of_parts(parts)


def test_complete_with_a_subset_of_parts_and_gaps(mp, mbucket):
    parts = [os.urandom(MIN_PART), b"unused" * 20000, os.urandom(MIN_PART), b"end"]
    upload_id, etags = _upload(mp, mbucket, "gappy", parts)
    chosen = [(1, etags[0]), (3, etags[2]), (4, etags[3])]
    done = mp.complete_multipart_upload(Bucket=mbucket, Key="gappy", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in chosen]})
    assert done["ETag"] == _etag_of_parts([parts[0], parts[2], parts[3]])
    assert mp.get_object(Bucket=mbucket, Key="gappy")["Body"].read() == parts[0] + parts[2] + parts[3]


def test_reuploading_a_part_replaces_it(mp, mbucket):
    upload_id, _ = _upload(mp, mbucket, "redo", [os.urandom(MIN_PART), b"old tail"])
    new_tail = mp.upload_part(Bucket=mbucket, Key="redo", UploadId=upload_id, PartNumber=2, Body=b"new tail")
    parts = mp.list_parts(Bucket=mbucket, Key="redo", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, MIN_PART), (2, 8)]
    assert parts[1]["ETag"] == new_tail["ETag"]


def test_list_parts_and_pagination(mp, mbucket):
    parts = [bytes([n]) * (100 + n) for n in range(1, 6)]
    upload_id, etags = _upload(mp, mbucket, "listed", parts)
    listed = mp.list_parts(Bucket=mbucket, Key="listed", UploadId=upload_id)
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed["Parts"]] == \
        [(n, e, len(d)) for n, (e, d) in enumerate(zip(etags, parts), 1)]
    assert listed["IsTruncated"] is False
    page = mp.list_parts(Bucket=mbucket, Key="listed", UploadId=upload_id, MaxParts=2, PartNumberMarker=1)
    assert [p["PartNumber"] for p in page["Parts"]] == [2, 3]
    assert page["IsTruncated"] is True
    assert page["NextPartNumberMarker"] == 3
    numbers = [p["PartNumber"] for resp in mp.get_paginator("list_parts").paginate(
        Bucket=mbucket, Key="listed", UploadId=upload_id, PaginationConfig={"PageSize": 2})
        for p in resp["Parts"]]
    assert numbers == [1, 2, 3, 4, 5]


def test_list_multipart_uploads(mp, mbucket):
    ids = {key: mp.create_multipart_upload(Bucket=mbucket, Key=key)["UploadId"]
           for key in ("b/two", "a/one", "b/three")}
    listed = mp.list_multipart_uploads(Bucket=mbucket)
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == \
        [("a/one", ids["a/one"]), ("b/three", ids["b/three"]), ("b/two", ids["b/two"])]
    prefixed = mp.list_multipart_uploads(Bucket=mbucket, Prefix="b/")
    assert [u["Key"] for u in prefixed["Uploads"]] == ["b/three", "b/two"]
    page = mp.list_multipart_uploads(Bucket=mbucket, MaxUploads=1)
    assert page["IsTruncated"] is True
    assert page["NextKeyMarker"] == "a/one"
    rest = mp.list_multipart_uploads(Bucket=mbucket, KeyMarker=page["NextKeyMarker"])
    assert [u["Key"] for u in rest["Uploads"]] == ["b/three", "b/two"]
    for key, upload_id in ids.items():
        mp.abort_multipart_upload(Bucket=mbucket, Key=key, UploadId=upload_id)
    assert "Uploads" not in mp.list_multipart_uploads(Bucket=mbucket)


def test_list_uploads_pages_through_uploads_of_one_key(mp, mbucket):
    ids = [mp.create_multipart_upload(Bucket=mbucket, Key="same")["UploadId"] for _ in range(3)]
    ids.append(mp.create_multipart_upload(Bucket=mbucket, Key="zzz")["UploadId"])
    seen = [(u["Key"], u["UploadId"]) for page in mp.get_paginator("list_multipart_uploads").paginate(
        Bucket=mbucket, PaginationConfig={"PageSize": 2}) for u in page.get("Uploads", [])]
    assert sorted(seen) == sorted([("same", i) for i in ids[:3]] + [("zzz", ids[3])])
    assert len(seen) == 4


def test_list_uploads_in_initiation_order_within_a_key(mp, mbucket):
    """Upload IDs begin with their initiation time: (key, upload ID), S3's order, is initiation order."""
    ids = [mp.create_multipart_upload(Bucket=mbucket, Key="k")["UploadId"] for _ in range(4)]
    assert [u["UploadId"] for u in mp.list_multipart_uploads(Bucket=mbucket)["Uploads"]] == ids


def test_list_uploads_resumes_after_a_marker_upload_that_is_gone(mp, mbucket):
    """The clean-up loop "list a page, abort it, ask for the next" must not skip the other uploads
    of the marker's key (it did: a marker no longer found fell back to keys after the marker's)."""
    ids = [mp.create_multipart_upload(Bucket=mbucket, Key="K")["UploadId"] for _ in range(3)]
    other = mp.create_multipart_upload(Bucket=mbucket, Key="L")["UploadId"]
    aborted = []
    page = mp.list_multipart_uploads(Bucket=mbucket, MaxUploads=1)
    while True:
        for upload in page.get("Uploads", []):
            mp.abort_multipart_upload(Bucket=mbucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted.append(upload["UploadId"])
        if not page["IsTruncated"]:
            break
        page = mp.list_multipart_uploads(Bucket=mbucket, MaxUploads=1, KeyMarker=page["NextKeyMarker"],
                                         UploadIdMarker=page["NextUploadIdMarker"])
    assert aborted == ids + [other]
    assert "Uploads" not in mp.list_multipart_uploads(Bucket=mbucket)


def test_list_uploads_max_uploads_zero(mp, mbucket):
    mp.create_multipart_upload(Bucket=mbucket, Key="one")
    page = mp.list_multipart_uploads(Bucket=mbucket, MaxUploads=0)
    assert page["MaxUploads"] == 0 and "Uploads" not in page
    assert page["IsTruncated"] is False  # a truncated page without a next marker would loop a paginator


def test_list_uploads_delimiter_rolls_keys_into_common_prefixes(mp, mbucket):
    for key in ("photos/2026/a.jpg", "photos/2026/b.jpg", "photos/2025/c.jpg", "photos/top.jpg", "zeta"):
        mp.create_multipart_upload(Bucket=mbucket, Key=key)
    listed = mp.list_multipart_uploads(Bucket=mbucket, Prefix="photos/", Delimiter="/")
    assert [u["Key"] for u in listed["Uploads"]] == ["photos/top.jpg"]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["photos/2025/", "photos/2026/"]
    assert listed["Delimiter"] == "/"
    # Paged one entry at a time, a common prefix counts as one and is not listed again.
    seen = []
    for page in mp.get_paginator("list_multipart_uploads").paginate(
            Bucket=mbucket, Delimiter="/", PaginationConfig={"PageSize": 1}):
        seen += [u["Key"] for u in page.get("Uploads", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert seen == ["photos/", "zeta"]


def test_list_uploads_encoding_type_url(mp, mbucket, small_parts):
    """Keys XML cannot carry (a control character) are listable with encoding-type=url, as in ListObjects."""
    mp.create_multipart_upload(Bucket=mbucket, Key="sp ace/\u00e9")
    # (raw: InitiateMultipartUploadResult names the key as it is, which botocore's parser refuses)
    assert raw_request(small_parts, "POST", f"/{mbucket}/ctl%01key", query="uploads=").status == 200
    listed = mp.list_multipart_uploads(Bucket=mbucket, EncodingType="url", Prefix="", MaxUploads=1)
    assert listed["EncodingType"] == "url"
    assert [u["Key"] for u in listed["Uploads"]] == ["ctl%01key"]  # the client decodes them
    assert listed["NextKeyMarker"] == "ctl%01key"
    raw = raw_request(small_parts, "GET", f"/{mbucket}", query="uploads=&encoding-type=url")
    assert raw.status == 200
    assert b"<Key>ctl%01key</Key>" in raw.body and b"<Key>sp%20ace/%C3%A9</Key>" in raw.body
    bad = raw_request(small_parts, "GET", f"/{mbucket}", query="uploads=&encoding-type=base64")
    assert bad.status == 400 and b"<Code>InvalidArgument</Code>" in bad.body


def test_create_upload_refuses_an_unknown_checksum_type(mp, mbucket, small_parts):
    response = raw_request(small_parts, "POST", f"/{mbucket}/typed", query="uploads=",
                           headers={"x-amz-checksum-algorithm": "CRC32", "x-amz-checksum-type": "BOGUS"})
    assert response.status == 400 and b"<Code>InvalidRequest</Code>" in response.body
    assert "Uploads" not in mp.list_multipart_uploads(Bucket=mbucket)


def test_complete_returns_the_object_checksum(mp, mbucket):
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="summed", ChecksumAlgorithm="SHA256")["UploadId"]
    part = mp.upload_part(Bucket=mbucket, Key="summed", UploadId=upload_id, PartNumber=1, Body=b"x" * 100,
                          ChecksumAlgorithm="SHA256")
    done = mp.complete_multipart_upload(Bucket=mbucket, Key="summed", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]}]})
    head = mp.head_object(Bucket=mbucket, Key="summed", ChecksumMode="ENABLED")
    assert done["ChecksumSHA256"] == head["ChecksumSHA256"]


def test_part_with_another_checksum_algorithm_gets_the_uploads_too(mp, mbucket):
    """A choice (docs/s3-compatibility.md): S3 refuses such a part; the gateway verifies what the part
    announces and computes the upload's algorithm for it, so completion with part checksums works."""
    body = b"p" * 1000
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="mixed", ChecksumAlgorithm="SHA256")["UploadId"]
    part = mp.upload_part(Bucket=mbucket, Key="mixed", UploadId=upload_id, PartNumber=1, Body=body,
                          ChecksumAlgorithm="CRC32")
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert part["ChecksumSHA256"] == sha256
    listed = mp.list_parts(Bucket=mbucket, Key="mixed", UploadId=upload_id)["Parts"][0]
    assert listed["ChecksumSHA256"] == sha256
    mp.complete_multipart_upload(Bucket=mbucket, Key="mixed", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": sha256}]})
    assert mp.get_object(Bucket=mbucket, Key="mixed")["Body"].read() == body


def test_abort(mp, mbucket):
    upload_id, _ = _upload(mp, mbucket, "aborted", [b"x" * 10])
    response = mp.abort_multipart_upload(Bucket=mbucket, Key="aborted", UploadId=upload_id)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in (
        lambda: mp.upload_part(Bucket=mbucket, Key="aborted", UploadId=upload_id, PartNumber=2, Body=b"y"),
        lambda: mp.list_parts(Bucket=mbucket, Key="aborted", UploadId=upload_id),
        lambda: mp.abort_multipart_upload(Bucket=mbucket, Key="aborted", UploadId=upload_id),
        lambda: mp.complete_multipart_upload(Bucket=mbucket, Key="aborted", UploadId=upload_id,
                                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]}),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert error_code(info.value) == "NoSuchUpload"
        assert status_of(info.value) == 404
    assert mp.list_objects_v2(Bucket=mbucket)["KeyCount"] == 0


def test_deleting_a_bucket_discards_its_unfinished_uploads(mp, mbucket):
    """DeleteBucket succeeds with uploads in progress, as on S3, and they go with the bucket. They used
    to stay behind: a bucket made again under the same name listed them, and completing one put the
    old bucket's bytes into the new bucket."""
    upload_id, etags = _upload(mp, mbucket, "left-behind", [b"old bucket bytes"])
    mp.delete_bucket(Bucket=mbucket)
    mp.create_bucket(Bucket=mbucket)
    assert mp.list_multipart_uploads(Bucket=mbucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as info:
        mp.complete_multipart_upload(Bucket=mbucket, Key="left-behind", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etags[0]}]})
    assert error_code(info.value) == "NoSuchUpload"
    assert mp.list_objects_v2(Bucket=mbucket)["KeyCount"] == 0


def test_no_such_upload(mp, mbucket):
    for upload_id in ("0123456789abcdef0123456789abcdef", "../../etc/passwd", "not-hex"):
        with pytest.raises(ClientError) as info:
            mp.upload_part(Bucket=mbucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"x")
        assert error_code(info.value) == "NoSuchUpload"
    # An upload belongs to its key.
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="mine")["UploadId"]
    with pytest.raises(ClientError) as info:
        mp.upload_part(Bucket=mbucket, Key="someone-else", UploadId=upload_id, PartNumber=1, Body=b"x")
    assert error_code(info.value) == "NoSuchUpload"


def test_invalid_part(mp, mbucket):
    upload_id, etags = _upload(mp, mbucket, "k", [os.urandom(MIN_PART), b"tail"])
    for parts in ([(1, etags[0]), (3, etags[1])], [(1, etags[0]), (2, '"00000000000000000000000000000000"')]):
        with pytest.raises(ClientError) as info:
            mp.complete_multipart_upload(Bucket=mbucket, Key="k", UploadId=upload_id, MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})
        assert error_code(info.value) == "InvalidPart"
        assert status_of(info.value) == 400
    # A failed completion leaves the upload usable.
    mp.complete_multipart_upload(Bucket=mbucket, Key="k", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})


def test_invalid_part_order(mp, mbucket):
    upload_id, etags = _upload(mp, mbucket, "k", [os.urandom(MIN_PART), b"tail"])
    for order in ([(2, etags[1]), (1, etags[0])], [(1, etags[0]), (1, etags[0])]):
        with pytest.raises(ClientError) as info:
            mp.complete_multipart_upload(Bucket=mbucket, Key="k", UploadId=upload_id, MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in order]})
        assert error_code(info.value) == "InvalidPartOrder"


def test_entity_too_small(mp, mbucket):
    upload_id, etags = _upload(mp, mbucket, "k", [b"a" * (MIN_PART - 1), b"tail"])
    with pytest.raises(ClientError) as info:
        mp.complete_multipart_upload(Bucket=mbucket, Key="k", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert error_code(info.value) == "EntityTooSmall"
    assert info.value.response["Error"]["MinSizeAllowed"] == str(MIN_PART)
    with pytest.raises(ClientError):
        mp.head_object(Bucket=mbucket, Key="k")
    # A single small part is fine: the last part has no minimum.
    upload_id, etags = _upload(mp, mbucket, "one-small", [b"tiny"])
    mp.complete_multipart_upload(Bucket=mbucket, Key="one-small", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etags[0]}]})
    assert mp.get_object(Bucket=mbucket, Key="one-small")["Body"].read() == b"tiny"


def test_bad_part_numbers(mp, mbucket):
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="k")["UploadId"]
    for number in (0, 10001):
        with pytest.raises(ClientError) as info:
            mp.upload_part(Bucket=mbucket, Key="k", UploadId=upload_id, PartNumber=number, Body=b"x")
        assert error_code(info.value) == "InvalidArgument"


def test_complete_with_malformed_xml(small_parts, mp, mbucket):
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="k")["UploadId"]
    for body in (b"<CompleteMultipartUpload><Part>", b"<Other/>", b"<CompleteMultipartUpload/>",
                 (b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>e</ETag></Part>"
                  b"</CompleteMultipartUpload>")):
        response = raw_request(small_parts, "POST", f"/{mbucket}/k", body, query=f"uploadId={upload_id}")
        assert response.status == 400, body
        assert response.code == "MalformedXML", response.body


def test_upload_part_copy_with_ranges(mp, mbucket):
    source = os.urandom(3 * MIN_PART)
    mp.put_object(Bucket=mbucket, Key="source", Body=source)
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="assembled")["UploadId"]
    first = mp.upload_part_copy(Bucket=mbucket, Key="assembled", UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": mbucket, "Key": "source"},
                                CopySourceRange=f"bytes={MIN_PART}-{2 * MIN_PART - 1}")
    assert first["CopyPartResult"]["ETag"] == f'"{hashlib.md5(source[MIN_PART:2 * MIN_PART]).hexdigest()}"'
    second = mp.upload_part_copy(Bucket=mbucket, Key="assembled", UploadId=upload_id, PartNumber=2,
                                 CopySource={"Bucket": mbucket, "Key": "source"})
    third = mp.upload_part(Bucket=mbucket, Key="assembled", UploadId=upload_id, PartNumber=3, Body=b"!")
    mp.complete_multipart_upload(Bucket=mbucket, Key="assembled", UploadId=upload_id, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": first["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]},
        {"PartNumber": 3, "ETag": third["ETag"]}]})
    expected = source[MIN_PART:2 * MIN_PART] + source + b"!"
    assert mp.get_object(Bucket=mbucket, Key="assembled")["Body"].read() == expected


def test_upload_part_copy_errors(mp, mbucket):
    mp.put_object(Bucket=mbucket, Key="source", Body=b"0123456789")
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="dst")["UploadId"]
    # S3 wants bytes=first-last inside the source, and answers InvalidArgument otherwise (not InvalidRange).
    for bad_range in ("bytes=5-50", "bytes=5-", "bytes=-3", "bytes=7-3", "5-6", "bytes=0-1,3-4"):
        with pytest.raises(ClientError) as info:
            mp.upload_part_copy(Bucket=mbucket, Key="dst", UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": mbucket, "Key": "source"}, CopySourceRange=bad_range)
        assert error_code(info.value) == "InvalidArgument", bad_range
    part = mp.upload_part_copy(Bucket=mbucket, Key="dst", UploadId=upload_id, PartNumber=1,
                               CopySource={"Bucket": mbucket, "Key": "source"}, CopySourceRange="bytes=9-9")
    assert part["CopyPartResult"]["ETag"] == f'"{hashlib.md5(b"9").hexdigest()}"'
    with pytest.raises(ClientError) as info:
        mp.upload_part_copy(Bucket=mbucket, Key="dst", UploadId=upload_id, PartNumber=1,
                            CopySource={"Bucket": mbucket, "Key": "missing"})
    assert error_code(info.value) == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        mp.upload_part_copy(Bucket=mbucket, Key="dst", UploadId=upload_id, PartNumber=1,
                            CopySource={"Bucket": mbucket, "Key": "source"}, CopySourceIfMatch='"nope"')
    assert error_code(info.value) == "PreconditionFailed"


def test_boto3_transfer_manager(small_parts, mp, mbucket, tmp_path):
    """upload_file/download_file split at 5 MiB (s3transfer's floor), so this one file is 3 real parts."""
    data = os.urandom(11 * 1024 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024,
                            max_concurrency=2)
    mp.upload_file(str(source), mbucket, "big.bin", Config=config)
    head = mp.head_object(Bucket=mbucket, Key="big.bin")
    assert head["ETag"].endswith('-3"')
    assert head["ContentLength"] == len(data)
    target = tmp_path / "back.bin"
    mp.download_file(mbucket, "big.bin", str(target), Config=config)  # ranged GETs in parallel
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_multipart_with_checksum_algorithm(mp, mbucket):
    parts = [os.urandom(MIN_PART), b"tail"]
    upload_id, etags = _upload_with_sha256(mp, mbucket, "ck", parts)
    mp.complete_multipart_upload(Bucket=mbucket, Key="ck", UploadId=upload_id, MultipartUpload={"Parts": etags})
    got = mp.get_object(Bucket=mbucket, Key="ck", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"".join(parts)  # botocore checks the returned checksum against the bytes
    # A full-object checksum (docs/s3-compatibility.md), not S3's composite "<checksum of checksums>-N".
    expected = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert got["ChecksumSHA256"] == expected


def test_wrong_part_checksum_is_bad_digest(small_parts, mp, mbucket):
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="k")["UploadId"]
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    response = raw_request(small_parts, "PUT", f"/{mbucket}/k", b"part bytes",
                           {"x-amz-checksum-sha256": wrong}, query=f"partNumber=1&uploadId={upload_id}")
    assert response.status == 400
    assert response.code == "BadDigest"
    assert "Parts" not in mp.list_parts(Bucket=mbucket, Key="k", UploadId=upload_id)


def test_complete_with_a_wrong_part_checksum_is_invalid_part(mp, mbucket):
    """The checksum a <Part> of the completion names must be that part's, as on S3 (InvalidPart, and
    the upload stays usable). It used to be ignored, and the object was assembled from parts whose
    checksums the client had not sent."""
    upload_id = mp.create_multipart_upload(Bucket=mbucket, Key="ck", ChecksumAlgorithm="SHA256")["UploadId"]
    part = mp.upload_part(Bucket=mbucket, Key="ck", UploadId=upload_id, PartNumber=1, Body=b"part bytes",
                          ChecksumAlgorithm="SHA256")
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(ClientError) as info:
        mp.complete_multipart_upload(Bucket=mbucket, Key="ck", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": wrong}]})
    assert error_code(info.value) == "InvalidPart"
    with pytest.raises(ClientError):
        mp.head_object(Bucket=mbucket, Key="ck")
    mp.complete_multipart_upload(Bucket=mbucket, Key="ck", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]}]})
    assert mp.get_object(Bucket=mbucket, Key="ck")["Body"].read() == b"part bytes"


def _sha256_parts(mp, bucket: str, key: str, parts: list[bytes], **create_args) -> tuple[str, list[dict]]:
    upload_id = mp.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **create_args)
    done = []
    for number, data in enumerate(parts, 1):
        response = mp.upload_part(Bucket=bucket, Key=key, UploadId=upload_id["UploadId"], PartNumber=number,
                                  Body=data, ChecksumAlgorithm="SHA256")
        done.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": response["ChecksumSHA256"]})
    return upload_id["UploadId"], done


def _complete_raw(server, bucket: str, key: str, upload_id: str, parts: list[dict], headers: dict):
    document = "<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{p['ETag']}</ETag></Part>" for p in parts
    ) + "</CompleteMultipartUpload>"
    return raw_request(server, "POST", f"/{bucket}/{key}", document.encode(), headers, query=f"uploadId={upload_id}")


def test_a_whole_object_checksum_on_completion_is_checked(small_parts, mp, mbucket):
    """x-amz-checksum-<alg> on CompleteMultipartUpload is the object's checksum: a wrong one is
    BadDigest before anything is stored (it used to be ignored), and the upload can still complete."""
    import zlib

    parts = [os.urandom(MIN_PART), b"the last part"]
    whole = b"".join(parts)
    crc32 = base64.b64encode(zlib.crc32(whole).to_bytes(4, "big")).decode()
    upload_id, done = _sha256_parts(mp, mbucket, "whole", parts)
    wrong = base64.b64encode((zlib.crc32(whole) ^ 1).to_bytes(4, "big")).decode()
    with pytest.raises(ClientError) as info:
        mp.complete_multipart_upload(Bucket=mbucket, Key="whole", UploadId=upload_id,
                                     MultipartUpload={"Parts": done}, ChecksumCRC32=wrong, ChecksumType="FULL_OBJECT")
    assert error_code(info.value) == "BadDigest"
    with pytest.raises(ClientError) as missing:
        mp.head_object(Bucket=mbucket, Key="whole")
    assert status_of(missing.value) == 404  # nothing stored
    mp.complete_multipart_upload(Bucket=mbucket, Key="whole", UploadId=upload_id,
                                 MultipartUpload={"Parts": done}, ChecksumCRC32=crc32, ChecksumType="FULL_OBJECT")
    assert mp.get_object(Bucket=mbucket, Key="whole")["Body"].read() == whole


def test_a_composite_checksum_on_completion_is_checked_against_the_parts(small_parts, mp, mbucket):
    parts = [os.urandom(MIN_PART), os.urandom(MIN_PART), b"end"]
    upload_id, done = _sha256_parts(mp, mbucket, "composite", parts)
    of_parts = hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in done)).digest()
    right = base64.b64encode(of_parts).decode() + "-3"
    for wrong in (base64.b64encode(hashlib.sha256(b"x").digest()).decode() + "-3", right[:-2] + "-2"):
        response = _complete_raw(small_parts, mbucket, "composite", upload_id, done,
                                 {"x-amz-checksum-sha256": wrong, "x-amz-checksum-type": "COMPOSITE"})
        assert (response.status, response.code) == (400, "BadDigest"), response.body
    with pytest.raises(ClientError) as missing:
        mp.head_object(Bucket=mbucket, Key="composite")
    assert status_of(missing.value) == 404
    response = _complete_raw(small_parts, mbucket, "composite", upload_id, done, {"x-amz-checksum-sha256": right})
    assert response.status == 200, response.body
    assert mp.get_object(Bucket=mbucket, Key="composite")["Body"].read() == b"".join(parts)


def test_a_composite_checksum_needs_the_parts_checksums(small_parts, mp, mbucket):
    upload_id, etags = _upload(mp, mbucket, "plain", [os.urandom(MIN_PART), b"end"])
    done = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
    claimed = base64.b64encode(hashlib.sha256(b"anything").digest()).decode() + "-2"
    response = _complete_raw(small_parts, mbucket, "plain", upload_id, done, {"x-amz-checksum-sha256": claimed})
    assert (response.status, response.code) == (400, "InvalidRequest"), response.body
    assert b"uploaded without a SHA256 checksum" in response.body
    bad_type = _complete_raw(small_parts, mbucket, "plain", upload_id, done,
                             {"x-amz-checksum-sha256": claimed, "x-amz-checksum-type": "PARTIAL"})
    assert (bad_type.status, bad_type.code) == (400, "InvalidRequest"), bad_type.body
    assert _complete_raw(small_parts, mbucket, "plain", upload_id, done, {}).status == 200


def test_keys_xml_cannot_carry_upload_in_parts_and_the_location_is_a_path(mp, mbucket):
    """A key with a control character (PutObject takes it) was put raw into the multipart answers'
    XML: no SDK could parse CreateMultipartUpload's answer, retried, and left an upload per try."""
    key = "cam1/frame\x01.bin"
    parts = [os.urandom(MIN_PART), b"tail"]
    upload_id, etags = _upload(mp, mbucket, key, parts)
    assert [p["PartNumber"] for p in mp.list_parts(Bucket=mbucket, Key=key, UploadId=upload_id)["Parts"]] == [1, 2]
    done = mp.complete_multipart_upload(Bucket=mbucket, Key=key, UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert done["Key"] == "cam1/frame%01.bin"  # the character XML cannot carry, percent-encoded
    assert mp.get_object(Bucket=mbucket, Key=key)["Body"].read() == b"".join(parts)
    assert "Uploads" not in mp.list_multipart_uploads(Bucket=mbucket, EncodingType="url")
    odd = "q?x=1 #h%/k"
    upload_id, etags = _upload(mp, mbucket, odd, [b"only"])
    done = mp.complete_multipart_upload(Bucket=mbucket, Key=odd, UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etags[0]}]})
    assert done["Location"] == f"/{mbucket}/q%3Fx%3D1%20%23h%25/k"
    assert done["Key"] == odd
