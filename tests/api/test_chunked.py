"""aws-chunked bodies: the AWS documentation's signed examples, bodies signed by an independent
helper below, and botocore's own unsigned-trailer encoder, fed in arbitrary splits."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import io
import os
from urllib.parse import urlsplit

import boto3
import pytest
from botocore import httpchecksum
from botocore.config import Config

from gateway import errors
from gateway.api.s3.chunked import decode_aws_chunked
from gateway.api.s3.sigv4 import AuthResult, Authenticator
from gateway.checksums import checksum_b64

DOC_KEY = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))
DOC_DATA = b"a" * 66560
DOC_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
DOC_TRAILER_SIGNATURES = [
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
]
DOC_TRAILER = (b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
               b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n")


# -- helpers ------------------------------------------------------------------------------------


def pieces(body: bytes, size: int):
    async def generate():
        for start in range(0, len(body), size):
            yield body[start:start + size]
    return generate()


def decode(body: bytes, auth: AuthResult, split: int = 1000) -> tuple[bytes, dict[str, str]]:
    trailers: dict[str, str] = {}

    async def run():
        return b"".join([piece async for piece in decode_aws_chunked(pieces(body, split), auth, trailers)])

    return asyncio.run(run()), trailers


def doc_seed(payload: str, signed: str, signature: str, extra: dict[str, str]) -> AuthResult:
    headers = {
        "host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z", "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": payload, "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "66560",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/s3/aws4_request,"
                         f"SignedHeaders={signed},Signature={signature}",
        **extra,
    }
    authenticator = Authenticator({DOC_KEY: DOC_SECRET}, clock=lambda: DOC_NOW)
    return authenticator.authenticate("PUT", "/examplebucket/chunkObject.txt", "", headers)


def doc_auth() -> AuthResult:
    """The seed request of the documentation's chunk-signed example (sigv4-streaming)."""
    return doc_seed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                    "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                    "x-amz-decoded-content-length;x-amz-storage-class",
                    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
                    {"content-length": "66824"})


def doc_trailer_auth() -> AuthResult:
    """The seed request of the documentation's example with a signed trailer (sigv4-streaming-trailers)."""
    return doc_seed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                    "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
                    "x-amz-storage-class;x-amz-trailer",
                    "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
                    {"x-amz-trailer": "x-amz-checksum-crc32c"})


def doc_body(signatures, trailer: bytes = b"") -> bytes:
    return (f"10000;chunk-signature={signatures[0]}\r\n".encode() + DOC_DATA[:65536]
            + f"\r\n400;chunk-signature={signatures[1]}\r\n".encode() + DOC_DATA[65536:]
            + f"\r\n0;chunk-signature={signatures[2]}\r\n".encode() + trailer + b"\r\n")


# An independent signer: the chunk and trailer string-to-sign written out from the AWS docs.
SECRET = "test/secret+key"
AMZ_DATE = "20240301T120000Z"
SCOPE = "20240301/eu-central-1/s3/aws4_request"
SEED = "1" * 64


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


SIGNING_KEY = _hmac(_hmac(_hmac(_hmac(b"AWS4" + SECRET.encode(), "20240301"), "eu-central-1"), "s3"), "aws4_request")


def signed_auth(trailer: bool = False) -> AuthResult:
    payload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    return AuthResult("AK", payload, SEED, SIGNING_KEY, AMZ_DATE, SCOPE)


