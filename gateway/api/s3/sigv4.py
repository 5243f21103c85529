"""AWS Signature Version 4 verification for incoming S3 requests.

Two ways to sign, one canonical request:

* header auth: ``Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``
  with the payload hash in ``x-amz-content-sha256``;
* presigned URLs: the same fields as ``X-Amz-*`` query parameters, payload ``UNSIGNED-PAYLOAD``.

The canonical request is built the way S3 builds it, which differs from the
generic SigV4 rules: the path is taken exactly as it was sent (S3 neither
normalizes ``.``/``..`` nor double-encodes; botocore signs the already-quoted
path), and only the query string is decoded and re-encoded.

Every request passes through here, so the common path does no regex work and
caches the derived signing key (four HMACs) per secret and credential scope. The pure functions
of small strings that repeat from request to request (the credential, the date, the encoded
form of a query value) are memoized, bounded; the verification itself (the canonical request's
SHA-256 and the HMAC) runs on every request. docs/performance.md has the costs.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

from ... import errors
from . import sigv2
from .request import parse_decimal

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
_NAMED_PAYLOADS = frozenset({UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_EXPIRES = 7 * 24 * 3600  # S3's limit for presigned URLs: one week
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_KEY_CACHE_LIMIT = 256
# Memoized helpers remember strings up to this long only: longer ones are rare (user data in a
# query value) and would make the bounded caches large in bytes.
_MEMO_MAX_LEN = 256
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: XOR every byte with HMAC's pads
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _v2_payload(headers: Mapping[str, str]) -> str:
    """SigV2 does not sign the body; a declared SHA-256 is still checked by the body reader."""
    return headers.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD


class AuthResult(NamedTuple):
    """Who signed a request and what the signature covers. A NamedTuple: made once per request,
    where a frozen dataclass costs three times as much to build."""

    access_key: str  # "" when anonymous
    # The x-amz-content-sha256 value the signature covers: a hex sha256, UNSIGNED-PAYLOAD or
    # one of the STREAMING-* values (the body is then aws-chunked; see chunked.py).
    payload: str
    signature: str = ""  # seed signature: the first chunk signature chains from it
    signing_key: bytes = b""
    amz_date: str = ""  # YYYYMMDDTHHMMSSZ as it appeared in the string to sign
    scope: str = ""  # date/region/service/aws4_request


def hmac_sha256(key: bytes, message: str | bytes) -> bytes:
    if isinstance(message, str):
        message = message.encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac_sha256(("AWS4" + secret).encode(), date)
    key = hmac_sha256(key, region)
    key = hmac_sha256(key, service)
    return hmac_sha256(key, "aws4_request")


def parse_amz_date(value: str) -> float | None:
    """Seconds since the epoch for ``YYYYMMDDTHHMMSSZ``, or None if it is not that."""
    if len(value) != 16:
        return None
    return _parse_amz_date16(value)


@lru_cache(maxsize=1024)
def _parse_amz_date16(value: str) -> float | None:
    # Memoized: the same second's date string arrives many times (a datetime costs ~3 µs).
    if value[8] != "T" or value[15] != "Z" or not (value[:8] + value[9:15]).isdigit():
        return None
    try:
        moment = datetime.datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
                                   int(value[11:13]), int(value[13:15]), tzinfo=datetime.timezone.utc)
    except ValueError:  # month 13, hour 25, ...
        return None
    return moment.timestamp()


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_query(query_string: str) -> list[tuple[str, str]]:
    """Raw (still percent-encoded) name/value pairs; ``?uploads`` is ("uploads", "")."""
    pairs = []
    for part in query_string.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


def _decode(raw: str) -> str:
    if "%" not in raw and "+" not in raw and raw.isascii():
        return raw  # nothing to decode (X-Amz-Date, -Expires, -Signature, ...)
    return _decode_memo(raw) if len(raw) <= _MEMO_MAX_LEN else _decode_escaped(raw)


def _decode_escaped(raw: str) -> str:
    # Like the request parser (parse_qsl), '+' in a query means a space.
    return unquote_to_bytes(raw.replace("+", " ")).decode("latin-1")


_decode_memo = lru_cache(maxsize=1024)(_decode_escaped)  # X-Amz-Credential repeats all day


def _aws_encode(raw: str) -> str:
    """AWS URI-encoding of a raw query name or value: only A-Z a-z 0-9 - _ . ~ stay as they are."""
    if _UNRESERVED.issuperset(raw):
        return raw  # fast path: most names and many values need no work
    return _aws_reencode_memo(raw) if len(raw) <= _MEMO_MAX_LEN else _aws_reencode(raw)


def _aws_reencode(raw: str) -> str:
    # '+' is a space, as for the request parser (parse_qsl), so what is verified is what runs.
    # Working on bytes keeps invalid UTF-8 intact: re-encoding gives back what the client signed.
    return quote(unquote_to_bytes(raw.replace("+", " ")), safe="")


_aws_reencode_memo = lru_cache(maxsize=1024)(_aws_reencode)  # a pure function of a repeating string


def canonical_query(pairs: list[tuple[str, str]], skip: str = "") -> str:
    memo = _ENCODED_PAIRS
    encoded = []
    for pair in pairs:
        if pair[0] == skip:
            continue
        item = memo.get(pair)
        if item is None:
            item = _encode_pair(pair)
            if len(pair[0]) + len(pair[1]) <= _MEMO_MAX_LEN:
                if len(memo) >= _ENCODED_PAIRS_LIMIT:
                    memo.clear()  # refilled from the next requests' few repeating pairs
                memo[pair] = item
        encoded.append(item)
    encoded.sort()  # by encoded name, then value: what SigV4 sorts by
    return "&".join([item[2] for item in encoded])


def _encode_pair(pair: tuple[str, str]) -> tuple[str, str, str]:
    """(encoded name, encoded value, "name=value")."""
    name, value = _aws_encode(pair[0]), _aws_encode(pair[1])
    return name, value, f"{name}={value}"


# The same (name, value) pairs come back on request after request (algorithm, credential, expiry,
# signed headers; the date for a second): one dict lookup instead of two encodings and a format.
# A plain dict: functools.lru_cache would build a key object around the tuple on every call.
_ENCODED_PAIRS: dict[tuple[str, str], tuple[str, str, str]] = {}
_ENCODED_PAIRS_LIMIT = 1024


def _reencoded_path(raw_path: str) -> str:
    # Decode then encode every byte but the unreserved ones and '/': what a client that sends
    # some characters raw (e.g. '!' or '$') but signs them encoded would have signed.
    return quote(unquote_to_bytes(raw_path.encode("latin-1")), safe="/")


# The presigned-URL parameters that stay the same across the URLs signed in one second (all but
# X-Amz-Signature), in the order _parse_presigned reads them.
_PRESIGNED_STATIC = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                     "X-Amz-Content-Sha256", "X-Amz-Content-SHA256")
_PRESIGNED_CACHE_LIMIT = 1024


class _Presigned(NamedTuple):
    """What a presigned URL's parameters other than the signature say, checked."""

    access_key: str
    scope: str
    amz_date: str
    timestamp: float
    expires: int
    signed: str  # X-Amz-SignedHeaders, decoded
    payload: str  # the X-Amz-Content-Sha256 parameter, decoded; "" when absent
    canonical: str  # the canonical query of these parameters alone
    count: int  # how many query parameters that is, X-Amz-Signature included


