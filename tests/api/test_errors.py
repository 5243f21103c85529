"""Errors: S3 XML bodies with the right code and status, incomplete bodies, 500s that are logged."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import unquote

import boto3
import pytest
from botocore.exceptions import ClientError

# Fixtures imported from s3_helpers: bucket (unique per test).
from s3_helpers import (  # noqa: F401
    assert_s3_error, error_code, key_path, raw_request, send_truncated_body, unique_bucket,
)


def test_error_document_shape(gateway, bucket):
    response = raw_request(gateway, "GET", key_path(bucket, "missing/key"))
    assert_s3_error(response, 404, "NoSuchKey")
    root = response.xml()
    assert root.findtext("Key") == "missing/key"
    assert root.findtext("Resource") == f"/{bucket}/missing/key"


def test_errors_name_the_node_that_answered(gateway, s3):
    """S3's HostId (x-amz-id-2, boto3's ResponseMetadata["HostId"]): a single gateway's host:port
    (a cluster node's id: tests/cluster/test_relay.py), so an operator knows whose log to read."""
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket="no-such-bucket-for-host-id")
    assert info.value.response["ResponseMetadata"]["HostId"] == f"{socket.gethostname()}:{gateway.port}"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket="no-such-bucket-for-host-id", Key="k")
    assert info.value.response["ResponseMetadata"]["HostId"] == f"{socket.gethostname()}:{gateway.port}"


@pytest.mark.parametrize("method, path, query, status, code", [
    ("GET", "/no-such-bucket-x", "", 404, "NoSuchBucket"),
    ("GET", "/BadName", "", 400, "InvalidBucketName"),
    ("POST", "/{bucket}/key", "", 405, "MethodNotAllowed"),
    ("POST", "/", "", 405, "MethodNotAllowed"),
    ("PATCH", "/{bucket}/key", "", 405, "MethodNotAllowed"),
    ("GET", "/{bucket}", "max-keys=abc", 400, "InvalidArgument"),
    ("GET", "/{bucket}", "list-type=2&encoding-type=xml", 400, "InvalidArgument"),
    ("PUT", "/{bucket}", "versioning", 501, "NotImplemented"),
    ("GET", "/{bucket}/key", "partNumber=1", 501, "NotImplemented"),
])
def test_error_codes(gateway, bucket, method, path, query, status, code):
    assert_s3_error(raw_request(gateway, method, path.format(bucket=bucket), query=query), status, code)


@pytest.mark.parametrize("sub_resource", ["acl", "tagging", "policy", "cors", "lifecycle", "website",
                                          "encryption", "object-lock", "versions", "attributes", "select"])
def test_unsupported_sub_resources_are_not_implemented(gateway, s3, bucket, sub_resource):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for path in (f"/{bucket}", key_path(bucket, "k")):
        for method in ("GET", "PUT"):
            response = raw_request(gateway, method, path, query=sub_resource)
            assert_s3_error(response, 501, "NotImplemented")
            assert sub_resource in response.xml().findtext("Message")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x", "a refused request changes nothing"


