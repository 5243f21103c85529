"""Bucket handlers: list/create/head/delete buckets, listings, DeleteObjects."""

from __future__ import annotations

import base64
import hashlib
import re

from ... import errors
from ...backend import ObjectInfo
from ...checksums import ALGORITHMS, checksum_b64
from .objects import delete_key
from .request import S3Request, check_key, check_new_bucket_name, iso8601, parse_decimal
from .responses import send_response, send_xml
from .xml import child_text, document, element, keep_key, listing_encoder, not_xml, parse

OWNER = "<Owner><ID>cv-gateway</ID><DisplayName>cv-gateway</DisplayName></Owner>"
MAX_KEYS = 1000


MAX_BUCKETS = 10000


async def list_buckets(app, req: S3Request, send) -> None:
    """ListBuckets with S3's (2024) prefix, max-buckets, continuation-token and bucket-region; the
    token is the last name of the page before (names sort, so it resumes exactly after it)."""
    query = req.query
    prefix = query.get("prefix", "")
    limit = MAX_BUCKETS
    if "max-buckets" in query:
        limit = parse_decimal(query["max-buckets"])
        if limit is None or not 1 <= limit <= MAX_BUCKETS:
            raise errors.InvalidArgument(f"max-buckets must be an integer from 1 to {MAX_BUCKETS}.",
                                         ArgumentName="max-buckets", ArgumentValue=query["max-buckets"])
    after = ""
    if query.get("continuation-token"):
        after = decode_token(query["continuation-token"])
    buckets = [b for b in await app.service.list_buckets() if b.name.startswith(prefix) and b.name > after]
    if query.get("bucket-region", app.settings.region) != app.settings.region:
        buckets = []  # every bucket here is in the one region this gateway reports
    page = buckets[:limit]
    entries = "".join(
        f"<Bucket>{element('Name', b.name)}{element('CreationDate', iso8601(b.created))}"
        f"{element('BucketRegion', app.settings.region)}</Bucket>"
        for b in page
    )
    extra = ""
    if len(buckets) > limit:
        extra += element("ContinuationToken", encode_token(page[-1].name))
    if "prefix" in query:
        extra += element("Prefix", prefix)
    await send_xml(send, 200, document("ListAllMyBucketsResult", OWNER, f"<Buckets>{entries}</Buckets>", extra),
                   req.request_id)


def encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def decode_token(token: str) -> str:
    """The name a continuation token of ours (encode_token) resumes after; InvalidArgument for any
    other string. urlsafe_b64decode alone skips characters outside the alphabet, so "!!!" or ""
    read as "" and the listing silently started over from the first key."""
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        name = raw.decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeEncodeError and UnicodeDecodeError are ValueErrors
        name = None
    if not name or encode_token(name) != token:
        raise errors.InvalidArgument("The continuation token provided is incorrect.",
                                     ArgumentName="continuation-token")
    return name


async def create_bucket(app, req: S3Request, send) -> None:
    check_new_bucket_name(req.bucket)
    if req.headers.get("x-amz-bucket-object-lock-enabled", "").strip().lower() == "true":
        # A bucket made without it would take deletes and overwrites the client believes it refuses (WORM).
        raise errors.NotImplementedError_("Object lock is not implemented; the bucket was not created.")
    body = await req.read_body(64 * 1024)
    if body.strip():
        parse(body)  # CreateBucketConfiguration (LocationConstraint): accepted, any region
    await app.service.backend_for(req.bucket).create_bucket(req.bucket)
    await send_response(send, 200, [(b"location", f"/{req.bucket}".encode()),
                                    (b"x-amz-request-id", req.request_id.encode())])


async def head_bucket(app, req: S3Request, send) -> None:
    await app.service.backend_for(req.bucket).head_bucket(req.bucket)
    await send_response(send, 200, [(b"x-amz-request-id", req.request_id.encode()),
                                    (b"x-amz-bucket-region", app.settings.region.encode())])


