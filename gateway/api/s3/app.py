"""The S3 ASGI app: authenticate, dispatch by method and sub-resource, map errors.

Written against raw ASGI rather than FastAPI routes: S3 dispatches on query
sub-resources (?uploads, ?delete, ?list-type=2), not paths, and FastAPI's
routing and validation cost about 60 µs a request, more than the whole lean
GET path (see docs/architecture.md and docs/performance.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from urllib.parse import quote

from ... import errors
from ...backend import Backend, ObjectReader
from ...cluster.forward import Forward
from ...cluster.sometimes import Sometimes, since
from ...eager import NeedsTask, stray_cancellation
from ..access_log import REQUEST_ID
from . import buckets, multipart, objects
from .request import S3Request, check_bucket_name, check_path_utf8, check_query_utf8
from .sigv4 import Authenticator
from .xml import error_document

log = logging.getLogger("gateway.s3")



def _refuse_form_upload(req: S3Request) -> None:
    """POST Object (a browser form upload, boto3's generate_presigned_post) signs with fields of its
    form, not a header or the query: refused before authentication, which would call a correctly
    signed form "Access Denied" and send its user after the credentials."""
    if (req.method == "POST" and req.bucket and not req.key
            and req.headers.get("content-type", "").lower().startswith("multipart/form-data")):
        raise errors.NotImplementedError_(
            "POST Object (a browser form upload, generate_presigned_post) is not implemented; nothing was "
            "stored. Upload with PutObject, or a presigned PUT URL (generate_presigned_url('put_object')).")

class ResponseAborted(Exception):
    """A response that broke off after it had started, already logged here: raised only so that the
    server ends the connection (ASGI has no other way to say the body is incomplete)."""


class QuietAborts(logging.Filter):
    """Keeps ResponseAborted out of uvicorn's "Exception in ASGI application" traceback: a backend
    that failed in the middle of a streamed GET (a store stopped) is one warning, not a page."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseAborted))


QUIET_ABORTS = QuietAborts()  # one instance: adding it again (several apps in one process) adds nothing

# Sub-resources S3 has that this gateway does not implement: a clear 501, not a wrong answer.
UNSUPPORTED = {
    "acl", "tagging", "policy", "cors", "lifecycle", "website", "encryption", "logging", "notification",
    "replication", "object-lock", "retention", "legal-hold", "torrent", "restore", "select", "accelerate",
    "analytics", "inventory", "metrics", "ownershipControls", "publicAccessBlock", "requestPayment",
    "intelligent-tiering", "attributes", "versions", "policyStatus",
}
# Every other query parameter this gateway reads (presigned X-Amz-* ones aside). S3 routes a name
# it does not list to an operation of its own (?annotation, ?renameObject, ?metadataTable, ... a few
# more each year): served as the plain PUT, DELETE or CreateBucket such a request would delete or
# overwrite what it names. So a write with any other parameter is refused with 501, changing
# nothing; a GET or HEAD only with a valueless one (a sub-resource's shape), since S3 ignores
# other names there (`?v=2`, a cache-buster) and so does this gateway (docs/s3-compatibility.md).
KNOWN_PARAMETERS = frozenset({
    "uploads", "uploadId", "partNumber", "versionId", "delete", "location", "versioning", "x-id",
    "list-type", "prefix", "delimiter", "marker", "max-keys", "start-after", "continuation-token",
    "fetch-owner", "encoding-type", "metadata", "key-marker", "upload-id-marker", "max-uploads",
    "max-parts", "part-number-marker", "max-buckets", "bucket-region",
    "response-content-type", "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding",
    "AWSAccessKeyId", "Signature", "Expires",  # a SigV2 presigned URL, with the signed headers botocore
    "content-type", "content-md5",            # copies into it (x-amz-* too); the request's headers count
})
# A GET or HEAD of an object whose query names none of these (presigned X-Amz-* and response-*
# parameters are fine) is a plain read: _read_object serves it without the general dispatch.
# With any of them the request takes the general path, which answers it (or refuses it) as before.
_READS = frozenset({"GET", "HEAD", "OPTIONS"})  # methods that change nothing (a removed node still serves them)
_NOT_A_PLAIN_READ = frozenset(UNSUPPORTED | {"versionId", "partNumber", "uploadId"})


def unknown_parameter(query: dict[str, str], method: str) -> str | None:
    """The first query parameter of ``query`` that the request must be refused for (KNOWN_PARAMETERS)."""
    reading = method in ("GET", "HEAD")
    for name, value in query.items():
        if name not in KNOWN_PARAMETERS and not name[:6].lower() == "x-amz-" and not (reading and value):
            return name
    return None
# What a node id may keep as it is in the x-amz-id-2 header (anything else is percent-encoded there).
_HOST_ID_SAFE = ":/@[]!$&'()*+,;=-._~"


class S3App:
    def __init__(self, service, settings):
        self.service = service
        self.settings = settings
        self.auth = Authenticator(settings.all_credentials(), allow_anonymous=settings.allow_anonymous,
                                  max_skew_seconds=settings.max_clock_skew)
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex().upper()
        self._unavailable_said = Sometimes(period=10.0)  # 503s, by error code: error_response

    def _dispatch(self, req: S3Request):
        method, query = req.method, req.query
        if not req.bucket:
            if method == "GET":
                return buckets.list_buckets
            raise errors.MethodNotAllowed()
        unsupported = UNSUPPORTED.intersection(query)
        if unsupported:
            raise errors.NotImplementedError_(f"The ?{min(unsupported)} sub-resource is not implemented.")
        unknown = unknown_parameter(query, method) if query else None
        if unknown is not None:
            raise errors.NotImplementedError_(
                f"The ?{unknown} parameter names an S3 operation this gateway does not implement; "
                "nothing was changed.")
        if not req.key:
            if method == "GET":
                if "uploads" in query:
                    return multipart.list_uploads
                if "location" in query:
                    return buckets.bucket_location
                if "versioning" in query:
                    return buckets.bucket_versioning
                return buckets.list_objects
            if method == "PUT":
                if "versioning" in query:
                    raise errors.NotImplementedError_("Bucket versioning is not implemented.")
                return buckets.create_bucket
            if method == "HEAD":
                return buckets.head_bucket
            if method == "DELETE":
                return buckets.delete_bucket
            if method == "POST" and "delete" in query:
                return buckets.delete_objects
            raise errors.MethodNotAllowed()
        if query.get("versionId", "null") != "null":
            # Buckets are never versioned: "null" names the only version; any other id would get a wrong answer.
            raise errors.NotImplementedError_("Object versions are not implemented; only versionId=null exists.")
        if method in ("GET", "HEAD") and "partNumber" in query and "uploadId" not in query:
            # Part boundaries are not kept once an upload is complete; a whole object would be a wrong answer.
            raise errors.NotImplementedError_("GET and HEAD with ?partNumber are not implemented; use Range.")
        if method == "GET":
            return multipart.list_parts if "uploadId" in query else objects.get_object
        if method == "HEAD":
            return _head_object
        if method == "PUT":
            return multipart.upload_part if "uploadId" in query else objects.put_object
        if method == "DELETE":
            return multipart.abort_upload if "uploadId" in query else objects.delete_object
        if method == "POST":
            if "uploads" in query:
                return multipart.create_upload
            if "uploadId" in query:
                return multipart.complete_upload
        raise errors.MethodNotAllowed()

    def new_request(self, scope, receive=None) -> S3Request:
        return S3Request.from_scope(scope, receive, f"{self._id_prefix}{next(self._ids):010X}")

    @staticmethod
    def is_plain_read(req: S3Request) -> bool:
        """A GET or HEAD of an object without a body or a sub-resource: what answer_read serves."""
        headers = req.headers
        return (req.method in ("GET", "HEAD") and bool(req.key) and bool(req.bucket)
                and headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
                and (not req.query or (_NOT_A_PLAIN_READ.isdisjoint(req.query)
                                       and unknown_parameter(req.query, req.method) is None)))

    async def __call__(self, scope, receive, send) -> None:
        req = self.new_request(scope, receive)
        request_id = req.request_id
        REQUEST_ID.set(request_id)  # for the access line uvicorn logs from this task (api/access_log.py)
        started = False
        headers = req.headers
        if self.is_plain_read(req):
            await self._read_object(req, send)
            return
        # Whether the request body has been read to the end. An answer given before that (an error,
        # or a refusal after Expect: 100-continue, when the client never sends the body) must close
        # the connection: left-over body bytes would otherwise be parsed as the next request.
        body_pending = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if body_pending:
            async def tracking_receive():
                nonlocal body_pending
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    body_pending = False
                return message

            req.receive = tracking_receive

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if body_pending:
                    message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
            await send(message)

        try:
            _refuse_form_upload(req)
            req.auth = self.auth.authenticate(req.method, req.raw_path, req.query_string, req.headers,
                                              req.query_pairs)
            req.access_key = req.auth.access_key
            check_path_utf8(req)
            check_query_utf8(req)
            if req.bucket:
                check_bucket_name(req.bucket)
            if req.method not in _READS:
                self.service.check_writes_taken()
            handler = self._dispatch(req)
            await handler(self, req, tracking_send)
        except errors.GatewayError as exc:
            if started:
                log.warning("request %s failed after the response started: %s", request_id, exc.message)
                raise
            await self._send_error(req, tracking_send, exc)
        except (Exception, asyncio.CancelledError) as exc:
            # A backend's own CancelledError is an internal error like any other (it was a plain-text
            # 500 from the server, without the S3 error document or request id).
            if isinstance(exc, asyncio.CancelledError) and not stray_cancellation():
                raise  # this request was cancelled (its client went away): nothing to answer
            error = self.unexpected(req, exc)
            if started:
                raise
            await self._send_error(req, tracking_send, error)

    async def answer_read(self, req: S3Request, forward: bool = False,
                          own: Backend | None = None) -> tuple[int, list, ObjectReader | bytes | None] | Forward:
        """The fast path: a plain read (is_plain_read) as (status, headers, body), ready to send: an
        open ObjectReader (headers carry its content-length; whoever sends it closes it) or None
        for a HEAD, or, for an error, the bytes of its S3 XML document (empty for HEAD and 304).
        The same steps and answers as __call__ + _dispatch + get_object would give, without what
        cannot apply (no body to track, no dispatch). Served
        over ASGI by _read_object, and below ASGI by gateway/api/protocol.py (docs/performance.md).

        ``forward``: the caller can pass the read through to a peer: on a cluster node's local miss
        of an object the location cache places on a peer, the answer is a Forward (cluster/forward.py).
        ``own``: this node's own storage, for a peer's read of it (the S3 read route, api/peer.py):
        the cluster signature was checked and the client authenticated by that peer; nothing is relayed.
        """
        try:
            backend = own
            if backend is None:
                backend = self.service.backend_for(req.bucket)
                forward = forward and backend.forwards_reads
                req.auth = auth = self.auth.authenticate(req.method, req.raw_path, req.query_string, req.headers,
                                                         req.query_pairs)
                req.access_key = auth.access_key
            if "\ufffd" in req.key:  # percent-encoded bytes that may not be UTF-8 (a bad bucket name fails below)
                check_path_utf8(req)
            check_bucket_name(req.bucket)
            answer = await objects.read_object(self, req, req.method == "HEAD", backend, forward)
            if answer.__class__ is Forward:
                answer.req = req
            return answer
        except errors.GatewayError as exc:
            return self.error_response(req, exc)
        except NeedsTask:
            raise  # started eagerly, and it must wait for something that needs a task: see gateway/eager.py
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not stray_cancellation():
                raise
            return self.error_response(req, self.unexpected(req, exc))

    def unexpected(self, req: S3Request, exc: Exception) -> errors.GatewayError:
        """The answer to an exception no handler expected: a full disk (ENOSPC, EDQUOT) is 507
        InsufficientStorage and a failed one (EIO, EROFS, ESTALE) 503, each logged once as any 5xx
        answer is (error_response); anything else 500 InternalError, logged here with its traceback."""
        known = errors.storage_error(exc)
        if known is not None:
            return known
        log.error("request %s (%s %s) failed", req.request_id, req.method, req.raw_path, exc_info=exc)
        return errors.InternalError(
            f"We encountered an internal error (request id {req.request_id}); it is in the server log.")

    async def _read_object(self, req: S3Request, send) -> None:
        status, headers, body = await self.answer_read(req)
        if isinstance(body, bytes):  # an error
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        # From here on the response has started (or is starting): an error can only end the connection.
        try:
            await objects.send_object(send, status, headers, body)
        except errors.GatewayError as exc:
            log.warning("request %s failed after the response started: %s", req.request_id, exc.message)
            raise ResponseAborted(exc.message) from exc
        except Exception as exc:
            log.exception("request %s (%s %s) failed", req.request_id, req.method, req.raw_path)
            raise ResponseAborted(str(exc)) from exc

    @property
    def host_id(self) -> str:
        """This node's name in error answers (S3's HostId and ``x-amz-id-2``; boto3 shows it as
        ResponseMetadata["HostId"]): its cluster node id, or host:port of a single gateway. With it
        an operator knows which node's log holds an error's request id."""
        cluster = getattr(self.service, "cluster", None)
        if cluster is not None:
            return cluster.node_id
        return f"{socket.gethostname()}:{self.settings.port}"

    def error_response(self, req: S3Request, exc: errors.GatewayError) -> tuple[int, list, bytes]:
        """An error's (status, headers, body): an S3 XML document; empty for HEAD and 304."""
        host_id = self.host_id
        headers = [(b"x-amz-request-id", req.request_id.encode()),
                   (b"x-amz-id-2", quote(host_id, safe=_HOST_ID_SAFE).encode())]
        headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
        if exc.status == 501:  # the client asked for a feature the gateway does not have: not a fault here
            log.info("request %s: %s %s", req.request_id, exc.code, exc.message)
        elif exc.status == 503:
            # Not a fault of this node (a peer down, a full store, a registry outage: each logged where it
            # is found), and one per request for as long as it lasts: now and then, with the count.
            count = self._unavailable_said.due(exc.code)
            if count is not None:
                log.warning("request %s: %s %s%s", req.request_id, exc.code, exc.message, since(count))
        elif exc.status >= 500:
            log.error("request %s: %s %s", req.request_id, exc.code, exc.message)
        if exc.status == 304 or req.method == "HEAD":
            return exc.status, headers, b""  # no body: the status says it all
        body = error_document(exc, req.raw_path, req.request_id, host_id)
        headers.append((b"content-type", b"application/xml"))
        headers.append((b"content-length", str(len(body)).encode()))
        return exc.status, headers, body

    async def _send_error(self, req: S3Request, send, exc: errors.GatewayError) -> None:
        status, headers, body = self.error_response(req, exc)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _head_object(app, req, send):
    await objects.get_object(app, req, send, head=True)