def test_operations_s3_added_later_change_nothing(s3, bucket):
    """S3 routes each sub-resource to an operation of its own: boto3's newer calls (object
    annotations, RenameObject, bucket metadata tables, ABAC) served as the plain DELETE, PUT or
    CreateBucket would delete the bucket or object they name, or overwrite it with their payload."""
    s3.put_object(Bucket=bucket, Key="cam1/0001.jpg", Body=b"jpeg")
    s3.put_object(Bucket=bucket, Key="other.jpg", Body=b"other")
    calls = {
        "DeleteObjectAnnotation": lambda: s3.delete_object_annotation(
            Bucket=bucket, Key="cam1/0001.jpg", AnnotationName="label"),
        "PutObjectAnnotation": lambda: s3.put_object_annotation(
            Bucket=bucket, Key="cam1/0001.jpg", AnnotationName="label", AnnotationPayload=b'{"face": 1}'),
        "GetObjectAnnotation": lambda: s3.get_object_annotation(
            Bucket=bucket, Key="cam1/0001.jpg", AnnotationName="label"),
        "RenameObject": lambda: s3.rename_object(Bucket=bucket, Key="other.jpg",
                                                 RenameSource=f"{bucket}/cam1/0001.jpg"),
        "DeleteBucketMetadataTableConfiguration": lambda: s3.delete_bucket_metadata_table_configuration(
            Bucket=bucket),
        "DeleteBucketMetadataConfiguration": lambda: s3.delete_bucket_metadata_configuration(Bucket=bucket),
        "PutBucketAbac": lambda: s3.put_bucket_abac(Bucket=f"{bucket}-abac", AbacStatus={"Status": "Enabled"}),
        "GetBucketAbac": lambda: s3.get_bucket_abac(Bucket=bucket),
    }
    for name, call in calls.items():
        with pytest.raises(ClientError) as info:
            call()
        assert error_code(info.value) == "NotImplemented", name
        assert "nothing was changed" in info.value.response["Error"]["Message"], name
    assert s3.get_object(Bucket=bucket, Key="cam1/0001.jpg")["Body"].read() == b"jpeg"
    assert s3.get_object(Bucket=bucket, Key="other.jpg")["Body"].read() == b"other"
    assert f"{bucket}-abac" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_unknown_parameters(gateway, s3, bucket):
    """A write with a parameter the gateway does not read is refused; a read ignores one with a
    value (S3 serves ``?v=2``, a cache-buster), not a valueless one (a sub-resource's shape)."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for method, path, query in [("PUT", key_path(bucket, "k"), "renameObject"),
                                ("PUT", key_path(bucket, "k"), "v=2"),
                                ("DELETE", key_path(bucket, "k"), "annotation&annotationName=a"),
                                ("DELETE", f"/{bucket}", "metadataTable"),
                                ("POST", key_path(bucket, "k"), "whatever"),
                                ("GET", key_path(bucket, "k"), "annotation"),
                                ("HEAD", key_path(bucket, "k"), "annotation"),
                                ("GET", f"/{bucket}", "session")]:
        response = raw_request(gateway, method, path, query=query, body=b"y" if method == "PUT" else b"")
        assert response.status == 501, (method, query)
        if method != "HEAD":
            assert_s3_error(response, 501, "NotImplemented")
            assert query.split("=")[0].split("&")[0] in response.xml().findtext("Message")
    assert raw_request(gateway, "GET", key_path(bucket, "k"), query="v=2").body == b"x"
    assert raw_request(gateway, "HEAD", key_path(bucket, "k"), query="cache=1").status == 200
    listing = raw_request(gateway, "GET", f"/{bucket}", query="list-type=2&nocache=17")
    assert listing.status == 200 and b"<Key>k</Key>" in listing.body
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_a_sigv2_presigned_put_with_headers_in_its_query_is_served(gateway, s3, bucket):
    """boto3's default presigned PUT (SigV2) copies Content-Type and x-amz-meta-* into the query: they
    are parameters the gateway knows, not a sub-resource to refuse."""
    from botocore.config import Config

    v2 = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                      aws_access_key_id=gateway.access_key, aws_secret_access_key=gateway.secret_key,
                      config=Config(s3={"addressing_style": "path"}))
    url = v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "presigned.jpg",
                                                          "ContentType": "image/jpeg", "Metadata": {"camera": "7"}})
    assert "content-type=" in url and "x-amz-meta-camera=" in url, url
    request = urllib.request.Request(url, data=b"jpeg", method="PUT",
                                     headers={"Content-Type": "image/jpeg", "x-amz-meta-camera": "7"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    head = s3.head_object(Bucket=bucket, Key="presigned.jpg")
    assert head["ContentType"] == "image/jpeg" and head["Metadata"] == {"camera": "7"}


def test_a_sigv2_presigned_put_stores_what_it_was_signed_with(gateway, s3, bucket):
    """The signed Content-Type, Content-MD5 and x-amz-meta-* in the query only took part in the
    signature: whoever held the URL stored text/html, forged metadata, or bytes other than the MD5."""
    import base64
    import hashlib

    from botocore.config import Config

    v2 = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                      aws_access_key_id=gateway.access_key, aws_secret_access_key=gateway.secret_key,
                      config=Config(s3={"addressing_style": "path"}))

    def put(url, body, headers):  # http.client: urllib would add a Content-Type of its own
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            connection.request("PUT", f"{parts.path}?{parts.query}", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    url = v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "v2p", "ContentType": "image/jpeg",
                                                          "Metadata": {"owner": "alice"}})
    for forged in ({"Content-Type": "text/html"}, {"Content-Type": "image/jpeg", "x-amz-meta-owner": "mallory"}):
        status, body = put(url, b"x", forged)
        assert status == 403 and b"SignatureDoesNotMatch" in body, (forged, status, body)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="v2p")  # nothing was stored
    assert put(url, b"x", {})[0] == 200  # the headers left out: what the URL was signed with is stored
    head = s3.head_object(Bucket=bucket, Key="v2p")
    assert head["ContentType"] == "image/jpeg" and head["Metadata"] == {"owner": "alice"}
    md5 = base64.b64encode(hashlib.md5(b"expected").digest()).decode()
    url = v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "md5k", "ContentMD5": md5})
    status, body = put(url, b"something else entirely", {})
    assert status == 400 and b"BadDigest" in body, (status, body)
    assert put(url, b"expected", {})[0] == 200


def test_object_lock_bucket_is_refused(s3, bucket):
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket=f"{bucket}-lock", ObjectLockEnabledForBucket=True)
    assert error_code(info.value) == "NotImplemented"
    assert f"{bucket}-lock" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    s3.create_bucket(Bucket=f"{bucket}-nolock", ObjectLockEnabledForBucket=False)
    s3.delete_bucket(Bucket=f"{bucket}-nolock")


def test_boto3_sees_not_implemented(s3, bucket):
    with pytest.raises(ClientError) as info:
        s3.get_object_tagging(Bucket=bucket, Key="k")
    assert error_code(info.value) == "NotImplemented"


def test_unsigned_request_is_access_denied(gateway, bucket):
    assert_s3_error(raw_request(gateway, "GET", f"/{bucket}", signed=False), 403, "AccessDenied")


def test_key_length_limit(gateway, s3, bucket):
    longest = "k" * 1000 + "/" + "é" * 11 + "x"  # 1024 bytes of UTF-8
    assert len(longest.encode()) == 1024
    s3.put_object(Bucket=bucket, Key=longest, Body=b"fits")
    assert s3.get_object(Bucket=bucket, Key=longest)["Body"].read() == b"fits"
    too_long = longest + "y"
    response = raw_request(gateway, "PUT", key_path(bucket, too_long), b"x")
    assert_s3_error(response, 400, "KeyTooLongError")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="z" * 1025, Body=b"x")
    assert error_code(info.value) == "KeyTooLongError"
    with pytest.raises(ClientError) as info:
        s3.create_multipart_upload(Bucket=bucket, Key="z" * 1025)
    assert error_code(info.value) == "KeyTooLongError"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="z" * 1025, CopySource={"Bucket": bucket, "Key": longest})
    assert error_code(info.value) == "KeyTooLongError"


@pytest.mark.parametrize("body", [
    b"<Delete><Object><Key>a</Key></Object>",  # not closed
    b"not xml at all",
    b"<Wrong><Object><Key>a</Key></Object></Wrong>",  # wrong root
    b"<Delete></Delete>",  # no objects
    b"<Delete><Object></Object></Delete>",  # object without key
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "x">]><Delete><Object><Key>&e;</Key></Object></Delete>',
])
def test_malformed_xml(gateway, s3, bucket, body):
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    assert_s3_error(raw_request(gateway, "POST", f"/{bucket}", body, query="delete"), 400, "MalformedXML")
    assert s3.head_object(Bucket=bucket, Key="a")["ContentLength"] == 1


_ENTITY_NAMING_A = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY e "a">]><Delete><Object><Key>&e;</Key></Object></Delete>'
_LAUGHS = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol" * 10}">' for i in range(9))
_BILLION_LAUGHS = f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [{_LAUGHS}]><Delete><Object><Key>&l8;</Key></Object></Delete>'


@pytest.mark.parametrize("body", [
    _ENTITY_NAMING_A.encode("utf-16"),  # with a byte-order mark
    _ENTITY_NAMING_A.encode("utf-16-le"),  # without: expat tells the encoding from the first bytes
    _ENTITY_NAMING_A.encode("utf-16-be"),
    _BILLION_LAUGHS.encode("utf-16"),
], ids=["utf-16", "utf-16-le", "utf-16-be", "billion-laughs-utf-16"])
def test_a_document_type_declaration_is_refused_in_any_encoding(gateway, s3, bucket, body):
    """A DTD in UTF-16 used to pass the check for "<!DOCTYPE" in the bytes: its entity was expanded
    (and named the key to delete); a billion laughs was expanded until expat's amplification limit."""
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    for query in ("delete", None):
        if query is None:  # CompleteMultipartUpload parses its document the same way
            upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
            response = raw_request(gateway, "POST", f"/{bucket}/mp", body, query=f"uploadId={upload}")
        else:
            response = raw_request(gateway, "POST", f"/{bucket}", body, query=query)
        assert_s3_error(response, 400, "MalformedXML")
        assert b"Document type declarations are not allowed" in response.body
    assert s3.head_object(Bucket=bucket, Key="a")["ContentLength"] == 1