async def delete_bucket(app, req: S3Request, send) -> None:
    backend = app.service.backend_for(req.bucket)
    await backend.delete_bucket(req.bucket)
    await backend.discard_uploads(req.bucket)
    await send_response(send, 204, [(b"x-amz-request-id", req.request_id.encode())])


async def bucket_location(app, req: S3Request, send) -> None:
    await app.service.backend_for(req.bucket).head_bucket(req.bucket)
    region = "" if app.settings.region == "us-east-1" else app.settings.region
    await send_xml(send, 200, document("LocationConstraint", region.replace("&", "&amp;")), req.request_id)


async def bucket_versioning(app, req: S3Request, send) -> None:
    await app.service.backend_for(req.bucket).head_bucket(req.bucket)
    await send_xml(send, 200, document("VersioningConfiguration"), req.request_id)


def _max_keys(req: S3Request, name: str = "max-keys") -> int:
    value = req.query.get(name, str(MAX_KEYS))
    number = parse_decimal(value)
    if number is None:
        raise errors.InvalidArgument(f"{name} must be a non-negative integer.", ArgumentName=name,
                                     ArgumentValue=value)
    return min(number, MAX_KEYS)


async def list_objects(app, req: S3Request, send) -> None:
    """ListObjects (v1) and ListObjectsV2, which differ only in how they page."""
    query = req.query
    v2 = query.get("list-type") == "2"
    enc = listing_encoder(query)
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    max_keys = _max_keys(req)
    if v2:
        token = query.get("continuation-token")
        start_after = query.get("start-after", "")
        marker = start_after
        if token is not None:
            marker = decode_token(token)
    else:
        marker = query.get("marker", "")
    backend = app.service.backend_for(req.bucket)
    page = await backend.list(req.bucket, prefix, delimiter, marker, max_keys)
    owner = OWNER if (not v2 or query.get("fetch-owner") == "true") else ""
    # MinIO's extension: v2 with metadata=true adds each object's metadata, when the backend listed it.
    with_meta = v2 and query.get("metadata") == "true" and (
        page.metadata if page.metadata is not None else backend.capabilities.listing_metadata)
    contents = "".join(
        f"<Contents>{element('Key', enc(o.key))}{element('LastModified', iso8601(o.last_modified))}"
        f"{element('ETag', chr(34) + o.etag + chr(34))}{element('Size', o.size)}"
        f"{owner}<StorageClass>STANDARD</StorageClass>{user_metadata(o) if with_meta else ''}</Contents>"
        for o in page.objects
    )
    prefixes = "".join(f"<CommonPrefixes>{element('Prefix', enc(p))}</CommonPrefixes>" for p in page.common_prefixes)
    parts = [element("Name", req.bucket), element("Prefix", enc(prefix))]
    if v2:
        parts.append(element("KeyCount", len(page.objects) + len(page.common_prefixes)))
        if "continuation-token" in query:
            parts.append(element("ContinuationToken", query["continuation-token"]))
        if "start-after" in query:
            parts.append(element("StartAfter", enc(query["start-after"])))
        if page.is_truncated:
            token = encode_token(page.next_marker)
            parts.append(element("NextContinuationToken", token))
    else:
        parts.append(element("Marker", enc(marker)))
        if page.is_truncated and delimiter:
            parts.append(element("NextMarker", enc(page.next_marker)))
    parts.append(element("MaxKeys", max_keys))
    if delimiter:
        parts.append(element("Delimiter", enc(delimiter)))
    if enc is not keep_key:
        parts.append(element("EncodingType", "url"))
    parts.append(element("IsTruncated", "true" if page.is_truncated else "false"))
    await send_xml(send, 200, document("ListBucketResult", *parts, contents, prefixes), req.request_id)


# What XML allows after the "X-Amz-Meta-" of an element name, of the characters of an HTTP token.
_XML_NAME_TAIL = re.compile(r"[A-Za-z0-9._-]*")


