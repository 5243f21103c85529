"""AWS Signature Version 2 (HMAC-SHA1), header and query-string forms.

Still what boto3's ``generate_presigned_url`` produces for a custom endpoint
unless the client sets ``signature_version="s3v4"``, and what older tools
send, so "boto3 just works" needs it. The string to sign follows the S3
REST authentication guide (and botocore's HmacV1Auth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, unquote_plus

from ... import errors
from .request import CONTROL_CHARACTER, parse_decimal

# Query parameters that are part of the signed resource.
SUB_RESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber", "policy",
    "requestPayment", "torrent", "versioning", "versionId", "versions", "website", "uploads", "uploadId",
    "response-content-type", "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding", "delete", "lifecycle", "tagging", "restore",
    "storageClass", "notification", "replication", "analytics", "metrics", "inventory", "select",
    "select-type", "object-lock",
})


def _resource(raw_path: str, pairs: list[tuple[str, str]]) -> str:
    # By the names and values the request is served by (split_query decodes them, a "+" as a space):
    # matched as sent, a parameter spelt `upload%49d` or `response-content-typ%65` was left out of the
    # signature and still acted on (a presigned DELETE aborted an upload; unsigned response overrides
    # served an object as text/html), and a value's %2B swapped for "+" was signed alike, served apart.
    interesting = sorted((name, value) for name, value in ((unquote_plus(n), v) for n, v in pairs)
                         if name in SUB_RESOURCES)
    if not interesting:
        return raw_path
    return raw_path + "?" + "&".join(f"{n}={unquote_plus(v)}" if v != "" or "=" in v else n for n, v in interesting)


def string_to_sign(method: str, raw_path: str, pairs, headers: Mapping[str, str], date: str) -> str:
    amz = sorted((name, value) for name, value in headers.items() if name.startswith("x-amz-"))
    lines = [method, headers.get("content-md5", ""), headers.get("content-type", ""), date]
    lines += [f"{name}:{value.strip()}" for name, value in amz]
    return "\n".join(lines) + "\n" + _resource(raw_path, pairs)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def sign(secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), text.encode("utf-8"), hashlib.sha1).digest()).decode()


def _check(signature: str, secret: str, method: str, raw_path: str, pairs, headers: Mapping[str, str],
           date: str) -> None:
    """Raise SignatureDoesNotMatch unless ``signature`` signs the request.

    botocore signs a request that names only a bucket with the resource ``/bucket/`` and sends
    ``/bucket`` (path-style addressing): every bucket-level call of a SigV2 client (ListObjects,
    HeadBucket, DeleteObjects, ...) failed. Such a path is checked both ways."""
    expected = sign(secret, string_to_sign(method, raw_path, pairs, headers, date))
    if hmac.compare_digest(expected, signature):
        return
    if raw_path.count("/") == 1 and len(raw_path) > 1:
        expected = sign(secret, string_to_sign(method, raw_path + "/", pairs, headers, date))
        if hmac.compare_digest(expected, signature):
            return
    raise errors.SignatureDoesNotMatch()


def verify_header(authorization: str, method: str, raw_path: str, pairs, headers: Mapping[str, str],
                  secret_for: Callable[[str], str], now: float, max_skew: int) -> str:
    """Check ``Authorization: AWS AKID:signature``; return the access key."""
    access_key, sep, signature = authorization.strip()[4:].partition(":")
    if not sep or not access_key or not signature:
        raise errors.AuthorizationHeaderMalformed("A SigV2 authorization header is 'AWS access-key:signature'.")
    secret = secret_for(access_key)
    # x-amz-date, when present, replaces Date in the string to sign (as an x-amz header).
    date = "" if "x-amz-date" in headers else headers.get("date", "")
    when = headers.get("x-amz-date") or headers.get("date")
    try:
        stamp = parsedate_to_datetime(when).timestamp() if when else None
    except (TypeError, ValueError):
        stamp = None
    if stamp is None:
        raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    if abs(stamp - now) > max_skew:
        raise errors.RequestTimeTooSkewed(RequestTime=when, ServerTime=_iso(now),
                                          MaxAllowedSkewMilliseconds=str(max_skew * 1000))
    _check(signature, secret, method, raw_path, pairs, headers, date)
    return access_key


def verify_query(method: str, raw_path: str, pairs, headers: Mapping[str, str],
                 secret_for: Callable[[str], str], now: float) -> str:
    """Check a presigned SigV2 URL (AWSAccessKeyId, Signature, Expires); return the access key.

    botocore puts the Content-Type, Content-MD5 and x-amz-* headers a URL is signed with into its
    query (a URL carries no headers). Those signed values are the request's: a header that says
    otherwise is refused, and one the request does not send is added to ``headers`` (a dict), so
    that what is stored is what was signed. They only took part in the signature before: whoever
    held the URL could store any Content-Type (text/html), other metadata, or bytes other than the
    Content-MD5 pinned."""
    params = {unquote_plus(name): unquote(value) for name, value in pairs}  # names as served (_resource)
    access_key, signature, expires = params.get("AWSAccessKeyId", ""), params.get("Signature", ""), params.get(
        "Expires", "")
    expires_at = parse_decimal(expires)
    if expires_at is None:
        raise errors.AccessDenied("Query-string authentication requires the Signature, Expires and "
                                  "AWSAccessKeyId parameters")
    secret = secret_for(access_key)
    if now > expires_at:
        raise errors.AccessDenied("Request has expired", Expires=_iso(expires_at), ServerTime=_iso(now))
    in_query = {name: value for name, value in params.items()
                if name.startswith("x-amz-") or name in ("content-type", "content-md5")}
    _check(signature, secret, method, raw_path, pairs, {**headers, **in_query}, expires)
    for name, value in in_query.items():
        sent = headers.get(name)
        if sent is None:
            if CONTROL_CHARACTER.search(value):  # a header could not carry it: stored, every read would be a 500
                raise errors.InvalidArgument(f"The {name} the URL was signed with holds a control character, "
                                             "which no HTTP header can carry.", ArgumentName=name)
            headers[name] = value
        elif sent.strip() != value.strip():
            raise errors.SignatureDoesNotMatch(
                f"The {name} header ({sent!r}) is not the {name} the URL was signed with ({value!r}).")
    return access_key