def test_malformed_create_bucket_configuration(gateway):
    assert_s3_error(raw_request(gateway, "PUT", "/malformed-config-bucket", b"<CreateBucketConfiguration>"),
                  400, "MalformedXML")


def _temp_files(gateway) -> list[str]:
    tmp_root = gateway.data_dir / ".gateway" / "tmp"
    return [str(p) for p in tmp_root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("declared, sent", [(100_000, 5_000), (5_000_000, 2_000_000), (10, 0)])
def test_body_shorter_than_content_length_stores_nothing(gateway, s3, bucket, declared, sent):
    def wait_for_temp_file():
        # Proof that the PUT is under way: the backend opened its temp file and waits for more bytes.
        deadline = time.monotonic() + 10
        while not _temp_files(gateway) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _temp_files(gateway), "the gateway never started writing the body"

    send_truncated_body(gateway, bucket, "truncated", declared, os.urandom(sent), before_close=wait_for_temp_file)
    # The server notices the closed connection and discards the temp file; give it a moment.
    deadline = time.monotonic() + 10
    while _temp_files(gateway) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temp_files(gateway) == [], "the partial body must not be left behind"
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="truncated")
    assert error_code(info.value) == "404"
    # The server is still up and serving.
    s3.put_object(Bucket=bucket, Key="after", Body=b"still here")
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"still here"