def sign_chunks(data: bytes, chunk_size: int, trailers: dict[str, str] | None = None) -> bytes:
    parts, previous = [], SEED
    sizes = [chunk_size] * (len(data) // chunk_size) + ([len(data) % chunk_size] if len(data) % chunk_size else [])
    offset = 0
    for size in sizes + [0]:
        chunk = data[offset:offset + size]
        offset += size
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", AMZ_DATE, SCOPE, previous,
                             hashlib.sha256(b"").hexdigest(), hashlib.sha256(chunk).hexdigest()])
        previous = hmac.new(SIGNING_KEY, to_sign.encode(), hashlib.sha256).hexdigest()
        parts.append(f"{size:x};chunk-signature={previous}\r\n".encode() + chunk + (b"\r\n" if size else b""))
    if trailers is not None:
        canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailers.items()))
        to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", AMZ_DATE, SCOPE, previous,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(SIGNING_KEY, to_sign.encode(), hashlib.sha256).hexdigest()
        parts.append("".join(f"{name}:{value}\r\n" for name, value in trailers.items()).encode())
        parts.append(f"x-amz-trailer-signature:{signature}\r\n".encode())
    parts.append(b"\r\n")
    return b"".join(parts)


UNSIGNED = AuthResult("AK", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
DATA = os.urandom(50_000)


# -- the AWS documentation's examples ---------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 7, 8192, 65536 + 90, 1 << 20])
def test_aws_documentation_signed_chunks(split):
    body = doc_body(DOC_SIGNATURES)
    assert len(body) == 66824  # the documented Content-Length
    data, trailers = decode(body, doc_auth(), split)
    assert data == DOC_DATA and trailers == {}


@pytest.mark.parametrize("index", [0, 1, 2])
def test_aws_documentation_any_changed_chunk_signature_is_refused(index):
    signatures = list(DOC_SIGNATURES)
    signatures[index] = signatures[index][:-1] + ("0" if signatures[index][-1] != "0" else "1")
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(doc_body(signatures), doc_auth())


def test_aws_documentation_changed_data_is_refused():
    body = bytearray(doc_body(DOC_SIGNATURES))
    body[66000] = ord("b")
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(bytes(body), doc_auth())


@pytest.mark.parametrize("split", [1, 777, 1 << 20])
def test_aws_documentation_signed_trailer(split):
    data, trailers = decode(doc_body(DOC_TRAILER_SIGNATURES, DOC_TRAILER), doc_trailer_auth(), split)
    assert data == DOC_DATA
    assert trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert checksum_b64("CRC32C", data) == "sOO8/Q=="


def test_aws_documentation_changed_trailer_is_refused():
    for trailer in (DOC_TRAILER.replace(b"sOO8/Q==", b"sOO8/A=="),
                    DOC_TRAILER.replace(b"d81f82fc", b"d81f82fd"),
                    DOC_TRAILER.split(b"x-amz-trailer-signature")[0]):
        with pytest.raises(errors.SignatureDoesNotMatch):
            decode(doc_body(DOC_TRAILER_SIGNATURES, trailer), doc_trailer_auth())


def test_aws_documentation_trailer_tolerated_variants():
    # No final CRLF (the .NET SDK), and a blank line between the checksum and its signature.
    body = doc_body(DOC_TRAILER_SIGNATURES, DOC_TRAILER)[:-2]
    assert decode(body, doc_trailer_auth())[1] == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    body = doc_body(DOC_TRAILER_SIGNATURES, DOC_TRAILER.replace(b"==\r\n", b"==\n\r\n"))
    assert decode(body, doc_trailer_auth(), 1)[1] == {"x-amz-checksum-crc32c": "sOO8/Q=="}


# -- bodies signed by the helper above ----------------------------------------------------------------


@pytest.mark.parametrize("chunk_size,split", [(8192, 1), (8192, 100), (10_000, 65536), (50_000, 3), (49_999, 8192)])
def test_signed_chunks_any_split(chunk_size, split):
    data, trailers = decode(sign_chunks(DATA, chunk_size), signed_auth(), split)
    assert data == DATA and trailers == {}


def test_signed_empty_body():
    assert decode(sign_chunks(b"", 8192), signed_auth(), 1) == (b"", {})


def test_signed_trailer_with_several_trailers():
    trailers = {"x-amz-checksum-sha256": checksum_b64("SHA256", DATA),
                "x-amz-checksum-crc32": checksum_b64("CRC32", DATA)}
    data, found = decode(sign_chunks(DATA, 16384, trailers), signed_auth(trailer=True), 5)
    assert data == DATA and found == trailers


def test_signed_chunks_swapped_or_dropped_are_refused():
    body = sign_chunks(DATA[:30000], 10000)
    frames = body.split(b"\r\n2710;")  # 0x2710 = 10000
    assert len(frames) == 3
    swapped = frames[0] + b"\r\n2710;" + frames[2].split(b"\r\n0;")[0] + b"\r\n2710;" + frames[1] + b"\r\n0;" + \
        frames[2].split(b"\r\n0;")[1]
    dropped = frames[0] + b"\r\n2710;" + frames[2]
    for bad in (swapped, dropped):
        with pytest.raises(errors.SignatureDoesNotMatch):
            decode(bad, signed_auth())


def test_signed_chunk_without_signature_is_refused():
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(b"5\r\nhello\r\n0\r\n\r\n", signed_auth())


def test_wrong_seed_is_refused():
    auth = AuthResult("AK", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "2" * 64, SIGNING_KEY, AMZ_DATE, SCOPE)
    with pytest.raises(errors.SignatureDoesNotMatch):
        decode(sign_chunks(DATA, 8192), auth)


def test_trailers_after_signed_body_without_trailer_are_refused():
    body = sign_chunks(DATA, 8192)[:-2] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    with pytest.raises(errors.InvalidRequest):
        decode(body, signed_auth())


def test_data_is_yielded_progressively():
    body = sign_chunks(DATA, 8192)
    consumed = []

    async def source():
        for start in range(0, len(body), 1000):
            consumed.append(start)
            yield body[start:start + 1000]

    async def first_piece():
        async for piece in decode_aws_chunked(source(), signed_auth(), {}):
            return piece

    piece = asyncio.run(first_piece())
    assert piece == DATA[:1000 - len(b"2000;chunk-signature=") - 64 - 2]
    assert len(consumed) == 1


def test_trailers_are_stored_before_the_iterator_ends():
    trailers = {"x-amz-checksum-crc32": checksum_b64("CRC32", DATA)}
    found: dict[str, str] = {}

    async def run():
        iterator = decode_aws_chunked(pieces(sign_chunks(DATA, 8192, trailers), 4096), signed_auth(True), found)
        async for _ in iterator:
            pass
        return found

    assert asyncio.run(run()) == trailers


# -- framing errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 10, 100, 8200, -60, -3, -2, -1])
def test_truncated_bodies(cut):
    body = sign_chunks(DATA[:20000], 8192)
    truncated = body[:cut] if cut >= 0 else body[:len(body) + cut]
    if cut == -2:  # only the final CRLF is missing: accepted, some SDKs end there
        assert decode(truncated, signed_auth())[0] == DATA[:20000]
        return
    with pytest.raises((errors.IncompleteBody, errors.InvalidRequest)):
        decode(truncated, signed_auth())


def test_truncated_in_the_middle_of_data_is_incomplete():
    body = sign_chunks(DATA, 8192)
    with pytest.raises(errors.IncompleteBody):
        decode(body[:30000], signed_auth(), 1)


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\nextra",
    b"5\r\nhello\r\n0\r\nno-colon-here\r\n\r\n",
    b"11111111111111111\r\n",
], ids=["hex", "empty-size", "negative", "space", "bare-lf", "no-crlf-after-data", "extra-bytes", "bad-trailer",
        "size-too-long"])
