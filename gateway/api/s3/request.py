"""The S3 request as the handlers see it, parsed from an ASGI scope once."""

from __future__ import annotations

import email.utils
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote, unquote_to_bytes

from ... import errors
from ...backend import ByteRange

MAX_KEY_BYTES = 1024
# What no HTTP header value can carry (the parser refuses it in a request's; a response with it is
# never sent): checked in values that become headers some other way (query parameters).
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@dataclass(slots=True)
class S3Request:
    method: str
    raw_path: str  # as sent (percent-encoded), for signatures
    query_string: str
    headers: dict[str, str]
    bucket: str
    key: str
    query: dict[str, str]
    receive: object = None
    request_id: str = ""
    # The query's (name, value) pairs still percent-encoded, in order: what signatures cover.
    query_pairs: list[tuple[str, str]] = field(default_factory=list)
    access_key: str = ""
    auth: object = None

    @classmethod
    def from_scope(cls, scope, receive, request_id: str) -> "S3Request":
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1") if raw else scope["path"]
        path, _, _ = raw_path.partition("?")
        # Path-style: /bucket/key; the server already percent-decoded scope["path"] as UTF-8.
        bucket, _, key = scope["path"][1:].partition("/")
        raw_headers = scope["headers"]
        # Every request pays for this: one comprehension, and the joining loop only when a name repeats.
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers}
        if len(headers) != len(raw_headers):
            headers = _joined_headers(raw_headers)
        qs = scope["query_string"].decode("latin-1")
        if qs:
            pairs, query = split_query(qs)
        else:
            pairs, query = [], {}
        return cls(scope["method"], path, qs, headers, bucket, key, query, receive, request_id, pairs)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def body_chunks(self) -> AsyncIterator[bytes]:
        """The raw request body from the socket, chunk by chunk."""
        return receive_body(self.receive)

    async def read_body(self, limit: int = 2 * 1024 * 1024) -> bytes:
        """The whole body of a small request (XML documents), checked against a signed payload hash;
        refuse more than ``limit`` bytes."""
        parts, size = [], 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > limit:
                raise errors.MalformedXML(f"The request body is larger than {limit} bytes.")
            parts.append(chunk)
        body = b"".join(parts)
        # A signed hash covers the document as it does an object's bytes: unchecked, a signed
        # DeleteObjects or CompleteMultipartUpload could be sent with another document.
        payload = self.auth.payload if self.auth is not None else ""
        if len(payload) == 64 and hashlib.sha256(body).hexdigest() != payload.lower():
            raise errors.XAmzContentSHA256Mismatch()
        return body

    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        length = parse_decimal(value)
        if length is None:
            raise errors.InvalidArgument("Content-Length is not a number.", ArgumentName="Content-Length")
        return length


def _joined_headers(raw_headers) -> dict[str, str]:
    """Header name -> value, repeated headers joined with ',' (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        name_s = name.decode("latin-1")
        value_s = value.decode("latin-1")
        headers[name_s] = f"{headers[name_s]},{value_s}" if name_s in headers else value_s
    return headers


def parse_query(qs: str) -> dict[str, str]:
    """``dict(parse_qsl(qs, keep_blank_values=True))``, three times faster: parts without '+' or '%'
    (most of them) skip unquoting. A presigned URL has six parameters, so this is on the hot path."""
    return split_query(qs)[1]


def split_query(qs: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The raw (name, value) pairs (what SigV4 and SigV2 sign; ``?uploads`` is ("uploads", "")) and
    parse_query's dict, in one pass over the query."""
    pairs = []
    query = {}
    for part in qs.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((name, value))
        if "%" in part or "+" in part:
            name = _unquote_plus(name)
            value = _unquote_plus(value)
        query[name] = value
    return pairs, query