def test_truncated_overwrite_keeps_old_version(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="precious", Body=b"old version")
    send_truncated_body(gateway, bucket, "precious", 2_000_000, os.urandom(1_000_000))
    assert s3.get_object(Bucket=bucket, Key="precious")["Body"].read() == b"old version"


def _damaged_header(path):
    path.write_bytes(b"this is not an object file")


def _directory_instead_of_file(path):
    path.mkdir()  # opening works, reading fails with an OSError nobody expects


@pytest.mark.parametrize("damage", [_damaged_header, _directory_instead_of_file])
def test_internal_failure_is_500_with_logged_request_id(gateway, s3, bucket, damage):
    """Damage placed under the data dir by hand makes reads fail in ways no client can cause."""
    s3.put_object(Bucket=bucket, Key="good", Body=b"fine")
    damage(gateway.data_dir / bucket / "corrupt%obj")
    response = raw_request(gateway, "GET", key_path(bucket, "corrupt"))
    assert_s3_error(response, 500, "InternalError")
    request_id = response.headers["x-amz-request-id"]
    deadline = time.monotonic() + 5
    while request_id not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert request_id in gateway.log(), "the request id of a 500 must be in the server log"
    head = raw_request(gateway, "HEAD", key_path(bucket, "corrupt"))
    assert head.status == 500 and head.body == b""
    # The server stays up; the other objects and the listing still work (the damaged entry is skipped).
    assert s3.get_object(Bucket=bucket, Key="good")["Body"].read() == b"fine"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["good"]


def test_keep_alive_survives_errors(gateway, bucket):
    """An error answered before the body was read must not desynchronise a kept-alive connection."""
    import http.client

    from s3_helpers import sign

    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        for _ in range(3):
            target, headers = sign(gateway, "PUT", key_path("no-such-bucket-ka", "k"), b"x" * 1000)
            conn.request("PUT", target, body=b"x" * 1000, headers=headers)
            response = conn.getresponse()
            assert b"<Code>NoSuchBucket</Code>" in response.read()
            if response.getheader("connection", "").lower() == "close":
                conn.close()
            target, headers = sign(gateway, "GET", f"/{bucket}")
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            assert response.status == 200
            response.read()
    finally:
        conn.close()


def test_error_body_stays_parseable_for_control_characters(s3, bucket):
    """XML 1.0 cannot carry \\x01 at all; the error body percent-encodes it so the client still sees the code."""
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="missing\x01key")
    assert error_code(info.value) == "NoSuchKey"
    assert info.value.response["Error"]["Key"] == "missing%01key"