def test_malformed_framing(body):
    with pytest.raises(errors.InvalidRequest):
        decode(body, UNSIGNED, 1)


def test_huge_size_line_is_refused_without_reading_everything():
    fed = []

    async def endless():
        while True:
            fed.append(1)
            yield b"0" * 1024

    async def run():
        async for _ in decode_aws_chunked(endless(), UNSIGNED, {}):
            pass

    with pytest.raises(errors.InvalidRequest, match="longer than"):
        asyncio.run(run())
    assert len(fed) <= 6


def test_too_many_trailers_are_refused():
    body = b"0\r\n" + b"".join(b"x-amz-t%d:v\r\n" % number for number in range(100)) + b"\r\n"
    with pytest.raises(errors.InvalidRequest):
        decode(body, UNSIGNED)


# -- botocore's unsigned trailer encoding -------------------------------------------------------------


BOTOCORE_CHECKSUMS = {
    "CRC32": httpchecksum.Crc32Checksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
    "CRC32C": httpchecksum.CrtCrc32cChecksum,
    "CRC64NVME": httpchecksum.CrtCrc64NvmeChecksum,
}


@pytest.mark.parametrize("algorithm", sorted(BOTOCORE_CHECKSUMS))
@pytest.mark.parametrize("split", [1, 1000, 1 << 20])
def test_botocore_aws_chunked_wrapper(algorithm, split):
    data = DATA[: 5000 if split == 1 else None]
    name = f"x-amz-checksum-{algorithm.lower()}"
    wrapper = httpchecksum.AwsChunkedWrapper(io.BytesIO(data), checksum_cls=BOTOCORE_CHECKSUMS[algorithm],
                                             checksum_name=name, chunk_size=4096)
    decoded, trailers = decode(wrapper.read(), UNSIGNED, split)
    assert decoded == data
    assert trailers == {name: checksum_b64(algorithm, data)}


