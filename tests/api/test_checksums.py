"""Flexible checksums: verified on the way in, stored, and returned with ChecksumMode=ENABLED."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import zlib

import pytest
from botocore.exceptions import ClientError

# Fixtures imported from s3_helpers: bucket (unique per test), gateway (one per backend).
from s3_helpers import error_code, gateway_on_each_backend, key_path, raw_request, sign, unique_bucket  # noqa: F401

from gateway.checksums import checksum_b64

ALGORITHMS = ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]


def _independent_checksum(algorithm: str, data: bytes) -> str | None:
    """The checksum from a library other than the gateway's, where the standard library has one."""
    if algorithm == "CRC32":
        return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    if algorithm in ("SHA1", "SHA256"):
        return base64.b64encode(hashlib.new(algorithm.lower(), data).digest()).decode()
    return None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_put_with_checksum_algorithm(s3, bucket, algorithm):
    body = os.urandom(70_000)
    put = s3.put_object(Bucket=bucket, Key=f"obj-{algorithm}", Body=body, ChecksumAlgorithm=algorithm)
    expected = _independent_checksum(algorithm, body) or checksum_b64(algorithm, body)
    assert put[f"Checksum{algorithm}"] == expected
    got = s3.get_object(Bucket=bucket, Key=f"obj-{algorithm}", ChecksumMode="ENABLED")
    assert got["Body"].read() == body  # botocore also validates the returned checksum itself
    assert got[f"Checksum{algorithm}"] == expected
    head = s3.head_object(Bucket=bucket, Key=f"obj-{algorithm}", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"] == expected


def test_default_boto3_put_stores_crc32(s3, bucket):
    """boto3 >= 1.36 sends a CRC32 trailer on every PUT by default."""
    body = b"default checksum"
    s3.put_object(Bucket=bucket, Key="default", Body=body)
    got = s3.head_object(Bucket=bucket, Key="default", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == _independent_checksum("CRC32", body)


def test_checksums_not_returned_unless_asked(s3, bucket):
    s3.put_object(Bucket=bucket, Key="quiet", Body=b"x", ChecksumAlgorithm="SHA256")
    head = s3.head_object(Bucket=bucket, Key="quiet")
    assert not any(name.startswith("x-amz-checksum-") for name in head["ResponseMetadata"]["HTTPHeaders"])


def test_ranged_get_does_not_claim_whole_object_checksum(s3, bucket):
    s3.put_object(Bucket=bucket, Key="ranged", Body=b"0123456789", ChecksumAlgorithm="SHA256")
    got = s3.get_object(Bucket=bucket, Key="ranged", Range="bytes=2-4", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"234"
    assert "ChecksumSHA256" not in got


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_checksum_header_is_bad_digest_and_stores_nothing(gateway, s3, bucket, algorithm):
    body = b"the real bytes"
    wrong = checksum_b64(algorithm, b"other bytes")
    response = raw_request(gateway, "PUT", key_path(bucket, "bad"), body,
                           {f"x-amz-checksum-{algorithm.lower()}": wrong})
    assert response.status == 400, response.body
    assert response.code == "BadDigest"
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="bad")
    assert error_code(info.value) == "404"


# Not base64; 3 bytes (no algorithm's length); 35 bytes; empty.
@pytest.mark.parametrize("value", ["not base64!", "AAAA", checksum_b64("SHA256", b"x") + "AAAA", ""])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_malformed_checksum_value_is_invalid_request_and_stores_nothing(gateway, s3, bucket, algorithm, value):
    """A value that cannot be a checksum of that algorithm (not base64, wrong length) is the
    header's fault: InvalidRequest, as S3 answers, not BadDigest."""
    response = raw_request(gateway, "PUT", key_path(bucket, "malformed"), b"bytes",
                           {f"x-amz-checksum-{algorithm.lower()}": value})
    assert response.status == 400, response.body
    assert response.code == "InvalidRequest", response.body
    assert f"x-amz-checksum-{algorithm.lower()}" in response.xml().findtext("Message")
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="malformed")
    assert error_code(info.value) == "404"


def test_wrong_checksum_does_not_replace_existing_object(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="keep", Body=b"original")
    response = raw_request(gateway, "PUT", key_path(bucket, "keep"), b"replacement",
                           {"x-amz-checksum-sha256": checksum_b64("SHA256", b"something else")})
    assert response.code == "BadDigest"
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"original"


def test_wrong_content_md5_is_bad_digest(gateway, s3, bucket):
    body = b"md5 checked"
    wrong = base64.b64encode(hashlib.md5(b"not it").digest()).decode()
    response = raw_request(gateway, "PUT", key_path(bucket, "md5"), body, {"Content-MD5": wrong})
    assert response.status == 400
    assert response.code == "BadDigest"
    right = base64.b64encode(hashlib.md5(body).digest()).decode()
    response = raw_request(gateway, "PUT", key_path(bucket, "md5"), body, {"Content-MD5": right})
    assert response.status == 200
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == body


def test_invalid_content_md5_is_invalid_digest(gateway, bucket):
    response = raw_request(gateway, "PUT", key_path(bucket, "md5"), b"x", {"Content-MD5": "not base64 md5"})
    assert response.status == 400
    assert response.code == "InvalidDigest"


def test_wrong_signed_payload_hash(gateway, s3, bucket):
    """The body differs from the x-amz-content-sha256 it was signed with: nothing is stored."""
    import http.client

    from s3_helpers import sign

    target, headers = sign(gateway, "PUT", key_path(bucket, "tampered"), b"signed bytes")
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    conn.request("PUT", target, body=b"evil! bytes", headers=headers)  # same length, other bytes
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 400
    assert b"<Code>XAmzContentSHA256Mismatch</Code>" in body
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="tampered")


