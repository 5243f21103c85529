"""Bad and unusual inputs found by probing the S3 API: each gets a clear 4xx S3 error, nothing is
half-written or lost, and the server keeps serving. Real gateway, boto3 and raw (signed) HTTP."""

from __future__ import annotations

import socket
import time

import pytest
from botocore.exceptions import ClientError

# Fixtures imported from s3_helpers: bucket (unique per test).
from s3_helpers import assert_s3_error, error_code, raw_request, sign, status_of, unique_bucket  # noqa: F401


def _keys(s3, bucket) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


# -- invalid UTF-8 in the URL ------------------------------------------------------------------------

def test_invalid_utf8_in_the_path_is_invalid_uri_and_stores_nothing(gateway, s3, bucket):
    """%FF and %FE used to decode to the same U+FFFD key: two different keys, one object."""
    response = raw_request(gateway, "PUT", f"/{bucket}/bad%FFkey", b"first")
    assert_s3_error(response, 400, "InvalidURI")
    assert_s3_error(raw_request(gateway, "PUT", f"/{bucket}/bad%FEkey", b"second"), 400, "InvalidURI")
    assert_s3_error(raw_request(gateway, "PUT", f"/{bucket}/half%C3", b"x"), 400, "InvalidURI")
    assert _keys(s3, bucket) == []
    # Reads (the fast path) and the other verbs refuse it the same way.
    s3.put_object(Bucket=bucket, Key="bad\ufffdkey", Body=b"real replacement character")
    for method in ("GET", "HEAD", "DELETE"):
        response = raw_request(gateway, method, f"/{bucket}/bad%FFkey")
        assert response.status == 400, (method, response.status, response.body)
        if method != "HEAD":
            assert_s3_error(response, 400, "InvalidURI")
    assert_s3_error(raw_request(gateway, "POST", f"/{bucket}/bad%FFkey", query="uploads"), 400, "InvalidURI")
    # A real U+FFFD, sent as its UTF-8 (%EF%BF%BD), is an ordinary key and was not deleted.
    assert s3.get_object(Bucket=bucket, Key="bad\ufffdkey")["Body"].read() == b"real replacement character"
    assert _keys(s3, bucket) == ["bad\ufffdkey"]


@pytest.mark.parametrize("query", ["prefix=%FF", "list-type=2&start-after=%FE", "delimiter=%C3", "marker=a%FFb"])
def test_invalid_utf8_in_a_query_value_is_invalid_uri(gateway, bucket, query):
    assert_s3_error(raw_request(gateway, "GET", f"/{bucket}", query=query), 400, "InvalidURI")


def test_invalid_utf8_in_the_copy_source_is_refused(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="bad\ufffdsrc", Body=b"not this one")
    response = raw_request(gateway, "PUT", f"/{bucket}/dst", headers={"x-amz-copy-source": f"{bucket}/bad%FFsrc"})
    assert_s3_error(response, 400, "InvalidArgument")
    assert "dst" not in _keys(s3, bucket)


# -- appends (S3 Express's x-amz-write-offset-bytes) ---------------------------------------------------

def test_append_with_write_offset_is_not_implemented_and_keeps_the_object(s3, bucket):
    """The gateway used to ignore the offset and replace "hello" with the appended bytes."""
    s3.put_object(Bucket=bucket, Key="log", Body=b"hello")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="log", Body=b" world", WriteOffsetBytes=5)
    assert error_code(info.value) == "NotImplemented"
    assert status_of(info.value) == 501
    assert s3.get_object(Bucket=bucket, Key="log")["Body"].read() == b"hello"


# -- conditional deletes -----------------------------------------------------------------------------

def test_delete_object_honours_if_match(s3, bucket):
    """If-Match on DeleteObject (S3 since 2025) used to be ignored: the object was deleted anyway."""
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"keep me")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.delete_object(Bucket=bucket, Key="k", IfMatch='"00000000000000000000000000000000"')
    assert error_code(info.value) == "PreconditionFailed"
    assert status_of(info.value) == 412
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"keep me"
    s3.delete_object(Bucket=bucket, Key="k", IfMatch=etag)
    assert _keys(s3, bucket) == []
    with pytest.raises(ClientError) as info:  # If-Match on a missing key: 404, as on S3
        s3.delete_object(Bucket=bucket, Key="k", IfMatch="*")
    assert error_code(info.value) == "NoSuchKey"
    s3.put_object(Bucket=bucket, Key="k", Body=b"again")
    s3.delete_object(Bucket=bucket, Key="k", IfMatch="*")  # any version
    assert _keys(s3, bucket) == []
    s3.delete_object(Bucket=bucket, Key="k")  # an unconditional delete of a missing key is still fine


def test_delete_object_size_and_time_conditions_are_not_implemented(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"12345")
    with pytest.raises(ClientError) as info:
        s3.delete_object(Bucket=bucket, Key="k", IfMatchSize=4)
    assert error_code(info.value) == "NotImplemented"
    with pytest.raises(ClientError) as info:
        s3.delete_object(Bucket=bucket, Key="k", IfMatchLastModifiedTime=time.time())
    assert error_code(info.value) == "NotImplemented"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"12345"