def test_unsupported_write_features_are_refused(s3, bucket):
    """Storing the object without what the client asked for would be a silent wrong answer."""
    refused = [
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", ServerSideEncryption="AES256"),
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", SSECustomerAlgorithm="AES256",
                              SSECustomerKey="k" * 32),
        lambda: s3.create_multipart_upload(Bucket=bucket, Key="k", ServerSideEncryption="aws:kms"),
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", IfNoneMatch='"abc"'),
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", Tagging="camera=7"),
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", ObjectLockMode="GOVERNANCE",
                              ObjectLockRetainUntilDate="2030-01-01T00:00:00Z"),
    ]
    for call in refused:
        with pytest.raises(ClientError) as info:
            call()
        assert error_code(info.value) == "NotImplemented"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_a_copy_with_a_tagging_directive_alone_is_served_and_new_tags_are_not(s3, bucket):
    """x-amz-tagging-directive asks for nothing by itself (objects have no tags to copy); it was refused
    as if it were x-amz-tagging."""
    s3.put_object(Bucket=bucket, Key="src", Body=b"x")
    for directive in ("COPY", "REPLACE"):
        s3.copy_object(Bucket=bucket, Key=f"copy-{directive}", CopySource={"Bucket": bucket, "Key": "src"},
                       TaggingDirective=directive)
        assert s3.get_object(Bucket=bucket, Key=f"copy-{directive}")["Body"].read() == b"x"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="tagged", CopySource={"Bucket": bucket, "Key": "src"},
                       TaggingDirective="REPLACE", Tagging="camera=7")
    assert error_code(info.value) == "NotImplemented"
    with pytest.raises(ClientError) as info:  # as x-amz-metadata-directive: COPY or REPLACE
        s3.copy_object(Bucket=bucket, Key="bogus", CopySource={"Bucket": bucket, "Key": "src"},
                       TaggingDirective="BOGUS")
    assert error_code(info.value) == "InvalidArgument" and "COPY or REPLACE" in str(info.value)


def test_version_ids(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"only version")
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"only version"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="k", VersionId="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd")
    assert error_code(info.value) == "NotImplemented"
    with pytest.raises(ClientError) as info:
        s3.delete_object(Bucket=bucket, Key="k", VersionId="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd")
    assert error_code(info.value) == "NotImplemented"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"only version"


def test_authentication_errors_are_403_with_s3_codes(gateway, bucket):
    import boto3
    from botocore.config import Config

    def client(access_key, secret_key):
        return boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    for access_key, secret_key, code in [(gateway.access_key, "wrong-secret", "SignatureDoesNotMatch"),
                                         ("unknown-key", gateway.secret_key, "InvalidAccessKeyId")]:
        with pytest.raises(ClientError) as info:
            client(access_key, secret_key).list_objects_v2(Bucket=bucket)
        assert error_code(info.value) == code
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError) as info:
            client(access_key, secret_key).put_object(Bucket=bucket, Key="k", Body=b"x" * 10000)
        assert error_code(info.value) == code
    assert gateway.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


# Numbers in queries and headers: str.isdigit() also accepts "²" (which int() refuses) and int()
# refuses more than 4,300 digits; each of these was a 500 InternalError (found by fuzzing).
_NOT_NUMBERS = ["%C2%B2", "--1", "-1", "9" * 5000, "1e3", "%D9%A3"]


@pytest.mark.parametrize("value", _NOT_NUMBERS)
def test_numeric_query_parameters_that_are_not_numbers(gateway, s3, bucket, value):
    s3.put_object(Bucket=bucket, Key="mp", Body=b"x")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    try:
        huge = value == "9" * 5000  # a number, just a big one: clamped like any large max-keys
        for query in (f"max-keys={value}", f"list-type=2&max-keys={value}", f"uploads&max-uploads={value}",
                      f"uploadId={upload}&max-parts={value}", f"uploadId={upload}&part-number-marker={value}"):
            path = f"/{bucket}" if "max-keys" in query or "max-uploads" in query else f"/{bucket}/mp"
            response = raw_request(gateway, "GET", path, query=query)
            if huge:
                assert response.status == 200, (query, response.status, response.body[:300])
            else:
                assert_s3_error(response, 400, "InvalidArgument")
        part = raw_request(gateway, "PUT", f"/{bucket}/mp", b"abc", query=f"partNumber={value}&uploadId={upload}")
        assert_s3_error(part, 400, "InvalidArgument")
        complete = f"<CompleteMultipartUpload><Part><PartNumber>{unquote(value)}</PartNumber><ETag>x</ETag></Part>" \
                   "</CompleteMultipartUpload>"
        response = raw_request(gateway, "POST", f"/{bucket}/mp", complete.encode(), query=f"uploadId={upload}")
        assert response.status == 400 and response.code in ("MalformedXML", "InvalidPart"), response.body
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"x"


