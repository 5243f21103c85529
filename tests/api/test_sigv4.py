"""SigV4 verification: requests signed by botocore itself and the AWS documentation's examples
must verify; anything changed after signing must be refused with the error S3 gives."""

from __future__ import annotations

import calendar
import datetime
import time
from unittest import mock
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from gateway import errors
from gateway.api.s3.sigv4 import UNSIGNED_PAYLOAD, AuthResult, Authenticator

ACCESS_KEY = "AKIDGATEWAYTEST"
SECRET_KEY = "s3cr3t/with+odd=chars~"
CREDENTIALS = {ACCESS_KEY: SECRET_KEY}

# The example credentials and timestamp of the AWS S3 SigV4 documentation.
DOC_KEY = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

WHEN = datetime.datetime(2024, 3, 1, 12, 0, 0)  # what botocore's clock says while signing
WHEN_TS = calendar.timegm(WHEN.timetuple())

KEYS = [
    "plain.txt",
    "with space.txt",
    "ünïcødé/ファイル.bin",
    "a+b",
    "100%",
    "~tilde~",
    "x=y&z?w",
    "dir/",
    "dots/../and/./slashes//",
    "!$'()*,;:@[]",
    "tab\tand\nnewline",
]


class Captured(Exception):
    """Raised by the before-send hook: the request botocore would have put on the wire."""

    def __init__(self, request):
        super().__init__("captured")
        self.request = request


def wire(request) -> tuple[str, str, str, dict[str, str]]:
    """(method, raw_path, query_string, headers) as the ASGI server would hand them to us."""
    parts = urlsplit(request.url)
    headers = {name.lower(): (value.decode("latin-1") if isinstance(value, bytes) else value)
               for name, value in request.headers.items()}
    headers.setdefault("host", parts.netloc)
    return request.method, parts.path, parts.query, headers


def client(endpoint: str = "http://gateway.test:9000", **config):
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name=config.pop("region", "us-east-1"),
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}, **config),
    )

    def capture(request, **_):
        raise Captured(request)

    s3.meta.events.register("before-send.s3", capture)
    return s3


def captured(call, **params):
    with pytest.raises(Captured) as caught:
        call(**params)
    return caught.value.request


def sign_header(method, url, headers=None, body=b"", secret=SECRET_KEY, region="us-east-1"):
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN):
        S3SigV4Auth(Credentials(ACCESS_KEY, secret), "s3", region).add_auth(request)
    return wire(request)


def presign_query(method, url, expires=3600, headers=None):
    request = AWSRequest(method=method, url=url, headers=headers or {})
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN):
        S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "eu-west-3", expires=expires).add_auth(request)
    return wire(request)


def auth_at(now: float = WHEN_TS, **options) -> Authenticator:
    return Authenticator(CREDENTIALS, clock=lambda: now, **options)


# -- requests signed by the real client ---------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("endpoint", ["http://gateway.test:9000", "https://gateway.test"])
def test_boto3_object_requests_verify(key, endpoint):
    s3 = client(endpoint)
    authenticator = Authenticator(CREDENTIALS)
    requests = [
        captured(s3.put_object, Bucket="bucket", Key=key, Body=b"hello world", Metadata={"colour": "blue"}),
        captured(s3.get_object, Bucket="bucket", Key=key, Range="bytes=0-3"),
        captured(s3.head_object, Bucket="bucket", Key=key),
        captured(s3.delete_object, Bucket="bucket", Key=key),
        captured(s3.create_multipart_upload, Bucket="bucket", Key=key),
        captured(s3.upload_part, Bucket="bucket", Key=key, UploadId="up/load+id=", PartNumber=3, Body=b"x" * 100),
        captured(s3.copy_object, Bucket="bucket", Key=key, CopySource={"Bucket": "src", "Key": key}),
        captured(s3.get_object, Bucket="bucket", Key=key,
                 ResponseContentDisposition='attachment; filename="a b+c.txt"'),
    ]
    for request in requests:
        method, path, query, headers = wire(request)
        result = authenticator.authenticate(method, path, query, headers)
        assert result.access_key == ACCESS_KEY
        assert result.payload == headers["x-amz-content-sha256"]
        assert result.scope.endswith("/us-east-1/s3/aws4_request")


