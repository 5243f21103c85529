"""Buckets: create, head, delete, list, name rules; boto3 and raw HTTP against a real gateway."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

# Fixtures imported from s3_helpers: bucket (unique per test), gateway (one per backend).
from s3_helpers import error_code, gateway_on_each_backend, raw_request, status_of, unique_bucket  # noqa: F401


def test_create_head_list_delete(s3):
    s3.create_bucket(Bucket="bucket-life-cycle")
    head = s3.head_bucket(Bucket="bucket-life-cycle")
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "bucket-life-cycle" in names
    assert names == sorted(names)
    assert not any(name.startswith(".") for name in names), "internal buckets must not be listed"
    s3.delete_bucket(Bucket="bucket-life-cycle")
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket="bucket-life-cycle")
    assert status_of(info.value) == 404
    assert "bucket-life-cycle" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_create_with_location_constraint(s3):
    s3.create_bucket(Bucket="bucket-in-region", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert s3.head_bucket(Bucket="bucket-in-region")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket="bucket-in-region")["LocationConstraint"] is None  # us-east-1


def test_create_existing_bucket_is_409(s3, bucket):
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket=bucket)
    assert error_code(info.value) == "BucketAlreadyOwnedByYou"
    assert status_of(info.value) == 409


def test_delete_non_empty_bucket_is_409(s3, bucket):
    s3.put_object(Bucket=bucket, Key="deep/down/object", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.delete_bucket(Bucket=bucket)
    assert error_code(info.value) == "BucketNotEmpty"
    assert status_of(info.value) == 409
    s3.delete_object(Bucket=bucket, Key="deep/down/object")
    s3.delete_bucket(Bucket=bucket)  # empty now, even though it had nested "directories"
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_missing_bucket_is_404_no_such_bucket(s3):
    calls = [
        lambda: s3.list_objects_v2(Bucket="no-such-bucket-here"),
        lambda: s3.list_objects(Bucket="no-such-bucket-here"),
        lambda: s3.get_object(Bucket="no-such-bucket-here", Key="k"),
        lambda: s3.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"x"),
        lambda: s3.delete_bucket(Bucket="no-such-bucket-here"),
        lambda: s3.delete_object(Bucket="no-such-bucket-here", Key="k"),
        lambda: s3.create_multipart_upload(Bucket="no-such-bucket-here", Key="k"),
        lambda: s3.list_multipart_uploads(Bucket="no-such-bucket-here"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as info:
            call()
        assert error_code(info.value) == "NoSuchBucket", info.value.response
        assert status_of(info.value) == 404


def test_head_missing_bucket_is_404_without_body(gateway):
    response = raw_request(gateway, "HEAD", "/no-such-bucket-here")
    assert response.status == 404
    assert response.body == b""


@pytest.mark.parametrize("name", [
    "ab", "a" * 64, "UpperCase", "under_score", "-leading-dash", "trailing-dash-", "double..dot",
    "192.168.1.1", "dot-.dash", "bad%20name",
])
def test_invalid_bucket_names_are_400(gateway, name):
    response = raw_request(gateway, "PUT", f"/{name}")
    assert response.status == 400, response.body
    assert response.code == "InvalidBucketName"
    assert response.headers["content-type"] == "application/xml"


@pytest.mark.parametrize("name", ["xn--punycode", "sthree-bucket", "amzn-s3-demo-bucket", "alias-s3alias",
                                  "lambda--ol-s3", "region.mrap", "zone--x-s3", "tables--table-s3"])
def test_reserved_bucket_names_are_refused_on_create(gateway, name):
    """S3's reserved prefixes and suffixes: refused for a new bucket only. Other requests naming one
    are answered as for any name (a bucket made before this check stays reachable)."""
    response = raw_request(gateway, "PUT", f"/{name}")
    assert response.status == 400 and response.code == "InvalidBucketName"
    assert b"reserves" in response.body
    assert raw_request(gateway, "HEAD", f"/{name}").status == 404
    assert raw_request(gateway, "GET", f"/{name}/key").code == "NoSuchBucket"


def test_internal_multipart_bucket_is_not_reachable(gateway):
    response = raw_request(gateway, "GET", "/.multipart")
    assert response.status == 400
    assert response.code == "InvalidBucketName"


def test_valid_edge_bucket_names(s3):
    for name in ("abc", "a" * 63, "with.dots.in-it", "0-digits-9"):
        s3.create_bucket(Bucket=name)
        s3.head_bucket(Bucket=name)
        s3.delete_bucket(Bucket=name)


def test_versioning_reads_as_never_enabled(s3, bucket):
    response = s3.get_bucket_versioning(Bucket=bucket)
    assert "Status" not in response


def test_list_buckets_prefix_max_buckets_and_continuation(s3, gateway):
    """S3's ListBuckets parameters (2024), which botocore sends: they used to be ignored."""
    import uuid

    prefix = f"lb-{uuid.uuid4().hex[:8]}-"
    names = [f"{prefix}{n}" for n in ("a", "b", "c")]
    for name in names:
        s3.create_bucket(Bucket=name)
    try:
        assert [b["Name"] for b in s3.list_buckets(Prefix=prefix)["Buckets"]] == names
        seen, token = [], None
        for _ in range(5):  # bounded: three pages are expected
            page = s3.list_buckets(Prefix=prefix, MaxBuckets=1, **({"ContinuationToken": token} if token else {}))
            seen += [b["Name"] for b in page["Buckets"]]
            token = page.get("ContinuationToken")
            if not token:
                break
        assert seen == names
        paged = [b["Name"] for p in s3.get_paginator("list_buckets").paginate(Prefix=prefix, PaginationConfig={
            "PageSize": 2}) for b in p["Buckets"]]
        assert paged == names
        assert s3.list_buckets(Prefix=prefix, BucketRegion="eu-west-1")["Buckets"] == []
        assert len(s3.list_buckets(Prefix=prefix, BucketRegion="us-east-1")["Buckets"]) == 3
        for bad in ("0", "10001", "x"):
            response = raw_request(gateway, "GET", f"/?max-buckets={bad}")
            assert (response.status, response.code) == (400, "InvalidArgument"), bad
    finally:
        for name in names:
            s3.delete_bucket(Bucket=name)