def test_delete_objects_honours_etags(s3, bucket):
    etags = {key: s3.put_object(Bucket=bucket, Key=key, Body=key.encode())["ETag"] for key in "abcde"}
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "a", "ETag": '"00000000000000000000000000000000"'},  # wrong: kept
        {"Key": "b", "ETag": etags["b"]},  # right: deleted
        {"Key": "c"},  # unconditional: deleted
        {"Key": "d", "Size": 1},  # a condition not implemented: kept
        {"Key": "missing", "ETag": etags["e"]},  # no such key
    ]})
    errors = {e["Key"]: e["Code"] for e in result.get("Errors", [])}
    assert errors == {"a": "PreconditionFailed", "d": "NotImplemented", "missing": "NoSuchKey"}
    assert sorted(d["Key"] for d in result.get("Deleted", [])) == ["b", "c"]
    assert _keys(s3, bucket) == ["a", "d", "e"]


def test_delete_objects_with_a_version_id_is_not_implemented_for_that_key(s3, bucket):
    """A DeleteObjects entry naming a version other than "null" is refused for that key, as
    DeleteObject?versionId= is: the VersionId used to be ignored and the current object deleted,
    when the client asked to delete an older version and keep the current one."""
    for key in "abc":
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "a", "VersionId": "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"},  # a version: kept
        {"Key": "b", "VersionId": "null"},  # the only version there is: deleted
        {"Key": "c"},
    ]})
    assert {e["Key"]: e["Code"] for e in result.get("Errors", [])} == {"a": "NotImplemented"}
    assert sorted(d["Key"] for d in result.get("Deleted", [])) == ["b", "c"]
    assert _keys(s3, bucket) == ["a"]


# -- listing continuation tokens -------------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "%21%21%21", "not-base64%3F", "QQ", "_w%3D%3D"])
def test_garbage_continuation_token_is_invalid_argument(gateway, s3, bucket, token):
    """A token that is not one the gateway issued used to restart the listing from the first key."""
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    response = raw_request(gateway, "GET", f"/{bucket}", query=f"list-type=2&continuation-token={token}")
    assert_s3_error(response, 400, "InvalidArgument")


def test_issued_continuation_tokens_still_page_through(s3, bucket):
    keys = [f"k{i:02d}" for i in range(7)] + ["é/x", "z" * 300]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2})
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == sorted(keys, key=str.encode)


# -- the size of a request head ------------------------------------------------------------------------

def _send_head(gateway, head: bytes, chunk: int = 65536, limit: float = 20.0) -> bytes:
    """Send a request head in pieces (stop if the server closes), then read what comes back."""
    received = b""
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        try:
            for offset in range(0, len(head), chunk):
                sock.sendall(head[offset:offset + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what it said is in the socket's buffer
        deadline = time.monotonic() + limit
        try:
            while time.monotonic() < deadline and (chunk_in := sock.recv(65536)):
                received += chunk_in
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def test_an_endless_header_is_refused_and_the_server_stays_up(gateway, s3, bucket):
    """A header that never ends used to be buffered whole: 136 MB sent, 225 MB more server memory."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"still here")
    head = f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n"
    received = _send_head(gateway, head)
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request", received[:300]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert b"<Code>RequestHeaderSectionTooLarge</Code>" in body
    assert b"<MaxSizeAllowed>" in body
    # The same for a URL that never ends, and many small headers (2 MB: the first piece of a head
    # that the server reads, up to 256 KiB, is not counted, so a head a little over the limit may pass).
    received = _send_head(gateway, f"GET /{bucket}/".encode() + b"k" * (2 * 1024 * 1024) + b" HTTP/1.1\r\n\r\n")
    assert b"<Code>RequestHeaderSectionTooLarge</Code>" in received
    # A URL just past 64 KiB in one piece: the URL parser refused it, and the answer said "not valid HTTP".
    received = _send_head(gateway, f"GET /{bucket}/k?".encode() + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                          chunk=1 << 20)
    assert b"<Code>RequestHeaderSectionTooLarge</Code>" in received, received[:400]
    many = b"".join(b"X-H%06d: vvvvvvvvvv\r\n" % i for i in range(100000))
    received = _send_head(gateway, f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\n".encode() + many + b"\r\n")
    assert b"<Code>RequestHeaderSectionTooLarge</Code>" in received
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"still here"


def test_large_but_reasonable_heads_are_served(gateway, s3, bucket):
    """The limit leaves room for what clients send: a 1024-byte key percent-encoded, long metadata,
    a presigned URL, a few KB of extra headers, sent in one piece or a byte at a time."""
    key = "\u00e9" * 512  # 1024 bytes of UTF-8, 3072 characters percent-encoded
    s3.put_object(Bucket=bucket, Key=key, Body=b"long key", Metadata={"m": "v" * 2000})
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    target = url[len(gateway.endpoint):]
    extra = "".join(f"X-Extra-{i}: {'p' * 100}\r\n" for i in range(100))  # ~12 KB more
    head = f"GET {target} HTTP/1.1\r\nHost: {gateway.host}\r\n{extra}Connection: close\r\n\r\n".encode()
    for chunk in (len(head), 1):
        received = _send_head(gateway, head, chunk=chunk)
        assert received.startswith(b"HTTP/1.1 200 OK"), received[:300]
        assert received.endswith(b"long key")
    target, headers = sign(gateway, "GET", f"/{bucket}/k", headers={"X-Amz-Meta-Note": "n" * 30000})
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() != "host")
    head = f"GET {target} HTTP/1.1\r\nHost: {gateway.host}:{gateway.port}\r\n{lines}Connection: close\r\n\r\n"
    received = _send_head(gateway, head.encode())
    assert b"<Code>NoSuchKey</Code>" in received, received[:300]  # read and answered, not refused
