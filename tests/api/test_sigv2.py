"""SigV2 (HMAC-SHA1): what boto3 presigns with by default for a custom endpoint."""

import http.client
import time
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from gateway import errors
from gateway.api.s3.sigv4 import Authenticator

ACCESS_KEY, SECRET_KEY = "AKIDV2TEST", "v2/secret+key="
CREDENTIALS = {ACCESS_KEY: SECRET_KEY}


def client():
    return boto3.client("s3", endpoint_url="http://gateway.test:9000", region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=Config(s3={"addressing_style": "path"}))


def presigned(operation="get_object", key="dir/face 1+ü.jpg", expires=600, **params):
    url = client().generate_presigned_url(operation, Params={"Bucket": "bucket", "Key": key, **params},
                                          ExpiresIn=expires)
    assert "AWSAccessKeyId=" in url  # still SigV2 by default: the reason this module exists
    return urlsplit(url)


def header_signed(method, url, headers=None, secret=SECRET_KEY):
    request = AWSRequest(method=method, url=url, headers=headers or {})
    botocore.auth.HmacV1Auth(Credentials(ACCESS_KEY, secret)).add_auth(request)
    parts = urlsplit(request.url)
    return parts.path, parts.query, {k.lower(): v for k, v in request.headers.items()}


@pytest.mark.parametrize("key", ["k", "dir/face 1+ü.jpg", "odd%key~=&?", "trailing/"])
def test_boto3_default_presigned_urls_verify(key):
    parts = presigned(key=key)
    result = Authenticator(CREDENTIALS).authenticate("GET", parts.path, parts.query, {"host": parts.netloc})
    assert result.access_key == ACCESS_KEY


def test_presigned_with_response_overrides_verifies():
    parts = presigned(ResponseContentType="text/plain", ResponseContentDisposition='inline; filename="a b"')
    assert Authenticator(CREDENTIALS).authenticate("GET", parts.path, parts.query, {})


def test_presigned_v2_expiry_and_tampering():
    parts = presigned(expires=60)
    later = Authenticator(CREDENTIALS, clock=lambda: time.time() + 120)
    with pytest.raises(errors.AccessDenied, match="expired"):
        later.authenticate("GET", parts.path, parts.query, {})
    with pytest.raises(errors.SignatureDoesNotMatch):
        Authenticator(CREDENTIALS).authenticate("GET", parts.path + "x", parts.query, {})
    with pytest.raises(errors.SignatureDoesNotMatch):
        Authenticator(CREDENTIALS).authenticate("PUT", parts.path, parts.query, {})
    with pytest.raises(errors.InvalidAccessKeyId):
        Authenticator({"other": "x"}).authenticate("GET", parts.path, parts.query, {})


@pytest.mark.parametrize("url,headers", [
    ("http://gateway.test/bucket/key", {}),
    ("http://gateway.test/bucket/a%20b/c?uploads", {"content-type": "image/jpeg", "x-amz-meta-camera": "7"}),
    ("http://gateway.test/bucket/k?partNumber=3&uploadId=abc", {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}),
    ("http://gateway.test/bucket?prefix=a&delimiter=/", {}),
])
def test_header_signed_v2_requests_verify(url, headers):
    path, query, signed = header_signed("PUT", url, headers)
    assert Authenticator(CREDENTIALS).authenticate("PUT", path, query, signed).access_key == ACCESS_KEY


def test_header_v2_wrong_secret_skew_and_malformed():
    path, query, signed = header_signed("GET", "http://gateway.test/bucket/key", secret="wrong")
    with pytest.raises(errors.SignatureDoesNotMatch):
        Authenticator(CREDENTIALS).authenticate("GET", path, query, signed)
    path, query, signed = header_signed("GET", "http://gateway.test/bucket/key")
    with pytest.raises(errors.RequestTimeTooSkewed):
        Authenticator(CREDENTIALS, clock=lambda: time.time() + 3600).authenticate("GET", path, query, signed)
    with pytest.raises(errors.AuthorizationHeaderMalformed):
        Authenticator(CREDENTIALS).authenticate("GET", path, query, dict(signed, authorization="AWS nocolon"))