def test_boto3_bucket_requests_with_query_strings_verify():
    s3 = client()
    authenticator = Authenticator(CREDENTIALS)
    requests = [
        captured(s3.list_objects_v2, Bucket="bucket", Prefix="a/b", Delimiter="/"),
        captured(s3.list_objects_v2, Bucket="bucket", Prefix="sp ace+plus%/ü", StartAfter="~x", MaxKeys=7),
        captured(s3.list_objects, Bucket="bucket", Marker="=&?"),
        captured(s3.list_multipart_uploads, Bucket="bucket"),
        captured(s3.list_buckets),
        captured(s3.create_bucket, Bucket="new-bucket"),
        captured(s3.delete_objects, Bucket="bucket", Delete={"Objects": [{"Key": "a"}, {"Key": "b c"}]}),
    ]
    queries = set()
    for request in requests:
        method, path, query, headers = wire(request)
        queries.add(query)
        assert authenticator.authenticate(method, path, query, headers).access_key == ACCESS_KEY
    assert "uploads" in queries  # the empty-valued ?uploads made it through
    assert any("prefix=a%2Fb" in query for query in queries)


def test_boto3_other_region_verifies():
    s3 = client(region="ap-southeast-2")
    method, path, query, headers = wire(captured(s3.get_object, Bucket="bucket", Key="k"))
    result = Authenticator(CREDENTIALS).authenticate(method, path, query, headers)
    assert result.scope.split("/")[1:] == ["ap-southeast-2", "s3", "aws4_request"]


@pytest.mark.parametrize("key", KEYS)
def test_boto3_presigned_urls_verify(key):
    s3 = client("https://gateway.test", signature_version="s3v4")
    authenticator = Authenticator(CREDENTIALS)
    for operation in ("get_object", "put_object", "head_object"):
        url = s3.generate_presigned_url(operation, Params={"Bucket": "bucket", "Key": key}, ExpiresIn=600)
        parts = urlsplit(url)
        result = authenticator.authenticate(
            {"get_object": "GET", "put_object": "PUT", "head_object": "HEAD"}[operation],
            parts.path, parts.query, {"host": parts.netloc})
        assert result == AuthResult(ACCESS_KEY, UNSIGNED_PAYLOAD, result.signature, result.signing_key,
                                    result.amz_date, result.scope)
        assert len(result.signature) == 64


def test_presigned_url_with_response_overrides_and_empty_values():
    s3 = client(signature_version="s3v4")
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": "bucket", "Key": "dir/file name.txt", "VersionId": "",
        "ResponseContentDisposition": 'inline; filename="x y.txt"', "ResponseContentType": "text/plain; charset=utf-8",
    })
    parts = urlsplit(url)
    assert Authenticator(CREDENTIALS).authenticate("GET", parts.path, parts.query, {"host": parts.netloc})


# -- the AWS documentation's examples -------------------------------------------------------------


def doc_auth(signed: str, signature: str) -> str:
    return (f"AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/s3/aws4_request,"
            f"SignedHeaders={signed},Signature={signature}")


DOC_HEADERS = {"host": "examplebucket.s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
               "x-amz-content-sha256": EMPTY_SHA256}