def _unquote_plus(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    # Memoized for short values: X-Amz-Credential and the like repeat on every request.
    return _unquote_memo(text) if len(text) <= 256 else unquote(text)


_unquote_memo = lru_cache(maxsize=1024)(unquote)


_VALID_BUCKET_NAMES: set[str] = set()  # names that passed the check below: every request checks one


def check_bucket_name(name: str) -> None:
    if name in _VALID_BUCKET_NAMES:
        return
    _check_bucket_name(name)
    if len(_VALID_BUCKET_NAMES) >= 4096:
        _VALID_BUCKET_NAMES.clear()  # a bound for a server that is asked for very many names
    _VALID_BUCKET_NAMES.add(name)


def _check_bucket_name(name: str) -> None:
    if not _BUCKET_RE.match(name) or ".." in name or ".-" in name or "-." in name or _IP_RE.match(name):
        raise errors.InvalidBucketName(
            "Bucket names are 3-63 characters of lower-case letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit.",
            BucketName=name,
        )


# Names S3 keeps for its own features (access point aliases, Object Lambda, directory and table
# buckets, documentation examples) and never lets a new bucket take; buckets made before this
# check keep working (check_bucket_name, which every request passes, does not look at these).
RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_new_bucket_name(name: str) -> None:
    """CreateBucket's check: check_bucket_name, and none of S3's reserved prefixes and suffixes."""
    check_bucket_name(name)
    reserved = next((p for p in RESERVED_BUCKET_PREFIXES if name.startswith(p)), None) or next(
        (s for s in RESERVED_BUCKET_SUFFIXES if name.endswith(s)), None)
    if reserved is not None:
        raise errors.InvalidBucketName(
            f"Bucket names may not {'start' if name.startswith(reserved) else 'end'} with {reserved!r}: "
            "S3 reserves it; choose another name.", BucketName=name)
    if name in GATEWAY_RESERVED_BUCKETS:
        raise errors.InvalidBucketName(
            f"The bucket name {name!r} is reserved by this gateway: GET /{name} is its health check. Choose "
            "another name (one that only starts with it is fine).", BucketName=name)


GATEWAY_RESERVED_BUCKETS = frozenset({"healthz", "readyz"})  # gateway/app.py serves GET/HEAD of these paths


def _utf8_or_invalid_uri(raw: str, what: str) -> None:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidURI(f"Couldn't parse the specified URI: {what} holds percent-encoded bytes "
                                "that are not UTF-8.") from None


def check_path_utf8(req: S3Request) -> None:
    """InvalidURI (as S3) for a path whose percent-encoded bytes are not UTF-8. The server decodes
    them with U+FFFD for each bad byte, so ``bad%FF`` and ``bad%FE`` would name one key. Only a
    decoded path with a U+FFFD is looked at again: for every other request this is one ``in``."""
    if "\ufffd" in req.key or "\ufffd" in req.bucket:
        _utf8_or_invalid_uri(req.raw_path, "the path")


def check_query_utf8(req: S3Request) -> None:
    """The same for the query's names and values (prefix, marker, start-after, ...)."""
    if any("\ufffd" in value for value in req.query.values()) or any("\ufffd" in name for name in req.query):
        for name, value in req.query_pairs:
            _utf8_or_invalid_uri(name.replace("+", " "), "the query")
            _utf8_or_invalid_uri(value.replace("+", " "), f"the query parameter {name!r}")


def check_key(key: str) -> None:
    if len(key.encode()) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError(f"Keys are at most {MAX_KEY_BYTES} bytes of UTF-8.", Key=key[:64] + "...")


HUGE = 10 ** 19  # what parse_decimal reads a longer number as: above every bound a caller checks


def parse_decimal(text: str) -> int | None:
    """A non-negative integer in ASCII digits (leading zeros allowed), or None.

    Not ``text.isdigit()`` + ``int(text)``: isdigit() also accepts "²" and other Unicode digits,
    which int() refuses (a 500 for a bad query parameter) or, like "٣", reads; and int() refuses
    more than 4,300 digits. A number longer than 19 digits reads as HUGE, beyond any bound a caller
    checks (part numbers, max-keys, expiry times, sizes), so it fails or is clamped like any other
    large value."""
    if not text.isascii() or not text.isdigit():
        return None
    text = text.lstrip("0") or "0"
    return int(text) if len(text) <= 19 else HUGE


def parse_range(value: str | None) -> ByteRange | None:
    """Parse one byte range; anything S3 would ignore (several ranges, other units) returns None."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    if first == "":
        suffix = parse_decimal(last)
        return ByteRange(None, suffix) if suffix is not None else None
    start, end = parse_decimal(first), (parse_decimal(last) if last else None)
    if start is None or (last and end is None):
        return None
    if end is not None and end < start:
        return None  # S3 ignores an inverted range and returns the whole object
    return ByteRange(start, end)


@lru_cache(maxsize=4096)
def http_date(timestamp: int) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed else None


def whole_seconds(timestamp: float) -> int:
    """An object's modification time as clients see it, everywhere: Last-Modified, listings, the
    If-(Un)Modified-Since comparisons. Whole seconds, because Last-Modified has no more; rounded up,
    because sync tools compare it with the mtime of the file they uploaded, written a moment before
    the object was stored: rounded down, that file looks newer and `aws s3 sync` uploads it again."""
    return math.ceil(timestamp)


def iso8601(timestamp: float) -> str:
    """``...T10:52:32.000Z``: the same whole second as Last-Modified (whole_seconds). With
    milliseconds here, `aws s3 sync --exact-timestamps` saw every downloaded file (stamped with
    Last-Modified) as changed and fetched it again on every run."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(whole_seconds(timestamp)))


async def receive_body(receive) -> AsyncIterator[bytes]:
    """An ASGI request body, chunk by chunk; IncompleteBody if the client goes away first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.IncompleteBody("The client closed the connection before the body was complete.")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