@pytest.mark.parametrize("value", ["9" * 5000, "1e3"])  # "²" in a header: see test_parse_decimal
def test_numeric_headers_that_are_not_numbers(gateway, s3, bucket, value):
    s3.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    try:
        response = raw_request(gateway, "PUT", f"/{bucket}/mp", query=f"partNumber=1&uploadId={upload}", headers={
            "x-amz-copy-source": f"/{bucket}/src", "x-amz-copy-source-range": f"bytes=0-{value}"})
        assert_s3_error(response, 400, "InvalidArgument")
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)
    response = raw_request(gateway, "PUT", f"/{bucket}/chunked", b"3\r\nabc\r\n0\r\n\r\n", headers={
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": value}, unsigned_payload=False)
    assert 400 <= response.status < 500, (response.status, response.body)
    # A Range that is no number is ignored, as S3 does; a huge first byte is past the end.
    response = raw_request(gateway, "GET", f"/{bucket}/src", headers={"range": f"bytes={value}-"})
    assert response.status == (416 if value.isdigit() else 200), response.status
    assert s3.head_object(Bucket=bucket, Key="src")["ContentLength"] == 10
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="chunked")


@pytest.mark.parametrize("value", ["%C2%B2", "9" * 5000])
def test_presigned_expiry_that_is_not_a_number(gateway, s3, bucket, value):
    import re

    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    v4 = gateway.client(signature_version="s3v4")
    url = v4.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
    query, replaced = re.subn(r"X-Amz-Expires=\d+", f"X-Amz-Expires={value}", url.split("?", 1)[1])
    assert replaced == 1, url
    assert_s3_error(raw_request(gateway, "GET", f"/{bucket}/k", query=query, signed=False),
                  400, "AuthorizationQueryParametersError")
    v2 = f"AWSAccessKeyId={gateway.access_key}&Signature=x&Expires={value}"
    response = raw_request(gateway, "GET", f"/{bucket}/k", query=v2, signed=False)
    assert response.status == 403, (response.status, response.body)


@pytest.mark.parametrize("encoding", ["bogus", "shift_jis", "utf-32", "idna", "rot13"])
def test_xml_declaring_an_unreadable_encoding_is_malformed(gateway, s3, bucket, encoding):
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    body = f'<?xml version="1.0" encoding="{encoding}"?><Delete><Object><Key>a</Key></Object></Delete>'.encode()
    assert_s3_error(raw_request(gateway, "POST", f"/{bucket}", body, query="delete"), 400, "MalformedXML")
    assert_s3_error(raw_request(gateway, "PUT", f"/xml-encoding-{encoding.replace('_', '-')}", body), 400,
                  "MalformedXML")
    assert s3.head_object(Bucket=bucket, Key="a")["ContentLength"] == 1


def test_parse_decimal():
    from gateway.api.s3.request import HUGE, parse_decimal

    assert [parse_decimal(v) for v in ("0", "007", "1000", "9" * 19)] == [0, 7, 1000, int("9" * 19)]
    assert parse_decimal("1" + "0" * 19) == HUGE and parse_decimal("9" * 5000) == HUGE
    assert parse_decimal("0" * 5000 + "12") == 12
    for text in ("", "-1", "+1", " 1", "1 ", "1e3", "0x10", "1_000", "\xb2", "\u0663", "\uff11", "1.0"):
        assert parse_decimal(text) is None, repr(text)


@pytest.fixture
def gateway_on_small_disk(tmp_path):
    """A gateway whose cv-storage is a 2 MiB tmpfs: a disk that really fills up."""
    from gateway.testing.disks import tmpfs
    from gateway.testing.server import GatewayProcess

    with tmpfs(tmp_path / "small-disk", "2m") as disk, GatewayProcess(disk / "cv-storage") as gw:
        yield gw, disk


def test_a_full_disk_is_507_insufficient_storage_and_nothing_half_written(gateway_on_small_disk):
    """ENOSPC is the operator's to fix, not a bug: 507 with an S3 error document that says so (not a
    500 with a traceback), no partial object, no half-made bucket, and the gateway keeps serving."""
    gw, disk = gateway_on_small_disk
    s3 = gw.client()
    s3.create_bucket(Bucket="full")
    stored = []
    error = None
    for n in range(40):  # 40 x 256 KiB: five times the disk
        try:
            s3.put_object(Bucket="full", Key=f"o{n}", Body=os.urandom(256 * 1024))
            stored.append(f"o{n}")
        except ClientError as exc:
            error = exc
            break
    assert error is not None, "the 2 MiB disk never filled up"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 507
    assert error_code(error) == "InsufficientStorage"
    assert "full" in error.response["Error"]["Message"]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="full").get("Contents", [])]
    assert listed == sorted(stored, key=str)  # the failed object is not there, not even in part
    for key in stored:
        assert len(s3.get_object(Bucket="full", Key=key)["Body"].read()) == 256 * 1024
    # A bucket made on a full disk fails, and leaves nothing a retry would trip over.
    filler = disk / "filler"  # what the failed PUT freed again, taken (outside cv-storage)
    with open(filler, "wb", buffering=0) as f:
        with pytest.raises(OSError):
            for _ in range(1024):
                f.write(b"\0" * 4096)
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="made-when-full")
    assert error_code(info.value) == "InsufficientStorage"
    filler.unlink()
    s3.create_bucket(Bucket="made-when-full")  # not BucketAlreadyOwnedByYou: the half-made one is gone
    s3.put_object(Bucket="made-when-full", Key="k", Body=b"the gateway still serves")
    assert s3.get_object(Bucket="made-when-full", Key="k")["Body"].read() == b"the gateway still serves"


