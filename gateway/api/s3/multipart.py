"""Multipart upload handlers; the storage work is in Backend's multipart methods."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import quote

from ... import errors
from ...backend import MAX_PARTS, ByteRange, require_completion_checksums
from ...checksums import ALGORITHMS, b64, new_hasher
from ...payload import Payload
from .body import payload_from_request, requested_checksums
from .objects import (
    check_preconditions,
    check_write_conditions,
    check_write_headers,
    is_conditional,
    meta_from_headers,
    parse_copy_source,
    stored_at,
)
from .request import S3Request, check_key, iso8601, parse_decimal
from .responses import send_response, send_xml
from .xml import child_text, document, element, keep_key, listing_encoder, parse, xml_safe

_COPY_RANGE = re.compile(r"^bytes=([0-9]+)-([0-9]+)$")


def _part_number(req: S3Request) -> int:
    value = req.query.get("partNumber", "")
    number = parse_decimal(value)
    if number is None or not 1 <= number <= MAX_PARTS:
        raise errors.InvalidArgument(f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive.",
                                     ArgumentName="partNumber", ArgumentValue=value)
    return number


async def create_upload(app, req: S3Request, send) -> None:
    check_key(req.key)
    check_write_headers(req)
    algorithm = req.headers.get("x-amz-checksum-algorithm")
    if algorithm is not None and algorithm.upper() not in ALGORITHMS:
        raise errors.InvalidRequest(f"Checksum algorithm {algorithm!r} is not supported.")
    _checksum_type(req)  # checked as CompleteMultipartUpload checks it, which decides how it is used
    backend = app.service.backend_for(req.bucket)
    upload = await backend.create_multipart(req.bucket, req.key, meta_from_headers(req),
                                            algorithm.upper() if algorithm else None)
    extra = [(b"x-amz-checksum-algorithm", upload.checksum_algorithm.encode())] if upload.checksum_algorithm else []
    body = document("InitiateMultipartUploadResult", element("Bucket", req.bucket),
                    element("Key", xml_safe(req.key)), element("UploadId", upload.upload_id))
    await send_xml(send, 200, body, req.request_id, extra)


async def upload_part(app, req: S3Request, send) -> None:
    number = _part_number(req)
    upload_id = req.query["uploadId"]
    backend = app.service.backend_for(req.bucket)
    if "x-amz-copy-source" in req.headers:
        return await _upload_part_copy(app, req, send, number, upload_id)
    upload = await backend.get_upload(req.bucket, upload_id, req.key)
    extra = (upload.checksum_algorithm,) if upload.checksum_algorithm else ()
    part = await backend.upload_part(req.bucket, req.key, upload_id, number, payload_from_request(req, extra))
    headers = [(b"etag", f'"{part.etag}"'.encode()), (b"x-amz-request-id", req.request_id.encode())]
    for algorithm, value in part.checksums.items():
        headers.append((b"x-amz-checksum-" + algorithm.lower().encode(), value.encode()))
    await send_response(send, 200, headers)


async def _upload_part_copy(app, req: S3Request, send, number: int, upload_id: str) -> None:
    src_bucket, src_key = parse_copy_source(req.headers["x-amz-copy-source"])
    source_backend = app.service.backend_for(src_bucket)
    target = app.service.backend_for(req.bucket)
    await target.get_upload(req.bucket, upload_id, req.key)
    source = await source_backend.head(src_bucket, src_key)
    check_preconditions(req, source, prefix="x-amz-copy-source-if-")
    byte_range = _copy_source_range(req.headers.get("x-amz-copy-source-range"), source.size)
    reader = await source_backend.get(src_bucket, src_key, byte_range)
    try:
        if reader.info.etag != source.etag:  # replaced between head and get: check the new version
            check_preconditions(req, reader.info, prefix="x-amz-copy-source-if-")
        payload = Payload(reader.chunks(), expected_size=reader.length)
        part = await target.upload_part(req.bucket, req.key, upload_id, number, payload)
    finally:
        reader.close()
    body = document("CopyPartResult", element("LastModified", iso8601(part.last_modified)),
                    element("ETag", f'"{part.etag}"'))
    await send_xml(send, 200, body, req.request_id)


def _copy_source_range(value: str | None, size: int) -> ByteRange | None:
    """x-amz-copy-source-range: unlike Range, S3 takes only bytes=first-last, inside the source."""
    if value is None:
        return None
    match = _COPY_RANGE.match(value.strip())
    if match is None:
        raise errors.InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are "
            "the zero-based offsets of the first and last bytes to copy.",
            ArgumentName="x-amz-copy-source-range", ArgumentValue=value)
    first, last = parse_decimal(match[1]), parse_decimal(match[2])
    if first > last or last >= size:
        raise errors.InvalidArgument(f"Range specified is not valid for source object of size: {size}",
                                     ArgumentName="x-amz-copy-source-range", ArgumentValue=value)
    return ByteRange(first, last)


async def complete_upload(app, req: S3Request, send) -> None:
    root = parse(await req.read_body())
    if root.tag != "CompleteMultipartUpload":
        raise errors.MalformedXML("The document root must be <CompleteMultipartUpload>.")
    parts = []
    claimed = {}  # part number -> {algorithm: checksum} the document gives for it
    for node in root.findall("Part"):
        number = parse_decimal(child_text(node, "PartNumber").strip())
        if number is None:
            raise errors.MalformedXML("PartNumber must be an integer.")
        parts.append((number, child_text(node, "ETag").strip()))
        checksums = {alg: node.findtext(f"Checksum{alg}").strip() for alg in ALGORITHMS
                     if node.find(f"Checksum{alg}") is not None}
        if checksums:
            claimed[number] = checksums
    backend = app.service.backend_for(req.bucket)
    try:
        info = await _complete(app, req, backend, parts, claimed)
    except errors.NoSuchUpload:
        info = await _completed_before(backend, req, parts)
        if info is None:
            raise
    else:
        app.service.object_written(req.bucket, req.key, info)
    # The Location is a path, percent-encoded as S3 does (a key's "?" or "#" would end it otherwise).
    body = document("CompleteMultipartUploadResult", element("Location", quote(f"/{req.bucket}/{req.key}")),
                    element("Bucket", req.bucket), element("Key", xml_safe(req.key)),
                    element("ETag", f'"{info.etag}"'),
                    *(element(f"Checksum{alg}", value) for alg, value in info.checksums.items()))
    await send_xml(send, 200, body, req.request_id, [stored_at(info)])


async def _complete(app, req: S3Request, backend, parts: list[tuple[int, str]],
                    claimed: dict[int, dict[str, str]]):
    composite, whole = _object_checksums(req)
    if claimed or composite:
        stored = {part.part_number: part.checksums
                  for part in await backend.list_parts(req.bucket, req.key, req.query["uploadId"])}
        _check_part_checksums(stored, claimed)
        _check_composite(stored, parts, composite)
    options = {}
    if whole:
        require_completion_checksums(backend)
        options["expected_checksums"] = whole
    if not is_conditional(req):
        return await backend.complete_multipart(req.bucket, req.key, req.query["uploadId"], parts, **options)
    # If-None-Match: * / If-Match, as on a PUT (S3 takes both here too)
    async with app.service.conditional_write(req.bucket, req.key) as confirm:
        await check_write_conditions(backend, req)
        await confirm()  # assembling the parts cannot be stopped halfway: the lock is confirmed before
        return await backend.complete_multipart(req.bucket, req.key, req.query["uploadId"], parts, **options)


async def _completed_before(backend, req: S3Request, parts: list[tuple[int, str]]):
    """The object a CompleteMultipartUpload sent again made the first time, or None.

    A Complete whose answer was lost (the client timed out and retried, or the node that forwarded
    it to the upload's holder gave up waiting) finds no upload when it comes again. S3 answers such
    a retry with the same success, where a NoSuchUpload would make the client report a failed
    upload of an object that is stored. So does this, when the object under the key is the
    assembly of exactly these parts: its ETag is the MD5 of the parts' MD5s and their count, which
    the request's part list gives (docs/s3-compatibility.md, "Multipart uploads")."""
    if not parts:
        return None
    try:
        digest = hashlib.md5(b"".join(bytes.fromhex(etag.strip('"')) for _, etag in parts)).hexdigest()
        etag = f"{digest}-{len(parts)}"
        completed_copy = getattr(backend, "completed_copy", None)  # a cluster node: asks every node
        info = (await completed_copy(req.bucket, req.key, etag) if completed_copy is not None
                else await backend.head(req.bucket, req.key))
    except (ValueError, errors.GatewayError):  # part ETags that are no MD5, no object, no answer
        return None
    return info if info is not None and info.etag == etag else None


def _check_part_checksums(stored: dict[int, dict[str, str]], claimed: dict[int, dict[str, str]]) -> None:
    """A part's checksum in the completion document must be the one of the part uploaded (InvalidPart,
    as on S3): the client vouches for the object with them. Checked where the backend knows the part's
    checksum of that algorithm (``stored``: part number -> checksums; a native multipart store may not
    report them)."""
    for number, checksums in claimed.items():
        known = stored.get(number, {})
        for algorithm, value in checksums.items():
            if algorithm in known and known[algorithm] != value:
                raise errors.InvalidPart(PartNumber=str(number), **{f"Checksum{algorithm}": value})


_COMPOSITE = re.compile(r"^(.+)-([0-9]+)$")


def _checksum_type(req: S3Request) -> str:
    """x-amz-checksum-type, upper case ("" when not sent): FULL_OBJECT or COMPOSITE, else InvalidRequest."""
    kind = req.headers.get("x-amz-checksum-type", "").upper()
    if kind not in ("", "FULL_OBJECT", "COMPOSITE"):
        raise errors.InvalidRequest(f"x-amz-checksum-type {kind!r} is not FULL_OBJECT or COMPOSITE.",
                                    ArgumentName="x-amz-checksum-type")
    return kind


def _object_checksums(req: S3Request) -> tuple[dict[str, str], dict[str, str]]:
    """The object's checksums the client sent with CompleteMultipartUpload (x-amz-checksum-<alg>):
    (composite ones, "checksum of the parts' checksums-N", checked against the parts; whole-object
    ones, checked against the assembled bytes before the object is stored)."""
    declared, _ = requested_checksums(req)
    kind = _checksum_type(req)
    composite = {alg: value for alg, value in declared.items()
                 if kind == "COMPOSITE" or (kind == "" and _COMPOSITE.match(value))}
    return composite, {alg: value for alg, value in declared.items() if alg not in composite}


def _check_composite(stored: dict[int, dict[str, str]], parts: list[tuple[int, str]],
                     composite: dict[str, str]) -> None:
    """A composite checksum is the checksum of the parts' checksums (decoded, in part order) and
    "-<number of parts>": checked against the checksums stored with the parts, before assembling."""
    for algorithm, value in composite.items():
        header = f"x-amz-checksum-{algorithm.lower()}"
        match = _COMPOSITE.match(value)
        if match is None or int(match[2]) != len(parts):
            raise errors.BadDigest(f"The composite checksum in {header} must end in -{len(parts)}, the number "
                                   "of parts completed.")
        hasher = new_hasher(algorithm)
        for number, _ in parts:
            checksum = stored.get(number, {}).get(algorithm)
            if checksum is None:
                raise errors.InvalidRequest(
                    f"Part {number} was uploaded without a {algorithm} checksum, so the composite checksum in "
                    f"{header} cannot be checked: leave the header out, or upload the parts with "
                    f"x-amz-checksum-{algorithm.lower()}.")
            hasher.update(base64.b64decode(checksum))
        if b64(hasher.digest()) != match[1]:
            raise errors.BadDigest(f"The composite checksum in {header} does not match the checksums of the "
                                   "parts completed; nothing was stored and the upload can be completed again.")


async def abort_upload(app, req: S3Request, send) -> None:
    await app.service.backend_for(req.bucket).abort_multipart(req.bucket, req.key, req.query["uploadId"])
    await send_response(send, 204, [(b"x-amz-request-id", req.request_id.encode())])


def _int_param(req: S3Request, name: str, default: int, limit: int) -> int:
    value = req.query.get(name, str(default))
    number = parse_decimal(value)
    if number is None:
        raise errors.InvalidArgument(f"{name} must be a non-negative integer.", ArgumentName=name,
                                     ArgumentValue=value)
    return min(number, limit)


async def list_parts(app, req: S3Request, send) -> None:
    upload_id = req.query["uploadId"]
    max_parts = _int_param(req, "max-parts", 1000, 1000)
    marker = _int_param(req, "part-number-marker", 0, MAX_PARTS)
    parts = [p for p in await app.service.backend_for(req.bucket).list_parts(req.bucket, req.key, upload_id)
             if p.part_number > marker]
    page, truncated = parts[:max_parts], len(parts) > max_parts
    entries = "".join(
        f"<Part>{element('PartNumber', p.part_number)}{element('LastModified', iso8601(p.last_modified))}"
        f"{element('ETag', chr(34) + p.etag + chr(34))}{element('Size', p.size)}"
        + "".join(element(f"Checksum{a}", v) for a, v in p.checksums.items()) + "</Part>"
        for p in page
    )
    body = document(
        "ListPartsResult", element("Bucket", req.bucket), element("Key", xml_safe(req.key)),
        element("UploadId", upload_id),
        element("PartNumberMarker", marker),
        element("NextPartNumberMarker", page[-1].part_number if page else marker),
        element("MaxParts", max_parts), element("IsTruncated", "true" if truncated else "false"),
        "<StorageClass>STANDARD</StorageClass>", entries,
    )
    await send_xml(send, 200, body, req.request_id)


async def list_uploads(app, req: S3Request, send) -> None:
    """ListMultipartUploads: S3's order (key as UTF-8 bytes, then upload ID), prefix, delimiter
    (CommonPrefixes), key-marker / upload-id-marker and encoding-type=url.

    The markers are compared, not looked up: a page resumes after (key-marker, upload-id-marker)
    whether or not that upload still exists (a clean-up that aborts what it lists and asks for
    the next page must not skip the other uploads of the marker's key). Upload IDs begin with
    their initiation time (Backend.create_multipart), so within a key this is also the
    initiation order S3 documents."""
    max_uploads = _int_param(req, "max-uploads", 1000, 1000)
    query = req.query
    enc = listing_encoder(query)
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    key_marker, id_marker = query.get("key-marker", ""), query.get("upload-id-marker", "")
    after = (key_marker.encode(), id_marker)
    uploads = sorted(await app.service.backend_for(req.bucket).list_uploads(req.bucket, prefix),
                     key=lambda u: (u.key.encode(), u.upload_id))
    entries, prefixes = [], []  # the page: uploads, and the common prefixes that stand for others
    truncated, last = False, None
    for upload in uploads:
        sort_key = (upload.key.encode(), upload.upload_id)
        if (sort_key <= after) if id_marker else (key_marker and sort_key[0] <= after[0]):
            continue
        rolled = None
        if delimiter:
            cut = upload.key.find(delimiter, len(prefix))
            if cut >= 0:
                rolled = upload.key[:cut + len(delimiter)]
                if rolled == (prefixes[-1] if prefixes else None) or (key_marker and rolled.encode() <= after[0]):
                    continue  # on this page already, or on the one before (the marker is that prefix)
        if len(entries) + len(prefixes) >= max_uploads:
            truncated = max_uploads > 0  # with max-uploads=0, no page follows (S3's max-keys=0 too)
            break
        if rolled is None:
            entries.append(upload)
            last = (upload.key, upload.upload_id)
        else:
            prefixes.append(rolled)
            last = (rolled, "")
    parts = [element("Bucket", req.bucket), element("KeyMarker", enc(key_marker)),
             element("UploadIdMarker", id_marker)]
    if truncated:
        parts += [element("NextKeyMarker", enc(last[0])), element("NextUploadIdMarker", last[1])]
    if delimiter:
        parts.append(element("Delimiter", enc(delimiter)))
    parts += [element("Prefix", enc(prefix)), element("MaxUploads", max_uploads),
              element("IsTruncated", "true" if truncated else "false")]
    parts += [f"<Upload>{element('Key', enc(u.key))}{element('UploadId', u.upload_id)}"
              f"{element('Initiated', iso8601(u.initiated))}<StorageClass>STANDARD</StorageClass></Upload>"
              for u in entries]
    parts += [f"<CommonPrefixes>{element('Prefix', enc(p))}</CommonPrefixes>" for p in prefixes]
    if enc is not keep_key:
        parts.append(element("EncodingType", "url"))
    await send_xml(send, 200, document("ListMultipartUploadsResult", *parts), req.request_id)