def test_botocore_aws_chunked_wrapper_without_checksum():
    body = httpchecksum.AwsChunkedWrapper(io.BytesIO(DATA), chunk_size=10_000).read()
    assert body.endswith(b"\r\n0\r\n\r\n")
    assert decode(body, UNSIGNED) == (DATA, {})
    # The AWS SDK for JavaScript may stop right after "0\r\n".
    assert decode(body[:-2], UNSIGNED) == (DATA, {})


def test_botocore_empty_body_with_checksum():
    wrapper = httpchecksum.AwsChunkedWrapper(io.BytesIO(b""), checksum_cls=httpchecksum.Crc32Checksum,
                                             checksum_name="x-amz-checksum-crc32")
    assert decode(wrapper.read(), UNSIGNED) == (b"", {"x-amz-checksum-crc32": checksum_b64("CRC32", b"")})


def test_boto3_put_object_end_to_end():
    # What boto3 really sends over https: an aws-chunked body with a trailing checksum, under a
    # header signature; authenticate it, then decode the captured body.
    s3 = boto3.client("s3", endpoint_url="https://gateway.test", region_name="us-east-1",
                      aws_access_key_id="AK", aws_secret_access_key=SECRET,
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0},
                                    request_checksum_calculation="when_supported"))
    seen = []

    def capture(request, **_):
        seen.append(request)
        raise RuntimeError("captured")

    s3.meta.events.register("before-send.s3", capture)
    with pytest.raises(RuntimeError, match="captured"):
        s3.put_object(Bucket="bucket", Key="video/clip 1.mp4", Body=io.BytesIO(DATA), ChecksumAlgorithm="CRC32C")
    request = seen[0]
    parts = urlsplit(request.url)
    headers = {name.lower(): value.decode("latin-1") if isinstance(value, bytes) else value
               for name, value in request.headers.items()}
    headers.setdefault("host", parts.netloc)
    assert headers["content-encoding"] == "aws-chunked"
    auth = Authenticator({"AK": SECRET}).authenticate(request.method, parts.path, parts.query, headers)
    assert auth.payload == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    body = request.body.read() if hasattr(request.body, "read") else request.body
    data, trailers = decode(body, auth, 1500)
    assert data == DATA
    assert trailers == {"x-amz-checksum-crc32c": checksum_b64("CRC32C", DATA)}
    assert headers["x-amz-decoded-content-length"] == str(len(DATA))