def test_presigned_v2_url_works_against_a_real_gateway(gateway, s3, bucket):
    """The README promise: boto3's default presigned URL, fetched with plain HTTP."""
    import urllib.request

    s3.put_object(Bucket=bucket, Key="face.jpg", Body=b"jpeg bytes")
    plain = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                         aws_access_key_id=gateway.access_key, aws_secret_access_key=gateway.secret_key)
    url = plain.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "face.jpg"})
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"jpeg bytes"


def test_expired_and_skewed_v2_requests_say_the_server_time(gateway, s3, bucket):
    """As for SigV4 and on S3: a client refused for its clock is told the server's time (and the
    expiry, the request time and the allowed skew), not only that something is off."""
    import http.client
    import urllib.error
    import urllib.request
    import xml.etree.ElementTree as ET
    from unittest import mock

    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    plain = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                         aws_access_key_id=gateway.access_key, aws_secret_access_key=gateway.secret_key)
    url = plain.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=-60)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=10)
    error = ET.fromstring(caught.value.read())
    assert caught.value.code == 403 and error.findtext("Code") == "AccessDenied"
    assert error.findtext("Message") == "Request has expired"
    assert error.findtext("Expires") and error.findtext("ServerTime"), ET.tostring(error)

    request = AWSRequest(method="GET", url=f"{gateway.endpoint}/{bucket}/k")
    with mock.patch.object(botocore.auth.HmacV1Auth, "_get_date", return_value="Mon, 01 Jan 2024 00:00:00 GMT"):
        botocore.auth.HmacV1Auth(Credentials(gateway.access_key, gateway.secret_key)).add_auth(request)
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        conn.request("GET", f"/{bucket}/k", headers=dict(request.headers.items()))
        response = conn.getresponse()
        error = ET.fromstring(response.read())
    finally:
        conn.close()
    assert response.status == 403 and error.findtext("Code") == "RequestTimeTooSkewed"
    assert error.findtext("RequestTime") == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert error.findtext("ServerTime") and error.findtext("MaxAllowedSkewMilliseconds") == "900000"


def _send(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)  # http.client: urllib would add a Content-Type of its own
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, f"{parts.path}?{parts.query}", body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_bucket_level_calls_signed_with_sigv2_are_served(gateway, bucket):
    """botocore signs a request naming only a bucket as ``/bucket/`` and sends ``/bucket``: every
    bucket-level call of a SigV2 client was a 403 SignatureDoesNotMatch, object-level ones worked."""
    v2 = gateway.client(signature_version="s3")
    name = f"{bucket}-v2"
    v2.create_bucket(Bucket=name)
    v2.head_bucket(Bucket=name)
    v2.put_object(Bucket=name, Key="a/b.jpg", Body=b"jpeg")
    assert [o["Key"] for o in v2.list_objects(Bucket=name)["Contents"]] == ["a/b.jpg"]
    assert v2.list_objects_v2(Bucket=name, Prefix="a/")["KeyCount"] == 1
    assert v2.get_bucket_location(Bucket=name)["LocationConstraint"] in (None, "", "us-east-1")
    assert v2.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    deleted = v2.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "a/b.jpg"}]})
    assert [d["Key"] for d in deleted["Deleted"]] == ["a/b.jpg"]
    v2.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as info:
        v2.head_bucket(Bucket=name)
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchBucket")