def user_metadata(info: ObjectInfo) -> str:
    """An object's <UserMetadata> as MinIO writes it: <content-type> and one <X-Amz-Meta-Name> per
    x-amz-meta-name (the name in canonical header case), values as HEAD sends them (escaped).

    "" when an element would not be well-formed XML: a name with a token character XML names
    cannot hold (``a+b``, ``a~b``) or a value with a character XML cannot carry. The client then
    sees no UserMetadata, "not known", and asks HEAD, rather than take a partial set for the whole.
    """
    meta = info.meta
    parts = [element("content-type", meta.content_type)]
    for name, value in meta.metadata.items():
        if not _XML_NAME_TAIL.fullmatch(name):
            return ""
        parts.append(element("X-Amz-Meta-" + "-".join(w[:1].upper() + w[1:].lower() for w in name.split("-")),
                             value))
    if not_xml(meta.content_type) or any(not_xml(value) for value in meta.metadata.values()):
        return ""
    return f"<UserMetadata>{''.join(parts)}</UserMetadata>"


async def delete_objects(app, req: S3Request, send) -> None:
    body = await req.read_body()
    _check_body_digest(req, body)
    root = parse(body)
    if root.tag != "Delete":
        raise errors.MalformedXML("The document root must be <Delete>.")
    quiet = (child_text(root, "Quiet", required=False) or "").strip().lower() == "true"
    objects = root.findall("Object")
    if not objects or len(objects) > 1000:
        raise errors.MalformedXML("A Delete request names 1 to 1000 objects.")
    # (key, If-Match ETag or None, what is asked and not implemented or None)
    entries = [(child_text(node, "Key"), child_text(node, "ETag", required=False), _unsupported_in(node))
               for node in objects]
    backend = app.service.backend_for(req.bucket)
    await backend.head_bucket(req.bucket)
    results = []
    for key, etag, unsupported in entries:
        try:
            check_key(key)
            if not key:  # no object has the empty key: "Deleted" would tell the client a lie
                raise errors.InvalidArgument("An object key must not be empty.")
            if unsupported:  # deleting without it could delete what the client keeps
                raise errors.NotImplementedError_(unsupported)
            await delete_key(app, req.bucket, key, etag.strip() if etag is not None else None)
            if not quiet:
                results.append(f"<Deleted>{element('Key', key)}</Deleted>")
        except errors.GatewayError as exc:
            results.append(f"<Error>{element('Key', key)}{element('Code', exc.code)}"
                           f"{element('Message', exc.message)}</Error>")
    await send_xml(send, 200, document("DeleteResult", *results), req.request_id)


def _unsupported_in(node) -> str | None:
    """Why a DeleteObjects <Object> cannot be done as asked, or None. A <VersionId> other than "null"
    (buckets are never versioned) names an older version: deleting the current object instead would
    remove what the client keeps, as would ignoring the directory-bucket conditions."""
    version = child_text(node, "VersionId", required=False)
    if version is not None and version.strip() != "null":
        return "Object versions are not implemented; only VersionId null exists."
    condition = next((tag for tag in ("LastModifiedTime", "Size") if node.find(tag) is not None), None)
    if condition is not None:
        return f"The {condition} condition is not implemented; ETag is."
    return None


def _check_body_digest(req: S3Request, body: bytes) -> None:
    """Content-MD5 or an x-amz-checksum-* header, when sent, must match the body."""
    md5 = req.headers.get("content-md5")
    if md5 is not None and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
        raise errors.BadDigest("The Content-MD5 you specified did not match what we received.")
    for algorithm in ALGORITHMS:
        value = req.headers.get(f"x-amz-checksum-{algorithm.lower()}")
        if value is not None and checksum_b64(algorithm, body) != value:
            raise errors.BadDigest(f"The {algorithm} you specified did not match what we received.")