def _missing_query_auth() -> errors.GatewayError:
    return errors.AuthorizationQueryParametersError(
        "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
        "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")


def _parse_presigned(raw: tuple) -> _Presigned:
    """raw: the first raw value of each of _PRESIGNED_STATIC (None when absent). Raises the error S3
    gives for the first thing wrong. A pure function of ``raw``: what it returns can be cached."""
    bad = errors.AuthorizationQueryParametersError
    # Decoding never empties a value, so "missing or empty" can be checked on the decoded ones.
    algorithm, credential, amz_date, expires_text, signed = [_decode(value or "") for value in raw[:5]]
    if not (algorithm and credential and amz_date and expires_text and signed):
        raise _missing_query_auth()
    if algorithm != ALGORITHM:
        raise bad(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    access_key, scope = _parse_credential(credential, bad)
    timestamp = parse_amz_date(amz_date)
    if timestamp is None:
        raise bad("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    expires = parse_decimal(expires_text)
    if expires is None or not 1 <= expires <= MAX_EXPIRES:
        raise bad(f"X-Amz-Expires must be between 1 and {MAX_EXPIRES} seconds (one week).")
    if scope[:8] != amz_date[:8]:
        raise bad("Invalid credential date. Date is not the same as X-Amz-Date.")
    present = [(name, value) for name, value in zip(_PRESIGNED_STATIC, raw) if value is not None]
    return _Presigned(access_key, scope, amz_date, timestamp, expires, signed, _decode(raw[5] or raw[6] or ""),
                      canonical_query(present), len(present) + 1)


class Authenticator:
    """Checks SigV4 signatures against a fixed table of access key -> secret key."""

    def __init__(self, credentials: Mapping[str, str], *, allow_anonymous: bool = False,
                 max_skew_seconds: int = 900, clock: Callable[[], float] = time.time):
        self._credentials = credentials
        self._allow_anonymous = allow_anonymous
        self._max_skew = max_skew_seconds
        self._clock = clock
        self._keys: dict[tuple[str, str], bytes] = {}
        self._pads: dict[bytes, tuple] = {}  # signing key -> primed SHA-256 states (see _hmac_hex)
        self._presigned: dict[tuple, _Presigned] = {}  # raw X-Amz-* values -> _parse_presigned's result

    def authenticate(self, method: str, raw_path: str, query_string: str, headers: Mapping[str, str],
                     pairs: list[tuple[str, str]] | None = None) -> AuthResult:
        """raw_path is the path exactly as sent on the wire (percent-encoded, ASGI scope['raw_path']
        decoded as latin-1); query_string is the raw query string; headers are lower-case
        name -> value (multiple values joined with ','). pairs, when the caller has them already
        (S3Request.query_pairs), are the query string's raw (name, value) pairs, saving a split."""
        if pairs is None:
            pairs = _split_query(query_string) if query_string else []
        # name -> its first raw value (reversed: the first occurrence is written last and wins).
        names = dict(reversed(pairs)) if pairs else {}
        query_auth = "X-Amz-Algorithm" in names or "X-Amz-Credential" in names or "X-Amz-Signature" in names
        sigv2_query = "AWSAccessKeyId" in names and "Signature" in names
        authorization = headers.get("authorization")
        if authorization:
            if query_auth or sigv2_query:
                raise errors.InvalidArgument(
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
                    "query string parameter or the Authorization header should be specified",
                    ArgumentName="Authorization")
            return self._header_auth(method, raw_path, pairs, headers, authorization)
        if query_auth:
            return self._query_auth(method, raw_path, pairs, names, headers)
        if sigv2_query:
            access_key = sigv2.verify_query(method, raw_path, pairs, headers, self._secret, self._clock())
            return AuthResult(access_key=access_key, payload=_v2_payload(headers))
        if not self._allow_anonymous:
            raise errors.AccessDenied()
        return AuthResult(access_key="", payload=headers.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD)

    # -- the two ways to sign ----------------------------------------------------------------

    def _header_auth(self, method, raw_path, pairs, headers, authorization: str) -> AuthResult:
        malformed = errors.AuthorizationHeaderMalformed
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            if algorithm == "AWS":  # SigV2, "AWS AKID:signature"
                access_key = sigv2.verify_header(authorization, method, raw_path, pairs, headers, self._secret,
                                                 self._clock(), self._max_skew)
                return AuthResult(access_key=access_key, payload=_v2_payload(headers))
            raise malformed(f"The authorization header is malformed; unsupported algorithm {algorithm!r}; "
                            f"use {ALGORITHM}.")
        fields = {}
        for part in rest.split(","):
            name, sep, value = part.strip().partition("=")
            if sep:
                fields[name] = value.strip()
        credential, signed, signature = fields.get("Credential"), fields.get("SignedHeaders"), fields.get("Signature")
        if not credential or not signed or not signature:
            raise malformed("The authorization header is malformed; it must contain Credential, SignedHeaders "
                            "and Signature.")
        access_key, scope = _parse_credential(credential, malformed)

        amz_date = headers.get("x-amz-date")
        if amz_date:
            timestamp = parse_amz_date(amz_date)
        else:  # SigV4 also allows the HTTP Date header; the string to sign then uses its ISO form
            timestamp = _parse_http_date(headers.get("date", ""))
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(timestamp)) if timestamp is not None else ""
        if timestamp is None:
            raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        if scope[:8] != amz_date[:8]:
            raise malformed("The authorization header is malformed; Invalid credential date. "
                            "Date is not the same as X-Amz-Date.")
        secret = self._secret(access_key)
        now = self._clock()
        if abs(now - timestamp) > self._max_skew:
            raise errors.RequestTimeTooSkewed(RequestTime=amz_date, ServerTime=_iso(now),
                                              MaxAllowedSkewMilliseconds=str(self._max_skew * 1000))

        payload = headers.get("x-amz-content-sha256")
        if not payload:
            # Generic SigV4 signers (curl --aws-sigv4, many HTTP libraries) sign the body's hash without
            # sending this header. Without a body that hash is known: accept it, as MinIO does.
            if headers.get("content-length", "0") in ("", "0") and "transfer-encoding" not in headers:
                payload = EMPTY_SHA256
            else:
                raise errors.InvalidRequest(
                    "Missing required header for this request: x-amz-content-sha256 (with curl --aws-sigv4 "
                    "add -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD')")
        _check_payload(payload)
        signed_names = _signed_names(signed, headers, malformed)
        key = self._signing_key(secret, scope)
        self._verify(method, raw_path, canonical_query(pairs), headers, signed, signed_names, payload, amz_date,
                     scope, key, signature, access_key)
        return AuthResult(access_key, payload, signature, key, amz_date, scope)

    def _query_auth(self, method, raw_path, pairs, first: Mapping[str, str], headers) -> AuthResult:
        """first: each query parameter's first raw value (a repeated X-Amz-* parameter counts once)."""
        signature = _decode(first.get("X-Amz-Signature") or "")
        get = first.get
        raw = tuple([get(name) for name in _PRESIGNED_STATIC])
        # Everything but the signature is the same in the URLs a client signs within one second:
        # parsed and checked once (_parse_presigned), then looked up.
        static = self._presigned.get(raw)
        if static is None:
            if not signature:
                raise _missing_query_auth()
            static = _parse_presigned(raw)
            if len(self._presigned) >= _PRESIGNED_CACHE_LIMIT:
                self._presigned.clear()
            self._presigned[raw] = static
        elif not signature:
            raise _missing_query_auth()
        access_key, scope, amz_date, timestamp, expires, signed, query_payload, canonical, count = static
        secret = self._secret(access_key)
        now = self._clock()
        if timestamp - now > self._max_skew:
            raise errors.AccessDenied("Request is not yet valid", ServerTime=_iso(now))
        if now > timestamp + expires:
            raise errors.AccessDenied("Request has expired", Expires=_iso(timestamp + expires),
                                      ServerTime=_iso(now))

        signed_names = _signed_names(signed, headers, errors.AuthorizationQueryParametersError)
        # Presigned URLs sign no payload, unless the signer put a hash in the query or signed the header.
        payload = query_payload
        if not payload:
            header = headers.get("x-amz-content-sha256")
            payload = header if header and "x-amz-content-sha256" in signed_names else UNSIGNED_PAYLOAD
        _check_payload(payload)
        # The canonical query from the cache only when the query holds nothing but these parameters,
        # each once (then it is made of exactly them); otherwise from all of the query's pairs.
        if len(pairs) != count or len(first) != count:
            canonical = canonical_query(pairs, "X-Amz-Signature")
        key = self._signing_key(secret, scope)
        self._verify(method, raw_path, canonical, headers, signed, signed_names, payload, amz_date, scope, key,
                     signature, access_key)
        return AuthResult(access_key, payload, signature, key, amz_date, scope)

    # -- shared pieces ----------------------------------------------------------------------

    def _secret(self, access_key: str) -> str:
        secret = self._credentials.get(access_key)
        if secret is None:
            raise errors.InvalidAccessKeyId(AWSAccessKeyId=access_key)
        return secret

    def _signing_key(self, secret: str, scope: str) -> bytes:
        # scope is date/region/service/aws4_request (checked by _parse_credential): it names the key.
        cache_key = (secret, scope)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()  # a handful of live entries; refilling costs four HMACs each
            date, region, service, _ = scope.split("/")
            key = self._keys[cache_key] = derive_signing_key(secret, date, region, service)
        return key

    def _hmac_hex(self, key: bytes, message: bytes) -> bytes:
        """hex HMAC-SHA256 as bytes, from SHA-256 states primed with the key's inner and outer pads
        (RFC 2104), kept per signing key: hmac.new/hmac.digest look the digest up in OpenSSL 3 on
        every call, which costs ~1.8 µs; copying two primed states costs ~0.6."""
        pads = self._pads.get(key)
        if pads is None:
            if len(self._pads) >= _KEY_CACHE_LIMIT:
                self._pads.clear()
            block = key.ljust(64, b"\0")  # signing keys are 32 bytes: never longer than the block
            pads = self._pads[key] = (hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD)))
        inner = pads[0].copy()
        inner.update(message)
        outer = pads[1].copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()

    def _verify(self, method, raw_path, query, headers, signed, signed_names, payload, amz_date, scope, key,
                signature, access_key) -> None:
        """query: the canonical query string."""
        header_block = "".join([f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_names])
        expected = signature.encode("latin-1", "replace")
        raw_path = raw_path or "/"
        signed_part = f"{query}\n{header_block}\n{signed}\n{payload}"
        # The path as sent first (what S3 and every AWS SDK sign); the decoded-and-re-encoded path
        # only after a mismatch, so the common case computes one canonical request.
        if self._signs(key, method, raw_path, signed_part, amz_date, scope, expected):
            return
        reencoded = _reencoded_path(raw_path)
        if reencoded != raw_path and self._signs(key, method, reencoded, signed_part, amz_date, scope, expected):
            return
        # What we signed, as S3 says it: a client's debug output next to these shows what differs
        # (a header a proxy changed, a path encoded differently). Neither holds the secret.
        canonical = f"{method}\n{raw_path}\n{signed_part}"
        raise errors.SignatureDoesNotMatch(AWSAccessKeyId=access_key, StringToSign=_string_to_sign(
            canonical, amz_date, scope), SignatureProvided=signature, CanonicalRequest=canonical)

    def _signs(self, key, method, uri, signed_part, amz_date, scope, expected: bytes) -> bool:
        """Does the canonical request with this path have the ``expected`` (hex, bytes) signature?"""
        string_to_sign = _string_to_sign(f"{method}\n{uri}\n{signed_part}", amz_date, scope)
        return hmac.compare_digest(self._hmac_hex(key, string_to_sign.encode()), expected)