DOC_EXAMPLES = [
    # GET Object with a Range header
    ("GET", "/test.txt", "", dict(DOC_HEADERS, range="bytes=0-9", authorization=doc_auth(
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"))),
    # PUT Object: the Date header is signed too, and '$' is signed as %24
    ("PUT", "/test%24file.text", "", dict(
        DOC_HEADERS, date="Fri, 24 May 2013 00:00:00 GMT", authorization=doc_auth(
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
        **{"x-amz-storage-class": "REDUCED_REDUNDANCY",
           "x-amz-content-sha256": "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"})),
    # GET Bucket lifecycle: a query parameter without a value
    ("GET", "/", "lifecycle", dict(DOC_HEADERS, authorization=doc_auth(
        "host;x-amz-content-sha256;x-amz-date", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"))),
    # List objects
    ("GET", "/", "max-keys=2&prefix=J", dict(DOC_HEADERS, authorization=doc_auth(
        "host;x-amz-content-sha256;x-amz-date", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"))),
    # Presigned GET (sigv4-query-string-auth)
    ("GET", "/test.txt", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
     "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
     "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
     {"host": "examplebucket.s3.amazonaws.com"}),
]


@pytest.mark.parametrize("example", DOC_EXAMPLES, ids=["range", "put-date", "lifecycle", "list", "presigned"])
def test_aws_documentation_examples_verify(example):
    authenticator = Authenticator({DOC_KEY: DOC_SECRET}, clock=lambda: DOC_NOW)
    assert authenticator.authenticate(*example).access_key == DOC_KEY


def test_aws_documentation_put_example_with_dollar_sent_raw():
    # The documentation writes the path as "/test$file.text" and signs "/test%24file.text": a client
    # that sends '$' raw but signs it encoded still verifies (the re-encoded path is tried second).
    method, _, query, headers = DOC_EXAMPLES[1]
    authenticator = Authenticator({DOC_KEY: DOC_SECRET}, clock=lambda: DOC_NOW)
    assert authenticator.authenticate(method, "/test$file.text", query, headers).access_key == DOC_KEY


def test_aws_documentation_streaming_seed_signature():
    headers = {
        "host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z", "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560", "content-length": "66824",
        "authorization": doc_auth("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                                  "x-amz-decoded-content-length;x-amz-storage-class",
                                  "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
    }
    authenticator = Authenticator({DOC_KEY: DOC_SECRET}, clock=lambda: DOC_NOW)
    result = authenticator.authenticate("PUT", "/examplebucket/chunkObject.txt", "", headers)
    assert result.payload == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert result.signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    assert result.amz_date == "20130524T000000Z"
    assert result.scope == "20130524/us-east-1/s3/aws4_request"


# -- tampering ----------------------------------------------------------------------------------


def signed_put():
    return sign_header("PUT", "http://gateway.test/bucket/some%20key.txt?partNumber=2&uploadId=abc",
                       headers={"Content-Type": "text/plain", "X-Amz-Meta-Colour": "blue"}, body=b"data")


def test_header_auth_verifies_and_reports_payload():
    method, path, query, headers = signed_put()
    result = auth_at().authenticate(method, path, query, headers)
    assert result.access_key == ACCESS_KEY
    assert result.payload == "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"  # sha256(b"data")
    assert result.amz_date == "20240301T120000Z"
    assert result.scope == "20240301/us-east-1/s3/aws4_request"
    assert result.signing_key and result.signature == headers["authorization"].rsplit("=", 1)[1]


@pytest.mark.parametrize("change", [
    lambda m, p, q, h: ("POST", p, q, h),
    lambda m, p, q, h: (m, p.replace("some", "same"), q, h),
    lambda m, p, q, h: (m, p + "/", q, h),
    lambda m, p, q, h: (m, p, q.replace("partNumber=2", "partNumber=3"), h),
    lambda m, p, q, h: (m, p, q + "&versionId=1", h),
    lambda m, p, q, h: (m, p, "", h),
    lambda m, p, q, h: (m, p, q, dict(h, **{"content-type": "text/html"})),
    lambda m, p, q, h: (m, p, q, dict(h, **{"x-amz-meta-colour": "red"})),
    lambda m, p, q, h: (m, p, q, dict(h, host="other.test")),
    lambda m, p, q, h: (m, p, q, dict(h, **{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})),
    lambda m, p, q, h: (m, p, q, dict(h, authorization=h["authorization"][:-1] + "0")),
    lambda m, p, q, h: (m, p, q, dict(h, authorization=h["authorization"][:-64] + "zz")),
], ids=["method", "path", "trailing-slash", "query-value", "query-added", "query-removed", "header",
        "amz-header", "host", "payload", "signature", "signature-garbage"])
def test_tampered_header_request_is_refused(change):
    method, path, query, headers = change(*signed_put())
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth_at().authenticate(method, path, query, headers)


def test_wrong_secret_and_unknown_key():
    method, path, query, headers = sign_header("GET", "http://gateway.test/b/k", secret="not the secret")
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth_at().authenticate(method, path, query, headers)
    with pytest.raises(errors.InvalidAccessKeyId) as caught:
        Authenticator({"SOMEONEELSE": SECRET_KEY}, clock=lambda: WHEN_TS).authenticate(method, path, query, headers)
    assert caught.value.fields["AWSAccessKeyId"] == ACCESS_KEY


def test_unsigned_amz_header_is_refused():
    method, path, query, headers = signed_put()
    with pytest.raises(errors.AccessDenied) as caught:
        auth_at().authenticate(method, path, query, dict(headers, **{"x-amz-acl": "public-read"}))
    assert caught.value.fields["HeadersNotSigned"] == "x-amz-acl"
    # Headers that are not x-amz-* may be added freely (proxies add some), as on S3.
    assert auth_at().authenticate(method, path, query, dict(headers, **{"x-forwarded-for": "1.2.3.4"}))


def test_missing_content_sha256_is_refused_when_there_is_a_body():
    method, path, query, headers = signed_put()
    del headers["x-amz-content-sha256"]
    headers["content-length"] = "4"
    with pytest.raises(errors.InvalidRequest, match="x-amz-content-sha256"):
        auth_at().authenticate(method, path, query, headers)


def test_bad_content_sha256_value_is_refused():
    method, path, query, headers = signed_put()
    for value in ("not-a-hash", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "ab" * 31 + "zz"):
        with pytest.raises(errors.InvalidArgument):
            auth_at().authenticate(method, path, query, dict(headers, **{"x-amz-content-sha256": value}))


@pytest.mark.parametrize("offset", [-901, 901, -86400])
def test_request_time_too_skewed(offset):
    method, path, query, headers = signed_put()
    with pytest.raises(errors.RequestTimeTooSkewed):
        auth_at(WHEN_TS + offset).authenticate(method, path, query, headers)


@pytest.mark.parametrize("offset", [-899, 0, 899])
def test_request_time_within_skew(offset):
    assert auth_at(WHEN_TS + offset).authenticate(*signed_put())


def test_skew_is_configurable():
    assert auth_at(WHEN_TS + 3000, max_skew_seconds=3600).authenticate(*signed_put())


def test_date_header_instead_of_x_amz_date():
    method, path, query, headers = sign_header("GET", "http://gateway.test/b/k", headers={"Date": "whatever"})
    assert "x-amz-date" not in headers and headers["date"].startswith("Fri, 01 Mar 2024 12:00:00")
    assert auth_at().authenticate(method, path, query, headers).amz_date == "20240301T120000Z"
    with pytest.raises(errors.RequestTimeTooSkewed):
        auth_at(WHEN_TS + 3600).authenticate(method, path, query, headers)


def test_missing_date_is_refused():
    method, path, query, headers = signed_put()
    del headers["x-amz-date"]
    with pytest.raises(errors.AccessDenied, match="Date"):
        auth_at().authenticate(method, path, query, headers)


@pytest.mark.parametrize("authorization", [
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/20240301/us-east-1/s3/aws4_request, SignedHeaders=host",
    "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc",
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/20240301/us-east-1/s3, SignedHeaders=host, Signature=abc",
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/2024031/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=a",
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/20240301/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=a",
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/20240301/us-east-1/s3/aws5_request, SignedHeaders=host, Signature=a",
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/20240302/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=a",
    "AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/20240301/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date, "
    "Signature=a",
    "AWS4-HMAC-SHA512 Credential=AKIDGATEWAYTEST/20240301/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=a",
    "AWS4-HMAC-SHA256",
], ids=["no-signature", "no-credential", "short-credential", "bad-date", "service", "terminal", "date-mismatch",
        "host-unsigned", "algorithm", "empty"])
def test_malformed_authorization_header(authorization):
    headers = {"host": "gateway.test", "x-amz-date": "20240301T120000Z", "x-amz-content-sha256": EMPTY_SHA256,
               "authorization": authorization}
    with pytest.raises(errors.AuthorizationHeaderMalformed):
        auth_at().authenticate("GET", "/b/k", "", headers)


def test_header_and_query_auth_together_are_refused():
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    _, _, _, signed_headers = signed_put()
    with pytest.raises(errors.InvalidArgument, match="Only one auth mechanism"):
        auth_at().authenticate(method, path, query, dict(headers, authorization=signed_headers["authorization"]))


def test_anonymous():
    with pytest.raises(errors.AccessDenied):
        auth_at().authenticate("GET", "/b/k", "", {"host": "gateway.test"})
    anonymous = auth_at(allow_anonymous=True)
    assert anonymous.authenticate("GET", "/b/k", "", {"host": "gateway.test"}) == AuthResult("", UNSIGNED_PAYLOAD)
    assert anonymous.authenticate("PUT", "/b/k", "", {"x-amz-content-sha256": EMPTY_SHA256}).payload == EMPTY_SHA256
    # Anonymous access does not excuse a bad signature.
    method, path, query, headers = signed_put()
    with pytest.raises(errors.SignatureDoesNotMatch):
        anonymous.authenticate("DELETE", path, query, headers)


# -- query strings: '+' and re-encoding ------------------------------------------------------------


def test_plus_in_query_means_space():
    # A client that signed "a b" as %20 but sent '+' (form encoding) verifies; the request parser
    # also reads '+' as a space, so what was authenticated is what runs.
    method, path, query, headers = sign_header("GET", "http://gateway.test/b?prefix=a%20b")
    assert query == "prefix=a%20b"
    assert auth_at().authenticate(method, path, "prefix=a+b", headers)
    # A literal plus must be sent as %2B, which is how botocore and the AWS rules send it.
    method, path, query, headers = sign_header("GET", "http://gateway.test/b?prefix=a%2Bb")
    assert auth_at().authenticate(method, path, query, headers)
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth_at().authenticate(method, path, "prefix=a+b", headers)


def test_query_encoding_is_canonicalized():
    # Lower-case escapes, an escaped unreserved character and raw reserved ones all canonicalize to
    # the AWS form (botocore signs the URL's query as it is, so it is given in canonical form here).
    method, path, _, headers = sign_header("GET", "http://gateway.test/b?prefix=a%2Fb~&marker=%C3%BC%3D")
    assert auth_at().authenticate(method, path, "marker=%c3%bc=&prefix=a/b%7E", headers)


def test_path_is_used_as_sent():
    # botocore signs the quoted path exactly; S3 does not normalize "." / ".." or "//".
    method, path, query, headers = sign_header("GET", "http://gateway.test/b/x/../y//z/./%2E%2E")
    assert path == "/b/x/../y//z/./%2E%2E"
    assert auth_at().authenticate(method, path, query, headers)
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth_at().authenticate(method, "/b/y//z/", query, headers)


def test_path_sent_raw_but_signed_encoded():
    method, path, query, headers = sign_header("GET", "http://gateway.test/b/a%21b%28c%29")
    assert auth_at().authenticate(method, "/b/a!b(c)", query, headers)


def test_utf8_header_values_sent_as_raw_bytes():
    # The server decodes header bytes as latin-1; a client that sent (and signed) raw UTF-8 must verify.
    method, path, query, headers = sign_header("PUT", "http://gateway.test/b/k",
                                               headers={"X-Amz-Meta-Name": "ünïcødé"})
    headers["x-amz-meta-name"] = "ünïcødé".encode().decode("latin-1")
    assert auth_at().authenticate(method, path, query, headers)


def test_header_whitespace_is_collapsed():
    method, path, query, headers = sign_header("GET", "http://gateway.test/b/k", headers={"X-Amz-Meta-A": "x  y"})
    assert auth_at().authenticate(method, path, query, dict(headers, **{"x-amz-meta-a": "  x \t y "}))


# -- presigned URLs -----------------------------------------------------------------------------


def test_presigned_verifies_within_its_lifetime():
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/a%20key?versionId=v1", expires=600)
    for now in (WHEN_TS - 899, WHEN_TS, WHEN_TS + 600):
        result = auth_at(now).authenticate(method, path, query, headers)
        assert result.payload == UNSIGNED_PAYLOAD
        assert result.scope == "20240301/eu-west-3/s3/aws4_request"


def test_presigned_expired():
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k", expires=600)
    with pytest.raises(errors.AccessDenied, match="Request has expired"):
        auth_at(WHEN_TS + 601).authenticate(method, path, query, headers)


def test_presigned_not_yet_valid():
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    with pytest.raises(errors.AccessDenied, match="not yet valid"):
        auth_at(WHEN_TS - 901).authenticate(method, path, query, headers)


@pytest.mark.parametrize("expires", [0, 604801])
def test_presigned_expires_out_of_range(expires):
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k", expires=expires)
    with pytest.raises(errors.AuthorizationQueryParametersError, match="X-Amz-Expires"):
        auth_at().authenticate(method, path, query, headers)


def test_presigned_one_week_is_allowed():
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k", expires=604800)
    assert auth_at(WHEN_TS + 604800).authenticate(method, path, query, headers)


@pytest.mark.parametrize("change", [
    lambda m, p, q, h: ("PUT", p, q, h),
    lambda m, p, q, h: (m, p + "x", q, h),
    lambda m, p, q, h: (m, p, q + "&response-content-type=text%2Fhtml", h),
    lambda m, p, q, h: (m, p, q.replace("X-Amz-Expires=3600", "X-Amz-Expires=3601"), h),
    lambda m, p, q, h: (m, p, q[:-1] + ("1" if q[-1] != "1" else "2"), h),
    lambda m, p, q, h: (m, p, q, dict(h, host="evil.test")),
], ids=["method", "path", "query-added", "expires", "signature", "host"])
def test_tampered_presigned_url_is_refused(change):
    method, path, query, headers = change(*presign_query("GET", "https://gateway.test/b/k"))
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth_at().authenticate(method, path, query, headers)


def test_presigned_with_signed_header():
    method, path, query, headers = presign_query("PUT", "https://gateway.test/b/k",
                                                 headers={"Content-Type": "image/png"})
    assert "content-type" in query.lower()
    assert auth_at().authenticate(method, path, query, headers)
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth_at().authenticate(method, path, query, dict(headers, **{"content-type": "text/html"}))


def test_presigned_refuses_unsigned_amz_headers():
    method, path, query, headers = presign_query("PUT", "https://gateway.test/b/k")
    with pytest.raises(errors.AccessDenied) as caught:
        auth_at().authenticate(method, path, query, dict(headers, **{"x-amz-tagging": "a=b"}))
    assert caught.value.fields["HeadersNotSigned"] == "x-amz-tagging"


@pytest.mark.parametrize("drop", ["X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                                  "X-Amz-Signature", "X-Amz-Credential"])
def test_presigned_missing_parameter(drop):
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    query = "&".join(part for part in query.split("&") if not part.startswith(drop + "="))
    with pytest.raises(errors.AuthorizationQueryParametersError):
        auth_at().authenticate(method, path, query, headers)


@pytest.mark.parametrize("old,new", [
    ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
    ("X-Amz-Date=20240301T120000Z", "X-Amz-Date=2024-03-01T12%3A00%3A00Z"),
    ("%2F20240301%2F", "%2F20240302%2F"),
    ("%2Fs3%2F", "%2Fsqs%2F"),
    ("X-Amz-Expires=3600", "X-Amz-Expires=soon"),
])
def test_presigned_malformed_parameter(old, new):
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    assert old in query
    with pytest.raises(errors.AuthorizationQueryParametersError):
        auth_at().authenticate(method, path, query.replace(old, new), headers)


def test_presigned_unknown_key():
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    with pytest.raises(errors.InvalidAccessKeyId):
        Authenticator({}, clock=lambda: WHEN_TS).authenticate(method, path, query, headers)


# -- one authenticator, many presigned URLs (the parsed X-Amz-* parameters are cached) ------------


def test_presigned_urls_of_one_second_share_the_parsed_parameters_and_each_is_verified():
    authenticator = auth_at()
    for key in ("a", "b", "a%20key"):
        assert authenticator.authenticate(*presign_query("GET", f"https://gateway.test/b/{key}"))
    assert len(authenticator._presigned) == 1  # the three URLs differ only in path and signature
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    tampered = [
        (method, path + "x", query, headers),
        (method, path, query + "&response-content-type=text%2Fhtml", headers),
        (method, path, query + "&X-Amz-Expires=3600", headers),  # a repeated parameter
        (method, path, "X-Amz-Expires=1&" + query, headers),  # the first value is the one that counts
        (method, path, query[:-1] + ("1" if query[-1] != "1" else "2"), headers),
    ]
    for request in tampered:
        with pytest.raises(errors.SignatureDoesNotMatch):
            authenticator.authenticate(*request)
    without_signature = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
    with pytest.raises(errors.AuthorizationQueryParametersError):
        authenticator.authenticate(method, path, without_signature, headers)
    assert authenticator.authenticate(method, path, query, headers)


def test_presigned_url_with_more_parameters_verifies_after_a_plain_one():
    authenticator = auth_at()
    assert authenticator.authenticate(*presign_query("GET", "https://gateway.test/b/k"))
    signed = presign_query("GET", "https://gateway.test/b/k?response-content-type=text%2Fplain&versionId=v1")
    assert authenticator.authenticate(*signed)


def test_cached_presigned_parameters_still_check_the_time_and_the_key():
    now = [WHEN_TS]
    credentials = dict(CREDENTIALS)
    authenticator = Authenticator(credentials, clock=lambda: now[0])
    request = presign_query("GET", "https://gateway.test/b/k", expires=600)
    assert authenticator.authenticate(*request)
    now[0] = WHEN_TS + 601
    with pytest.raises(errors.AccessDenied, match="Request has expired"):
        authenticator.authenticate(*request)
    now[0] = WHEN_TS - 901
    with pytest.raises(errors.AccessDenied, match="not yet valid"):
        authenticator.authenticate(*request)
    now[0] = WHEN_TS
    credentials.clear()  # the key was withdrawn: the cache must not remember it as valid
    with pytest.raises(errors.InvalidAccessKeyId):
        authenticator.authenticate(*request)


def test_malformed_presigned_parameters_are_refused_every_time_and_not_cached():
    authenticator = auth_at()
    method, path, query, headers = presign_query("GET", "https://gateway.test/b/k")
    bad = query.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1")
    for _ in range(2):
        with pytest.raises(errors.AuthorizationQueryParametersError):
            authenticator.authenticate(method, path, bad, headers)
    assert authenticator._presigned == {}


def test_presigned_parameter_cache_is_bounded():
    authenticator = auth_at(WHEN_TS + 550)  # URLs signed over 1,100 s: all within the allowed skew
    for seconds in range(1100):
        moment = WHEN + datetime.timedelta(seconds=seconds)
        request = AWSRequest(method="GET", url="https://gateway.test/b/k", headers={})
        with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
            S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "eu-west-3", expires=3600).add_auth(request)
        assert authenticator.authenticate(*wire(request))
    assert 0 < len(authenticator._presigned) <= 1024


# -- the signing key cache ----------------------------------------------------------------------


def test_signing_key_is_cached_and_bounded():
    authenticator = auth_at()
    first = authenticator.authenticate(*signed_put())
    second = authenticator.authenticate(*signed_put())
    assert first.signing_key is second.signing_key
    for number in range(300):
        method, path, query, headers = sign_header("GET", "http://gateway.test/b/k", region=f"region-{number}")
        assert authenticator.authenticate(method, path, query, headers)
    assert len(authenticator._keys) <= 256


def test_verification_is_fast_enough():
    # Hot path guard, not a benchmark: a cached-key verification is a handful of microseconds.
    authenticator = auth_at()
    request = signed_put()
    authenticator.authenticate(*request)
    start = time.perf_counter()
    for _ in range(2000):
        authenticator.authenticate(*request)
    assert (time.perf_counter() - start) / 2000 < 0.001


def test_access_log_does_not_hold_presigned_signatures(tmp_path):
    """A presigned URL in the access log opened the object to whoever reads the log, for as long as
    the URL lives (up to a week): the signature is logged as REDACTED, the rest of the line stays."""
    import urllib.error
    import urllib.request

    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage", args=["--access-log"]) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="logged")
        s3.put_object(Bucket="logged", Key="face.jpg", Body=b"jpeg")
        v4 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1", aws_access_key_id=gw.access_key,
                          aws_secret_access_key=gw.secret_key,
                          config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
        v2 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1", aws_access_key_id=gw.access_key,
                          aws_secret_access_key=gw.secret_key, config=Config(s3={"addressing_style": "path"}))
        urls = [v4.generate_presigned_url("get_object", Params={"Bucket": "logged", "Key": "face.jpg"}),
                v2.generate_presigned_url("get_object", Params={"Bucket": "logged", "Key": "face.jpg"}),
                v4.generate_presigned_url("list_objects_v2", Params={"Bucket": "logged"})]
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as response:  # plain reads and the ASGI path
                assert response.status == 200
        with pytest.raises(urllib.error.HTTPError):  # a refused one is logged too
            urllib.request.urlopen(urls[0].replace("face.jpg", "other.jpg"), timeout=10)
        log = gw.log()
    signatures = [value for url in urls for name, _, value in
                  (part.partition("=") for part in urlsplit(url).query.split("&")) if name.endswith("Signature")]
    assert len(signatures) == 3
    for signature in signatures:
        assert signature not in log
    assert log.count("X-Amz-Signature=REDACTED") == 3 and log.count("&Signature=REDACTED") == 1, log
    assert "X-Amz-Credential=" in log and "list-type=2" in log


def test_a_signature_mismatch_says_what_the_gateway_signed(gateway):
    """As S3 does: the canonical request and the string to sign, next to a client's debug output
    (`aws --debug`, botocore's logger), show what differs; neither holds the secret."""
    wrong = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                         aws_access_key_id=gateway.access_key, aws_secret_access_key="not the secret",
                         config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
    with pytest.raises(ClientError) as caught:
        wrong.get_object(Bucket="signed-bucket", Key="a key/ü.jpg")
    error = caught.value.response["Error"]
    assert error["Code"] == "SignatureDoesNotMatch"
    assert error["AWSAccessKeyId"] == gateway.access_key
    assert error["CanonicalRequest"].startswith("GET\n/signed-bucket/a%20key/%C3%BC.jpg\n")
    assert error["StringToSign"].startswith("AWS4-HMAC-SHA256\n") and error["StringToSign"].count("\n") == 3
    assert len(error["SignatureProvided"]) == 64
    assert gateway.secret_key not in str(caught.value.response)


def test_access_log_logs_at_every_log_level(tmp_path):
    """--access-log with --log-level warning logged nothing, without a word."""
    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage", args=["--access-log", "--log-level", "warning"]) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="quiet-logs")
        s3.put_object(Bucket="quiet-logs", Key="face.jpg", Body=b"jpeg")
        assert s3.get_object(Bucket="quiet-logs", Key="face.jpg")["Body"].read() == b"jpeg"
        log = gw.log()
    assert '"PUT /quiet-logs/face.jpg HTTP/1.1" 200' in log, log[-2000:]
    assert '"GET /quiet-logs/face.jpg HTTP/1.1" 200' in log, log[-2000:]


def test_access_lines_end_with_the_request_id_the_client_saw(tmp_path):
    """An operator given a client's error (its RequestId) finds the request's access line by it, for
    requests answered below ASGI (plain reads) and through it (writes, listings, errors)."""
    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage", args=["--access-log"]) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="ids")
        put = s3.put_object(Bucket="ids", Key="face.jpg", Body=b"jpeg")
        got = s3.get_object(Bucket="ids", Key="face.jpg")
        with pytest.raises(ClientError) as missing:
            s3.get_object(Bucket="ids", Key="missing.jpg")
        listed = s3.list_objects_v2(Bucket="ids")
        log = gw.log()
    for line, answer in (('"PUT /ids/face.jpg HTTP/1.1" 200', put), ('"GET /ids/face.jpg HTTP/1.1" 200', got),
                         ('"GET /ids/missing.jpg HTTP/1.1" 404', missing.value.response),
                         ('"GET /ids?list-type=2', listed)):
        request_id = answer["ResponseMetadata"]["RequestId"]
        assert any(line in entry and entry.endswith(f" {request_id}") for entry in log.splitlines()), (line, log[-3000:])