@pytest.mark.parametrize("kind", ["delete-objects", "complete-upload"])
def test_signed_payload_hash_covers_xml_bodies(gateway, s3, bucket, kind):
    """The request documents (DeleteObjects, CompleteMultipartUpload, ...) were read without checking
    them against the signed x-amz-content-sha256: a signed request sent with another document
    deleted other keys or completed an upload with other parts."""
    for key in ("keep", "gone"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    if kind == "delete-objects":
        query = "delete"

        def document(key):
            return f"<Delete><Object><Key>{key}</Key></Object></Delete>".encode()
    else:
        upload = s3.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
        etag = s3.upload_part(Bucket=bucket, Key="gone", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
        query = f"uploadId={upload}"

        def document(key):
            number = 1 if key == "gone" else 2
            return (f"<CompleteMultipartUpload><Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag>"
                    "</Part></CompleteMultipartUpload>").encode()
    target, headers = sign(gateway, "POST", f"/{bucket}" if kind == "delete-objects" else key_path(bucket, "gone"),
                           document("keep"), query=query)
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        conn.request("POST", target, body=document("gone"), headers=headers)  # same length, other document
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in body, body
    assert s3.get_object(Bucket=bucket, Key="gone")["Body"].read() == b"x"
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"


def test_signed_payload_hash_covers_an_aws_chunked_body(gateway, s3, bucket):
    """With a hash in x-amz-content-sha256 (not STREAMING-*), Content-Encoding: aws-chunked did not
    make the body unsigned: a request signed for an empty body stored any chunked body sent with it."""
    data = b"bytes nobody signed"
    chunked = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    framing = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))}
    target, headers = sign(gateway, "PUT", key_path(bucket, "smuggled"), b"", framing)
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        conn.request("PUT", target, body=chunked, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in body, body
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="smuggled")
    # The hash of the body as sent, framing and all, is what such a signature covers.
    response = raw_request(gateway, "PUT", key_path(bucket, "framed"), chunked, framing)
    assert response.status == 200, response.body
    assert s3.get_object(Bucket=bucket, Key="framed")["Body"].read() == data


def test_unknown_checksum_algorithm(gateway, bucket):
    response = raw_request(gateway, "PUT", key_path(bucket, "k"), b"x", {"x-amz-sdk-checksum-algorithm": "MD4"})
    assert response.status == 400
    assert response.code == "InvalidRequest"


# Algorithms S3 has (botocore sends them as ChecksumSHA512=... and so on) that the gateway cannot compute.
@pytest.mark.parametrize("header, value", [
    ("x-amz-checksum-sha512", base64.b64encode(hashlib.sha512(b"other bytes").digest()).decode()),
    ("x-amz-checksum-md5", base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()),
    ("x-amz-checksum-xxhash64", "AAAAAAAAAAA="),
])
def test_checksum_header_of_unknown_algorithm_is_refused(gateway, s3, bucket, header, value):
    """A checksum header the gateway cannot verify is refused, as a wrong one would be: it used to be
    ignored, and an object whose bytes did not match the client's checksum was stored as if verified."""
    response = raw_request(gateway, "PUT", key_path(bucket, "unverified"), b"the real bytes", {header: value})
    assert response.status == 400, response.body
    assert response.code == "InvalidRequest"
    assert header in response.xml().findtext("Message")
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="unverified")
    assert error_code(info.value) == "404"


@pytest.mark.parametrize("announced, right", [(True, True), (True, False), (False, True), (False, False)])
def test_trailing_checksum_must_be_announced_and_right(gateway, s3, bucket, announced, right):
    """A checksum trailer is checked when x-amz-trailer announces it; one that is not announced is
    refused rather than ignored: the client meant the object to be verified."""
    data = b"abc"
    crc = _independent_checksum("CRC32", data) if right else _independent_checksum("CRC32", b"abd")
    body = f"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    headers = {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": "3"}
    if announced:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    response = raw_request(gateway, "PUT", key_path(bucket, "trailed"), body, headers=headers)
    if announced and right:
        assert response.status == 200, response.body
        got = s3.get_object(Bucket=bucket, Key="trailed", ChecksumMode="ENABLED")
        assert got["Body"].read() == data and got["ChecksumCRC32"] == crc
        return
    assert response.status == 400, (response.status, response.body)
    assert response.code == ("BadDigest" if announced else "InvalidRequest"), response.body
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="trailed")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_copy_with_checksum_algorithm_computes_it(s3, bucket):
    """CopyObject's x-amz-checksum-algorithm: the copy gets that checksum (was ignored)."""
    body = os.urandom(40_000)
    s3.put_object(Bucket=bucket, Key="src", Body=body, ChecksumAlgorithm="SHA256")
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
                            ChecksumAlgorithm="CRC32")
    expected = _independent_checksum("CRC32", body)
    assert copied["CopyObjectResult"]["ChecksumCRC32"] == expected
    head = s3.head_object(Bucket=bucket, Key="dst", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == expected and "ChecksumSHA256" not in head  # the requested one, as on S3
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == body
    # Without the header the copy keeps the source's checksum, and says so.
    kept = s3.copy_object(Bucket=bucket, Key="dst2", CopySource={"Bucket": bucket, "Key": "src"})
    assert kept["CopyObjectResult"]["ChecksumSHA256"] == _independent_checksum("SHA256", body)


def test_copy_with_unknown_checksum_algorithm_is_refused(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"data")
    response = raw_request(gateway, "PUT", f"/{bucket}/dst",
                           headers={"x-amz-copy-source": f"/{bucket}/src", "x-amz-checksum-algorithm": "MD5"})
    assert response.status == 400 and response.code == "InvalidRequest"
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="dst")
    assert error_code(info.value) == "404"