def _string_to_sign(canonical: str, amz_date: str, scope: str) -> str:
    try:  # headers and raw_path are latin-1 decoded wire bytes: hash those same bytes
        data = canonical.encode("latin-1")
    except UnicodeEncodeError:
        data = canonical.encode("utf-8")
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(data).hexdigest()}"


def _parse_credential(credential: str, error: type) -> tuple[str, str]:
    """``AKID/YYYYMMDD/region/s3/aws4_request`` -> (access key, scope). Any region is accepted."""
    if len(credential) <= _MEMO_MAX_LEN:
        return _parse_credential_memo(credential, error)
    return _parse_credential_uncached(credential, error)


@lru_cache(maxsize=256)
def _parse_credential_memo(credential: str, error: type) -> tuple[str, str]:
    # The same credential string arrives all day; a malformed one raises, and that is not cached.
    return _parse_credential_uncached(credential, error)


def _parse_credential_uncached(credential: str, error: type) -> tuple[str, str]:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or len(parts[1]) != 8 or not parts[1].isdigit() or not parts[2]:
        raise error('Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; expecting '
                    '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    if parts[3] != "s3":
        raise error(f'Error parsing the X-Amz-Credential parameter; incorrect service "{parts[3]}". '
                    'This endpoint belongs to "s3".')
    if parts[4] != "aws4_request":
        raise error(f'Error parsing the X-Amz-Credential parameter; incorrect terminal "{parts[4]}". '
                    'This endpoint uses "aws4_request".')
    return parts[0], "/".join(parts[1:])


def _signed_names(signed: str, headers: Mapping[str, str], error: type) -> list[str]:
    names = signed.split(";")
    if "host" not in names:
        raise error("SignedHeaders must include host.")
    # Like S3: every x-amz-* header must be signed, or a replayed request could carry extra ones
    # (x-amz-copy-source, x-amz-acl, ...). x-amz-content-sha256 is exempt, as on S3.
    unsigned = [name for name in headers if name.startswith("x-amz-") and name != "x-amz-content-sha256"
                and name not in names]
    if unsigned:
        raise errors.AccessDenied("There were headers present in the request which were not signed",
                                  HeadersNotSigned=", ".join(sorted(unsigned)))
    return names


def _check_payload(payload: str) -> None:
    if payload in _NAMED_PAYLOADS or (len(payload) == 64 and _HEX.issuperset(payload)):
        return
    raise errors.InvalidArgument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
        "or a valid sha256 value.", ArgumentName="x-amz-content-sha256", ArgumentValue=payload)


def _parse_http_date(value: str) -> float | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()
