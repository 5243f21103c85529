"""Conditional GET and HEAD: If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since.

S3's precedence (RFC 7232 section 6): If-Match decides alone when present (If-Unmodified-Since is
then ignored), If-None-Match decides alone over If-Modified-Since, and a 412 condition wins over a
304 one.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

# Fixtures imported from s3_helpers: bucket (unique per test), gateway (one per backend).
from s3_helpers import gateway_on_each_backend, key_path, raw_request, status_of, unique_bucket  # noqa: F401

PAST = "Sat, 01 Jan 2000 00:00:00 GMT"
FUTURE_ISH = "Fri, 01 Jan 2100 00:00:00 GMT"


@pytest.fixture
def obj(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="cond", Body=b"conditional body")
    head = s3.head_object(Bucket=bucket, Key="cond")
    return {"bucket": bucket, "etag": put["ETag"],
            "last_modified": head["ResponseMetadata"]["HTTPHeaders"]["last-modified"]}


def _status(gateway, obj, method="GET", **headers) -> int:
    response = raw_request(gateway, method, key_path(obj["bucket"], "cond"), headers=headers)
    if response.status == 304 or method == "HEAD":
        assert response.body == b"", "304 and HEAD answers have no body"
    return response.status


CASES = [
    # (headers, expected status) -- headers use the placeholders ETAG, OTHER, LM, PAST, LATER
    ({"If-Match": "ETAG"}, 200),
    ({"If-Match": "OTHER"}, 412),
    ({"If-Match": "*"}, 200),
    ({"If-Match": '"x", ETAG'}, 200),
    ({"If-None-Match": "ETAG"}, 304),
    ({"If-None-Match": "OTHER"}, 200),
    ({"If-None-Match": "*"}, 304),
    ({"If-None-Match": "W/ETAG"}, 304),  # weak comparison (RFC 9110 13.1.2): a cache's weak tag of this version
    ({"If-None-Match": '"x", W/ETAG'}, 304),
    ({"If-Match": "W/ETAG"}, 412),  # strong comparison: a weak tag never matches
    ({"If-Modified-Since": "PAST"}, 200),
    ({"If-Modified-Since": "LM"}, 304),
    ({"If-Modified-Since": "LATER"}, 304),
    ({"If-Unmodified-Since": "PAST"}, 412),
    ({"If-Unmodified-Since": "LM"}, 200),
    ({"If-Unmodified-Since": "LATER"}, 200),
    ({"If-Modified-Since": "not a date"}, 200),  # unparsable dates are ignored
    # Precedence.
    ({"If-Match": "ETAG", "If-Unmodified-Since": "PAST"}, 200),  # If-Match true: IUS ignored
    ({"If-Match": "OTHER", "If-Unmodified-Since": "LATER"}, 412),
    ({"If-None-Match": "OTHER", "If-Modified-Since": "LATER"}, 200),  # INM false: IMS ignored
    ({"If-None-Match": "ETAG", "If-Modified-Since": "PAST"}, 304),
    ({"If-Match": "OTHER", "If-None-Match": "ETAG"}, 412),  # 412 beats 304
    ({"If-Match": "ETAG", "If-None-Match": "ETAG"}, 304),
    ({"If-Match": "ETAG", "If-Modified-Since": "LATER"}, 304),
    ({"If-Unmodified-Since": "PAST", "If-None-Match": "ETAG"}, 412),
    ({"If-Unmodified-Since": "PAST", "If-Modified-Since": "LATER"}, 412),
]


def _fill(headers: dict, obj) -> dict:
    values = {"ETAG": obj["etag"], "OTHER": '"0123456789abcdef0123456789abcdef"', "LM": obj["last_modified"],
              "PAST": PAST, "LATER": FUTURE_ISH}
    return {name: values.get(value, value).replace("ETAG", obj["etag"]) for name, value in headers.items()}


@pytest.mark.parametrize("headers, expected", CASES, ids=[str(c[0]) for c in CASES])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_precedence(gateway, obj, method, headers, expected):
    assert _status(gateway, obj, method, **_fill(headers, obj)) == expected


def test_not_modified_carries_validators(gateway, obj):
    response = raw_request(gateway, "GET", key_path(obj["bucket"], "cond"), headers={"If-None-Match": obj["etag"]})
    assert response.status == 304
    assert response.headers["etag"] == obj["etag"]
    assert response.headers["last-modified"] == obj["last_modified"]
    assert "content-type" not in response.headers or response.body == b""


def test_precondition_failed_body(gateway, obj):
    response = raw_request(gateway, "GET", key_path(obj["bucket"], "cond"), headers={"If-Match": '"nope"'})
    assert response.status == 412
    assert response.code == "PreconditionFailed"
    assert response.xml().findtext("Condition") == "If-Match"


def test_boto3_conditional_get(s3, obj):
    got = s3.get_object(Bucket=obj["bucket"], Key="cond", IfMatch=obj["etag"])
    assert got["Body"].read() == b"conditional body"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=obj["bucket"], Key="cond", IfNoneMatch=obj["etag"])
    assert status_of(info.value) == 304
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=obj["bucket"], Key="cond", IfMatch='"other"')
    assert status_of(info.value) == 412


def test_conditional_with_range(s3, obj):
    got = s3.get_object(Bucket=obj["bucket"], Key="cond", IfMatch=obj["etag"], Range="bytes=0-10")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["Body"].read() == b"conditional"


def test_condition_on_missing_key_is_404(gateway, bucket):
    response = raw_request(gateway, "GET", key_path(bucket, "missing"), headers={"If-Match": '"x"'})
    assert response.status == 404
    assert response.code == "NoSuchKey"


def test_conditional_put_if_match(s3, obj):
    s3.put_object(Bucket=obj["bucket"], Key="cond", Body=b"v2", IfMatch=obj["etag"])
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=obj["bucket"], Key="cond", Body=b"v3", IfMatch=obj["etag"])  # stale now
    assert status_of(info.value) == 412
    assert s3.get_object(Bucket=obj["bucket"], Key="cond")["Body"].read() == b"v2"


def _multipart(s3, bucket: str, key: str, body: bytes) -> tuple[str, list]:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)
    return upload, [{"PartNumber": 1, "ETag": part["ETag"]}]


def test_complete_multipart_upload_honours_if_none_match_and_if_match(s3, obj):
    """S3 takes If-None-Match: * and If-Match on CompleteMultipartUpload too; they used to be ignored,
    and the completion replaced an object the client asked not to replace."""
    bucket = obj["bucket"]
    upload, parts = _multipart(s3, bucket, "cond", b"from a multipart upload")
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="cond", UploadId=upload,
                                     MultipartUpload={"Parts": parts}, IfNoneMatch="*")
    assert status_of(info.value) == 412
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="cond", UploadId=upload,
                                     MultipartUpload={"Parts": parts}, IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status_of(info.value) == 412
    assert s3.get_object(Bucket=bucket, Key="cond")["Body"].read() == b"conditional body"  # untouched
    # The upload is still there: with the right ETag it completes.
    s3.complete_multipart_upload(Bucket=bucket, Key="cond", UploadId=upload,
                                 MultipartUpload={"Parts": parts}, IfMatch=obj["etag"])
    assert s3.get_object(Bucket=bucket, Key="cond")["Body"].read() == b"from a multipart upload"
    # Create-only onto a new key works.
    upload, parts = _multipart(s3, bucket, "fresh", b"new")
    s3.complete_multipart_upload(Bucket=bucket, Key="fresh", UploadId=upload,
                                 MultipartUpload={"Parts": parts}, IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"new"


def test_copy_object_honours_if_none_match_and_if_match(s3, obj):
    """CopyObject takes If-None-Match: * and If-Match on its target, as PutObject does (boto3's
    IfNoneMatch/IfMatch). They used to be ignored, and the copy replaced the object the client asked
    to keep."""
    bucket = obj["bucket"]
    s3.put_object(Bucket=bucket, Key="source", Body=b"copied bytes")
    source = {"Bucket": bucket, "Key": "source"}
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="cond", CopySource=source, IfNoneMatch="*")
    assert status_of(info.value) == 412
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="cond", CopySource=source, IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status_of(info.value) == 412
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="missing", CopySource=source, IfMatch=obj["etag"])
    assert status_of(info.value) == 404
    assert s3.get_object(Bucket=bucket, Key="cond")["Body"].read() == b"conditional body"  # untouched
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="missing")
    # The conditions that hold let the copy through.
    s3.copy_object(Bucket=bucket, Key="cond", CopySource=source, IfMatch=obj["etag"])
    assert s3.get_object(Bucket=bucket, Key="cond")["Body"].read() == b"copied bytes"
    s3.copy_object(Bucket=bucket, Key="fresh", CopySource=source, IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"copied bytes"
