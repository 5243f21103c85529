"""How object info, listings and errors travel between nodes (shared by the peer routes and the relay client)."""

from __future__ import annotations

import json

from .. import errors
from ..backend import BucketInfo, ListPage, ObjectInfo, ObjectMeta, PartInfo, UploadInfo

PREFIX = "/_cluster/v1"
INFO_HEADER = "x-cluster-info"  # the ObjectInfo as JSON (ASCII, so any metadata survives as a header)
ERROR_HEADER = "x-cluster-error"  # the gateway.errors class name of a failure
ERROR_FIELDS_HEADER = "x-cluster-error-fields"  # its detail fields, a JSON object (ASCII)
EXISTED_HEADER = "x-cluster-existed"  # DELETE: "1" when the object was there
SIZE_HEADER = "x-cluster-size"  # PUT: the body length when known
META_HEADER = "x-cluster-meta"  # PUT: the ObjectMeta as JSON
ALGORITHMS_HEADER = "x-cluster-checksum-algorithms"  # PUT: checksums to compute, comma separated
ETAG_HEADER = "x-cluster-etag"  # PUT: ETag to keep (multipart objects)
ENSURE_BUCKET_HEADER = "x-cluster-ensure-bucket"  # PUT: the bucket exists in the cluster; create it if missing here
SPAN_HEADER = "x-cluster-span"  # GET: "start-stop" of the bytes sent, stop exclusive


def is_older(copy: ObjectInfo, last_modified: float, etag: str) -> bool:
    """Whether ``copy`` is an older version than the one written at ``last_modified`` with ``etag``.

    Last writer wins by modification time; equal times are ordered by ETag so
    that two nodes comparing the same two versions always agree on which one
    stays (two concurrent overwrites never delete each other). The same
    version (same time and ETag) is not older.
    """
    return (copy.last_modified, copy.etag) < (last_modified, etag)


def info_to_json(info: ObjectInfo) -> dict:
    return {"key": info.key, "size": info.size, "etag": info.etag, "last_modified": info.last_modified,
            "meta": info.meta.to_json(), "checksums": dict(info.checksums)}


def info_from_json(data: dict) -> ObjectInfo:
    return ObjectInfo(data["key"], int(data["size"]), data["etag"], float(data["last_modified"]),
                      ObjectMeta.from_json(data.get("meta") or {}), dict(data.get("checksums") or {}))


# The relayed GET sends and reads the same info header for every read of an
# object: encode and decode it once per version instead of once per request.
# The encoded form is reused only for an equal ObjectInfo; ObjectInfo is frozen,
# so one decoded instance can be shared by every request that reads it.
_CACHE_LIMIT = 4096
_encoded: dict[tuple, tuple[ObjectInfo, bytes]] = {}
_decoded: dict[bytes | str, ObjectInfo] = {}


def info_header(info: ObjectInfo) -> bytes:
    version = (info.key, info.size, info.etag, info.last_modified)
    cached = _encoded.get(version)
    if cached is not None and cached[0] == info:  # equal in every field, metadata too
        return cached[1]
    header = json.dumps(info_to_json(info), separators=(",", ":")).encode()
    if len(_encoded) >= _CACHE_LIMIT:
        _encoded.clear()
    _encoded[version] = (info, header)
    return header


def info_from_header(header: str | bytes) -> ObjectInfo:
    """The ObjectInfo of an INFO_HEADER value; raise ValueError or KeyError when it is malformed."""
    info = _decoded.get(header)
    if info is None:
        info = info_from_json(json.loads(header))
        if len(_decoded) >= _CACHE_LIMIT:
            _decoded.clear()
        _decoded[header] = info
    return info


def page_to_json(page: ListPage, metadata: bool) -> dict:
    """``metadata``: whether the objects carry their stored meta (the listing backend's
    capabilities.listing_metadata), so that a node merging pages can answer ListObjectsV2's
    metadata=true only when every page did."""
    data = {"objects": [info_to_json(o) for o in page.objects], "common_prefixes": page.common_prefixes,
            "is_truncated": page.is_truncated, "next_marker": page.next_marker,
            "metadata": page.metadata if page.metadata is not None else metadata}
    if page.superseded:
        data["superseded"] = sorted(page.superseded)
    return data


def page_from_json(data: dict) -> ListPage:
    """A peer's page; one without "metadata" (a node of an earlier version) says nothing of its meta."""
    return ListPage([info_from_json(o) for o in data["objects"]], list(data["common_prefixes"]),
                    bool(data["is_truncated"]), data.get("next_marker", ""), data.get("metadata") is True,
                    frozenset(data.get("superseded") or ()))


def buckets_to_json(buckets: list[BucketInfo]) -> list[dict]:
    return [{"name": b.name, "created": b.created} for b in buckets]


def buckets_from_json(data: list[dict]) -> list[BucketInfo]:
    return [BucketInfo(b["name"], float(b["created"])) for b in data]


def upload_to_json(upload: UploadInfo) -> dict:
    return {"bucket": upload.bucket, "key": upload.key, "upload_id": upload.upload_id, "initiated": upload.initiated,
            "meta": upload.meta.to_json(), "checksum_algorithm": upload.checksum_algorithm}


def upload_from_json(data: dict) -> UploadInfo:
    return UploadInfo(data["bucket"], data["key"], data["upload_id"], float(data["initiated"]),
                      ObjectMeta.from_json(data.get("meta") or {}), data.get("checksum_algorithm") or None)


def uploads_from_json(data: list[dict]) -> list[UploadInfo]:
    return [upload_from_json(u) for u in data]


def part_to_json(part: PartInfo) -> dict:
    return {"part_number": part.part_number, "size": part.size, "etag": part.etag,
            "last_modified": part.last_modified, "checksums": dict(part.checksums)}


def part_from_json(data: dict) -> PartInfo:
    return PartInfo(int(data["part_number"]), int(data["size"]), data["etag"], float(data["last_modified"]),
                    dict(data.get("checksums") or {}))


def parts_from_json(data: list[dict]) -> list[PartInfo]:
    return [part_from_json(p) for p in data]


def error_from_peer(headers, message: str, status: int) -> errors.GatewayError:
    """Rebuild the error a peer raised from its answer's ``headers`` (NoSuchKey stays NoSuchKey), with
    the detail fields of its S3 error document (EntityTooSmall's MinSizeAllowed, InvalidPart's
    PartNumber: a completion forwarded to the node holding the upload lost them)."""
    cls = getattr(errors, headers.get(ERROR_HEADER) or "", None)
    if isinstance(cls, type) and issubclass(cls, errors.GatewayError):
        return cls(message or None, **error_fields(headers.get(ERROR_FIELDS_HEADER)))
    return errors.ServiceUnavailable(f"a peer node failed with HTTP {status}: {message[:200]}")


def error_fields_header(exc: errors.GatewayError) -> list[tuple[bytes, bytes]]:
    """The header that carries ``exc``'s detail fields to the peer that asked (none without fields)."""
    if not exc.fields:
        return []
    return [(ERROR_FIELDS_HEADER.encode(), json.dumps({k: str(v) for k, v in exc.fields.items()}).encode())]


def error_fields(value: str | None) -> dict[str, str]:
    try:
        fields = json.loads(value) if value else {}
    except ValueError:
        return {}
    if not isinstance(fields, dict):
        return {}
    return {str(k): str(v) for k, v in fields.items() if str(k).isidentifier()}