def test_presigned_sigv2_bucket_urls_are_served_and_a_wrong_signature_is_not(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    v2 = gateway.client(signature_version="s3")
    url = v2.generate_presigned_url("list_objects_v2", Params={"Bucket": bucket})
    assert urlsplit(url).path == f"/{bucket}", url
    status, body = _send(url)
    assert status == 200 and b"<Key>k</Key>" in body, body
    status, _ = _send(v2.generate_presigned_url("head_bucket", Params={"Bucket": bucket}), "HEAD")
    assert status == 200
    other = v2.generate_presigned_url("list_objects_v2", Params={"Bucket": f"{bucket}x"})  # signed for another bucket
    status, body = _send(url.split("?")[0] + "?" + other.split("?")[1])
    assert status == 403 and b"SignatureDoesNotMatch" in body, body


@pytest.mark.parametrize("params", [
    {"Metadata": {"note": "line 1\nline 2"}},
    {"Metadata": {"note": "bell\x07"}},
    {"ContentType": "text/plain\x01"},
])
def test_a_presigned_put_signed_with_a_control_character_in_a_header_is_refused(gateway, s3, bucket, params):
    """A presigned SigV2 URL carries its signed headers in the query, where the HTTP parser's checks
    do not run: a newline in a metadata value was stored, and every GET and HEAD of the object was a 500."""
    v2 = gateway.client(signature_version="s3")
    url = v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "k", **params})
    status, body = _send(url, "PUT", b"payload")
    assert status == 400 and b"InvalidArgument" in body and b"control character" in body, (status, body)
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="k")  # nothing stored
    assert info.value.response["Error"]["Code"] == "404"
    s3.put_object(Bucket=bucket, Key="k", Body=b"fine")  # the server is still up
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"fine"


def test_a_parameter_spelt_percent_encoded_is_signed_as_the_one_it_acts_as(gateway, s3, bucket):
    """The signed resource took parameters by their names as sent, the request by their decoded names:
    `response-content-typ%65` added to a presigned GET was not signed and still served the object as
    text/html, and `upload%49d` added to a presigned DELETE aborted an upload nobody signed for."""
    s3.put_object(Bucket=bucket, Key="page", Body=b"<script>alert(1)</script>", ContentType="text/plain")
    v2 = gateway.client(signature_version="s3")
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "page"})
    for added in ("response-content-type=text/html", "response-content-typ%65=text/html",
                  "response-content-dispositio%6e=inline"):
        status, body = _send(f"{url}&{added}")
        assert status == 403 and b"SignatureDoesNotMatch" in body, (added, status, body)
    assert _send(url) == (200, b"<script>alert(1)</script>")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    url = v2.generate_presigned_url("delete_object", Params={"Bucket": bucket, "Key": "mp"})
    status, body = _send(f"{url}&upload%49d={upload}", "DELETE")
    assert status == 403 and b"SignatureDoesNotMatch" in body, (status, body)
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload]
    # Signed as the client spells them, overrides and sub-resources still verify.
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "page",
                                                          "ResponseContentType": "text/csv"})
    assert _send(url)[0] == 200


def test_header_signed_v2_parameters_are_signed_by_their_decoded_names(gateway, bucket, s3):
    s3.put_object(Bucket=bucket, Key="page", Body=b"x", ContentType="text/plain")
    request = AWSRequest(method="GET", url=f"{gateway.endpoint}/{bucket}/page")
    botocore.auth.HmacV1Auth(Credentials(gateway.access_key, gateway.secret_key)).add_auth(request)
    path, headers = urlsplit(request.url).path, dict(request.headers.items())
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        connection.request("GET", f"{path}?response-content-typ%65=text/html", headers=headers)
        response = connection.getresponse()
        assert response.status == 403 and b"SignatureDoesNotMatch" in response.read()
    finally:
        connection.close()


def test_a_plus_put_for_an_encoded_plus_in_a_signed_value_is_refused(gateway, s3, bucket):
    """The signature took a value's "+" as a plus, the request as a space: whoever held the URL could
    turn `application/xhtml%2Bxml` into `application/xhtml xml` and keep the signature."""
    s3.put_object(Bucket=bucket, Key="obj", Body=b"x")
    v2 = gateway.client(signature_version="s3")
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "obj",
                                                          "ResponseContentType": "application/xhtml+xml"})
    assert "%2B" in url
    assert _send(url)[0] == 200
    status, body = _send(url.replace("%2B", "+"))
    assert status == 403 and b"SignatureDoesNotMatch" in body, (status, body)