def assert_retryable_503(call, says: str) -> None:
    """``call()`` is answered 503 ServiceUnavailable with Retry-After and a message containing ``says``."""
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503, response
    assert error_code(info.value) == "ServiceUnavailable"
    assert says in response["Error"]["Message"], response["Error"]
    assert response["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), response


def test_a_disk_turned_read_only_is_a_retryable_503_that_says_so_and_reads_go_on(gateway_on_small_disk):
    """What the kernel does to a filesystem after disk errors: writes are a 503 ServiceUnavailable with
    Retry-After naming the cause (was a 500 InternalError with a traceback per write), reads and
    listings still answer, and writes work again once the disk is writable."""
    from gateway.testing.disks import remount

    gw, disk = gateway_on_small_disk
    s3 = gw.client()
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="empty")
    s3.put_object(Bucket="photos", Key="before", Body=b"stored before")
    remount(disk, read_only=True)
    try:
        for write in (lambda: s3.put_object(Bucket="photos", Key="after", Body=b"x" * 1000),
                      lambda: s3.delete_object(Bucket="photos", Key="before"),
                      lambda: s3.create_bucket(Bucket="made-when-read-only"),
                      lambda: s3.delete_bucket(Bucket="empty")):  # was 204, and the bucket stayed
            assert_retryable_503(write, "Read-only file system")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["empty", "photos"]
        assert s3.get_object(Bucket="photos", Key="before")["Body"].read() == b"stored before"
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="photos")["Contents"]] == ["before"]
        assert "Traceback" not in gw.log()
        # A load balancer's readiness check takes the node out; its liveness check does not restart it.
        ready = urllib.request.Request(gw.endpoint + "/readyz")
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(ready, timeout=10)
        assert not_ready.value.code == 503
        assert "Read-only file system" in json.loads(not_ready.value.read())["backends"]["local"]
        with urllib.request.urlopen(gw.endpoint + "/healthz", timeout=10) as alive:
            assert alive.status == 200
    finally:
        remount(disk, read_only=False)
    s3.put_object(Bucket="photos", Key="after", Body=b"writable again")
    assert s3.get_object(Bucket="photos", Key="after")["Body"].read() == b"writable again"


def test_a_disk_failing_with_eio_is_a_503_for_every_request_and_nothing_is_lost_when_it_works_again(tmp_path):
    """A dying disk or a hung NFS server (gateway/testing/faulty_disk.py): every request that needs the
    disk, reads, listings and a key that does not exist included, is a 503 naming the I/O error (was
    a 500 InternalError with a traceback); a 404 would tell a client the object is gone. Once the
    disk works, everything is there and a write that failed left nothing behind."""
    from gateway.testing.faulty_disk import FaultyDisk
    from gateway.testing.server import GatewayProcess

    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as disk, GatewayProcess(disk.path / "cv-storage") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        for key, size in (("small", 1000), ("big", 300_000)):
            s3.put_object(Bucket="faces", Key=key, Body=b"f" * size)
        disk.fail()
        for call in (lambda: s3.put_object(Bucket="faces", Key="new", Body=b"n" * 5000),
                     lambda: s3.get_object(Bucket="faces", Key="small")["Body"].read(),
                     lambda: s3.get_object(Bucket="faces", Key="big")["Body"].read(),
                     lambda: s3.get_object(Bucket="faces", Key="missing"),
                     lambda: s3.list_objects_v2(Bucket="faces"),
                     lambda: s3.delete_object(Bucket="faces", Key="small"),
                     lambda: s3.create_bucket(Bucket="made-while-failing")):
            assert_retryable_503(call, "Input/output error")
        with pytest.raises(ClientError) as info:
            s3.head_object(Bucket="faces", Key="small")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with urllib.request.urlopen(gw.endpoint + "/healthz", timeout=10) as alive:
            assert alive.status == 200
        assert "Traceback" not in gw.log()
        disk.heal()
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="faces")["Contents"]] == ["big", "small"]
        assert s3.get_object(Bucket="faces", Key="big")["Body"].read() == b"f" * 300_000
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["faces"]


def test_a_data_directory_replaced_under_a_running_gateway(tmp_path):
    """The data directory emptied and its buckets copied back without .gateway/ (docs/storage-layout.md
    allows it), or a copy mounted over it: every write was a 500 with a traceback until a restart (the
    temp directory was made at start only). Deleted outright, it is a 503 naming it, and the gateway
    does not make it again (it may be a disk not mounted)."""
    import shutil

    from gateway.testing.server import GatewayProcess

    data = tmp_path / "cv-storage"
    with GatewayProcess(data) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        s3.put_object(Bucket="faces", Key="kept.jpg", Body=b"kept")
        shutil.copytree(data / "faces", tmp_path / "copy")
        shutil.rmtree(data)
        for call in (lambda: s3.list_buckets(), lambda: s3.create_bucket(Bucket="new"),
                     lambda: s3.put_object(Bucket="faces", Key="x", Body=b"x")):
            with pytest.raises(ClientError) as info:
                call()
            status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
            assert status in (404, 503), info.value.response  # PUT: NoSuchBucket, the bucket is not there
            if status == 503:
                assert str(data) in info.value.response["Error"]["Message"], info.value.response
        assert not data.exists()
        data.mkdir()
        shutil.copytree(tmp_path / "copy", data / "faces")
        s3.put_object(Bucket="faces", Key="after.jpg", Body=b"after")
        s3.create_bucket(Bucket="made-after")
        assert s3.get_object(Bucket="faces", Key="after.jpg")["Body"].read() == b"after"
        assert s3.get_object(Bucket="faces", Key="kept.jpg")["Body"].read() == b"kept"
        assert "Traceback" not in gw.log()


def test_no_file_descriptor_left_is_a_503_slow_down(tmp_path):
    """EMFILE was a 500 InternalError with a traceback per request: too many requests at once, not
    a fault of the gateway. The gateway's limit is lowered (prlimit) to its lowest free descriptor
    on an already open connection, so the PUT's temp file is the first open that fails."""
    import http.client
    import resource

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        pid = gw.process.pid
        request = AWSRequest("PUT", f"{gw.endpoint}/faces/k", data=b"body",
                             headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        SigV4Auth(s3._request_signer._credentials, "s3", "us-east-1").add_auth(request)
        connection = http.client.HTTPConnection(gw.host, gw.port, timeout=30)
        connection.connect()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the gateway has accepted the connection
            in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
            lowest_free = min(set(range(len(in_use) + 1)) - in_use)
            time.sleep(0.2)
            if {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")} == in_use:
                break
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, old[1]))
        try:
            connection.request("PUT", "/faces/k", body=b"body", headers=dict(request.headers))
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
            connection.close()
        assert response.status == 503, body
        assert "<Code>SlowDown</Code>" in body and "file descriptor" in body, body
        assert response.getheader("Retry-After"), response.getheaders()
        s3.put_object(Bucket="faces", Key="k", Body=b"after")  # the limit back: all well
        assert s3.get_object(Bucket="faces", Key="k")["Body"].read() == b"after"
        assert "Traceback" not in gw.log()


def test_a_browser_form_upload_is_not_implemented_rather_than_access_denied(gateway, s3, bucket):
    """POST Object (boto3's generate_presigned_post) carries its signature in form fields: it was a
    403 "Access Denied", which sends its user after correct credentials. Now a 501 saying what to use."""
    post = s3.generate_presigned_post(bucket, "form/upload.txt")
    boundary = "----cvgatewayform"
    fields = [*post["fields"].items(), ("file", "form bytes")]
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                   for name, value in fields) + f"--{boundary}--\r\n"
    request = urllib.request.Request(post["url"], data=body.encode(), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    document = caught.value.read()
    assert caught.value.code == 501 and b"NotImplemented" in document, document
    assert b"POST Object" in document and b"presigned PUT URL" in document
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="form/upload.txt")  # nothing stored
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
