"""Internal peer routes, /_cluster/v1/...: serve this node's own storage to other cluster nodes.

They never relay: a request that arrives here is answered from local
storage or not at all, so loops and request storms cannot happen by
construction. Every request must carry a valid cluster signature
(gateway/cluster/peer_auth.py); S3 credentials are not accepted here, and a
peer signature is not accepted on the S3 routes.

Raw ASGI, like the S3 app: the relayed GET is on the hot path. The S3 read
route (``/_cluster/v1/s3/<bucket>/<key>``) answers a client's plain read that
another node passes through (gateway/cluster/forward.py) with this node's S3
answer, from its own storage only.

Also here: the ``/_admin/cluster`` router (this node's live view of its
peers, de-prioritized ones and the placement counts).
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import errors
from ..backend import MAX_PARTS, ObjectMeta, ObjectReader, require_completion_checksums
from ..checksums import ALGORITHMS
from ..cluster import forward, wire
from ..cluster.peer_auth import HEADER, NODE_HEADER, PeerAuthError
from ..cluster.versions import supersede_local
from ..payload import Payload
from ..services.cluster_nodes.unreachable import catching_up_error
from .s3.objects import send_object
from .s3.request import parse_decimal, parse_range, receive_body

log = logging.getLogger("gateway.cluster.peer")
# The request headers the peer routes read; the others are not decoded at all.
_WANTED = frozenset(h.encode() for h in (HEADER, NODE_HEADER, "range", wire.ENSURE_BUCKET_HEADER, wire.SIZE_HEADER,
                                         wire.ALGORITHMS_HEADER, wire.ETAG_HEADER, wire.META_HEADER))
_AUTH = HEADER.encode()
_NODE = NODE_HEADER.encode()
_INFO = wire.INFO_HEADER.encode()
_SPAN = wire.SPAN_HEADER.encode()
_OBJECTS = wire.PREFIX + "/objects/"
_LOCATIONS = wire.PREFIX + "/locations/"
_S3_READ = forward.S3_READ_ROUTE + "/"
_S3_READ_RAW = _S3_READ.encode()


class PeerApp:
    """:param service: the node's ObjectService (uses ``local_backend_for`` and ``cluster``);
    :param s3: the node's S3App, which answers the S3 read route (cluster/forward.py)."""

    def __init__(self, service, s3):
        self.service = service
        self.s3 = s3

    async def __call__(self, scope, receive, send) -> None:
        if scope["path"].startswith(_S3_READ) and scope["method"] in ("GET", "HEAD"):
            # The S3 read route on a backend whose reads need a task (else answered below ASGI).
            status, headers, body = await self.answer_s3_read(scope)
            if isinstance(body, bytes):  # an error, content-length included
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            else:
                await send_object(send, status, headers, body)  # closes the reader
            return
        try:
            await self._handle(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer the peer understands
            status, headers, body = self._error_answer(scope, exc)
            await _send(send, status, headers, body)

    def _error_answer(self, scope, exc: Exception) -> tuple[int, list, bytes]:
        cluster = self.service.cluster  # None on a stand-alone gateway: every peer route is refused there
        known = errors.storage_error(exc, f"the storage of cluster node {cluster.node_id}" if cluster is not None
                                     else "this gateway's storage")
        if known is not None:  # the sender answers its client 507 or 503 and places no writes here a while
            log.error("peer request %s %s: %s", scope["method"], scope["path"], known.message)
            exc = known
        if isinstance(exc, errors.GatewayError):
            return (exc.status, [(wire.ERROR_HEADER.encode(), type(exc).__name__.encode()),
                                 *wire.error_fields_header(exc)], exc.message.encode())
        if isinstance(exc, PeerAuthError):
            log.warning("refused a peer request from %s: %s", scope.get("client"), exc)
            return 403, [(wire.ERROR_HEADER.encode(), b"AccessDenied")], str(exc).encode()
        log.error("peer request %s %s failed", scope["method"], scope["path"], exc_info=exc)
        return 500, [(wire.ERROR_HEADER.encode(), b"InternalError")], b"internal error; see the log"

    def fast_answer(self, scope):
        """For a GET or HEAD of an object (the relay's hot path) on a local backend whose reads can
        start outside a task (Backend.eager_reads), answer_read's or answer_s3_read's coroutine;
        else None."""
        if scope["method"] not in ("GET", "HEAD"):
            return None
        path = scope["path"]
        if path.startswith(_S3_READ):
            backend = self.service.local_backend_for(path[len(_S3_READ):].partition("/")[0])
            return self.answer_s3_read(scope, backend) if backend is not None and backend.eager_reads else None
        if path.startswith(_OBJECTS):
            backend = self.service.local_backend_for(path[len(_OBJECTS):].partition("/")[0])
            return self.answer_read(scope) if backend is not None and backend.eager_reads else None
        return None

    async def answer_s3_read(self, scope, own=None) -> tuple[int, list, ObjectReader | bytes | None]:
        """A client's S3 GET or HEAD passed through by the node it asked (cluster/forward.py): the
        S3 answer from this node's own storage (``own``, when the caller looked it up), as this node
        would give it to that client (the other node authenticated the client; this one checks the
        cluster signature)."""
        try:
            if not scope.get("raw_path", b"").startswith(_S3_READ_RAW):
                raise errors.InvalidRequest(f"peer S3 reads are {_S3_READ}<bucket>/<key>, not percent-encoded")
            self._check_signature(scope)
            if own is None:
                own = self._local(scope["path"][len(_S3_READ):].partition("/")[0])
            self._refuse_stale_read()
        except Exception as exc:  # noqa: BLE001 - refused: the other node reads the usual way, and says why
            status, headers, body = self._error_answer(scope, exc)
            headers.append((b"content-length", str(len(body)).encode()))
            return status, headers, b"" if scope["method"] == "HEAD" else body
        # The S3 request as the client sent it: the route's prefix off the path.
        cut = len(forward.S3_READ_ROUTE)
        s3_scope = {**scope, "path": scope["path"][cut:], "raw_path": scope["raw_path"][cut:]}
        return await self.s3.answer_read(self.s3.new_request(s3_scope), own=own)

    async def answer_read(self, scope) -> tuple[int, list, ObjectReader | bytes | None]:
        """An object GET or HEAD (fast_answer) as (status, headers, body): an open reader (headers
        carry its content-length), None for HEAD, or an error's bytes. Served below ASGI by
        gateway/api/protocol.py, like the S3 app's plain reads."""
        try:
            headers = self._authenticate(scope)
            bucket, key = self._object_name(scope)
            answer = await self._read(scope["method"], bucket, key, headers)
        except Exception as exc:  # noqa: BLE001
            status, headers, body = self._error_answer(scope, exc)
            headers.append((b"content-length", str(len(body)).encode()))
            return status, headers, b"" if scope["method"] == "HEAD" else body
        return answer

    def _authenticate(self, scope) -> dict[str, str]:
        """Check the cluster signature; return the request headers the routes read."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}
        self._verify(scope, headers.get(HEADER), headers.get(NODE_HEADER))
        return headers

    def _check_signature(self, scope) -> None:
        """_authenticate for the S3 read route, which reads no other header of its own: only the two
        of the signature are looked for and decoded (a passed-through read's route, the hot path)."""
        signature = node = None
        for name, value in scope["headers"]:
            if name == _AUTH:
                signature = value.decode("latin-1")
            elif name == _NODE:
                node = value.decode("latin-1")
        self._verify(scope, signature, node)

    def _verify(self, scope, signature: str | None, node: str | None) -> None:
        cluster = self.service.cluster
        if cluster is None:
            raise errors.NoSuchKey("This node is not part of a cluster.")
        raw = scope.get("raw_path")
        target = raw.decode("latin-1") if raw is not None else scope["path"]
        query = scope.get("query_string")
        if query:
            target += "?" + query.decode("latin-1")
        caller = cluster.signer.verify(scope["method"], target, signature, node)
        scope["cluster_peer"] = caller  # a node of the cluster asks (protocol.py: its answers are not cut as stalled)
        if caller not in cluster.nodes:
            cluster.request_reload()  # a node that joined after our last read of the registry (it announces itself)

    @staticmethod
    def _object_name(scope) -> tuple[str, str]:
        bucket, _, key = scope["path"][len(_OBJECTS):].partition("/")
        if not bucket or not key:
            raise errors.InvalidRequest("peer object paths are /objects/<bucket>/<key>")
        return bucket, key

    async def _read(self, method: str, bucket: str, key: str, headers: dict) -> tuple[int, list, ObjectReader | None]:
        backend = self._local(bucket)
        self._refuse_stale_read()
        try:
            if method == "HEAD":
                info = await backend.head(bucket, key)
                return 200, [(_INFO, wire.info_header(info)), (b"content-length", b"0")], None
            reader = await backend.get(bucket, key, parse_range(headers.get("range")))
        except errors.NoSuchKey:
            # The asking node may cache this miss: a write of the key here tells it first (watchers.py).
            self.service.cluster.watchers.note(bucket, key, headers.get(NODE_HEADER, ""))
            raise
        try:
            out = [(_INFO, wire.info_header(reader.info)), (_SPAN, f"{reader.start}-{reader.stop}".encode()),
                   (b"content-length", str(reader.length).encode())]
        except BaseException:
            reader.close()
            raise
        return 200, out, reader

    async def _handle(self, scope, receive, send) -> None:
        headers = self._authenticate(scope)
        method = scope["method"]
        path = scope["path"][len(wire.PREFIX):]
        if path.startswith("/objects/") and method in ("GET", "HEAD"):
            status, out, reader = await self._read(method, *self._object_name(scope), headers)
            await send_object(send, status, out, reader)  # closes the reader
        elif path.startswith("/objects/"):
            query = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
            await self._object(method, *self._object_name(scope), headers, query, receive, send)
        elif path.startswith("/list/"):
            backend = self._local(path[len("/list/"):])
            query = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
            max_keys = parse_decimal(query.get("max-keys", "1000"))
            if max_keys is None:
                raise errors.InvalidArgument("max-keys must be a non-negative integer")
            bucket, prefix, delimiter, start_after = (path[len("/list/"):], query.get("prefix", ""),
                                                      query.get("delimiter", ""), query.get("start-after", ""))
            page = await backend.list(bucket, prefix, delimiter, start_after, max_keys)
            if page.metadata is None:
                page.metadata = backend.capabilities.listing_metadata
            page = self.service.cluster.superseded.add_to(bucket, page, prefix, delimiter, start_after, max_keys)
            await _send_json(send, wire.page_to_json(page, backend.capabilities.listing_metadata))
        elif path.startswith("/uploads/"):
            query = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
            await self._upload(method, path[len("/uploads/"):], headers, query, receive, send)
        elif path.startswith("/locations/") and method == "DELETE":
            bucket, slash, key = scope["path"][len(_LOCATIONS):].partition("/")
            if not bucket or (slash and not key):
                raise errors.InvalidRequest("peer location paths are /locations/<bucket>[/<key>]")
            if key:  # a node stored this key, which this one asked it for in vain: a cached miss goes (watchers.py)
                self.service.cluster.locations.forget(bucket, key)
            else:  # the bucket was deleted: a proxy stops trusting that it exists (ProxyNode._known_bucket)
                forget = getattr(self.service.backend_for(bucket), "bucket_deleted", None)
                if forget is not None:
                    forget(bucket)
            await _send(send, 204, [], b"")
        elif path.startswith("/buckets/"):
            await self._bucket(method, path[len("/buckets/"):], send)
        elif path == "/repair" or path.startswith("/repair/"):
            query = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
            await self._repair(method, path[len("/repair/"):], query, send)
        elif path == "/buckets" and method == "GET":
            buckets = [b for b in await self._local("").list_buckets() if not b.name.startswith(".")]
            await _send_json(send, wire.buckets_to_json(buckets))
        elif path == "/ping":
            cluster = self.service.cluster  # set: _authenticate refuses a node outside a cluster
            said = dict(parse_qsl(scope.get("query_string", b"").decode()))
            if said.get("address"):
                cluster.announced(headers.get(NODE_HEADER, ""), said["address"], said.get("role"))
            # Whether this node takes plain-HTTP peers: a node starting on http:// is refused when not.
            await _send_json(send, {"node_id": cluster.node_id, "role": cluster.role,
                                    "plain_http_peers": cluster.settings.insecure_peers})
        else:
            raise errors.MethodNotAllowed(f"no peer route {method} {scope['path']}")

    def _noting_store(self, backend):
        """Around a peer's write to this node's store: found full or failed, no writes are placed here a
        while (cluster/unwritable.py; published with the heartbeat)."""
        cluster = self.service.cluster
        return cluster.noting_store(cluster.node_id, backend.name)

    def _local(self, bucket: str):
        backend = self.service.local_backend_for(bucket)
        if backend is None:
            raise errors.ServiceUnavailable("This node is a proxy and stores nothing; ask a storing node.")
        return backend

    async def _object(self, method: str, bucket: str, key: str, headers: dict, query: dict, receive,
                      send) -> None:
        backend = self._local(bucket)
        if method == "PUT":
            self._refuse_stale_write()
            size, algorithms, meta = _put_headers(headers)
            payload = Payload(receive_body(receive), expected_size=size, checksum_algorithms=algorithms,
                              etag=headers.get(wire.ETAG_HEADER) or None)
            with self._noting_store(backend):  # the bucket's check too: an unmounted share fails there first
                if headers.get(wire.ENSURE_BUCKET_HEADER) == "1":
                    try:
                        await backend.head_bucket(bucket)
                    except errors.NoSuchBucket:
                        try:
                            await backend.create_bucket(bucket)
                        except errors.BucketAlreadyOwnedByYou:
                            pass
                info = await backend.put(bucket, key, payload, meta)
            self.service.cluster.locations.forget(bucket, key)
            await self.service.cluster.tell_watchers(bucket, key)  # before the write is answered
            await _send_json(send, wire.info_to_json(info))
        elif method == "DELETE" and "if-older-than" in query:
            # Another node stored a newer version: drop ours unless it is the newer one (docs/cluster.md).
            try:
                newer = float(query["if-older-than"])
            except ValueError:
                raise errors.InvalidArgument("if-older-than must be a modification time in seconds") from None
            size = parse_decimal(query.get("size", ""))  # the newer version's (None from an older node)
            kept = await supersede_local(backend, bucket, key, newer, query.get("etag", ""),
                                         own_storage=query.get("newer-on") == "own-storage",
                                         superseded=self.service.cluster.superseded, size=size)
            self.service.cluster.locations.forget(bucket, key)
            # Our copy is the newer one (two overwrites raced): say so, and the writer drops its own.
            out = [(wire.INFO_HEADER.encode(), wire.info_header(kept))] if kept is not None else []
            await _send(send, 204, out, b"")
        elif method == "DELETE":
            if backend.capabilities.shared:
                # Sent before this node stood still, it would delete the share's file, which may be a
                # newer version written through another node since its sender gave up (a 503 to it).
                self._refuse_stale_write()
            existed = await backend.exists(bucket, key)
            await backend.delete(bucket, key)
            self.service.cluster.superseded.forget(bucket, key)
            self.service.cluster.locations.forget(bucket, key)
            await _send(send, 204, [(wire.EXISTED_HEADER.encode(), b"1" if existed else b"0")], b"")
        else:
            raise errors.MethodNotAllowed()

    async def _upload(self, method: str, path: str, headers: dict, query: dict, receive, send) -> None:
        """The multipart uploads this node holds, for a node that does not hold one (it forwards
        UploadPart, ListParts, Complete and Abort to the holder, and merges every node's uploads).

        /uploads/<bucket>                        GET: the uploads of the bucket here (prefix=)
        /uploads/<bucket>/<upload id>            GET: the upload; POST: complete it; DELETE: abort it
        /uploads/<bucket>/<upload id>/parts      GET: its parts
        /uploads/<bucket>/<upload id>/parts/<n>  PUT: store a part (the body streams)

        Served from this node's own storage: never forwarded again. ``key=`` names the upload's key
        (NoSuchUpload for another key, as on the S3 routes).
        """
        names = path.split("/")
        bucket = names[0]
        backend = self._local(bucket)
        key = query.get("key")
        if len(names) == 1 and method == "GET":
            uploads = await backend.list_uploads(bucket, query.get("prefix", ""))
            await _send_json(send, [wire.upload_to_json(u) for u in uploads])
            return
        if len(names) < 2 or not names[1] or (key is None and method != "GET") or (len(names) > 2 and key is None):
            raise errors.InvalidRequest("peer upload paths are /uploads/<bucket>/<upload id>[/parts[/<n>]]?key=")
        upload_id = names[1]
        if len(names) == 2 and method == "GET":
            await _send_json(send, wire.upload_to_json(await backend.get_upload(bucket, upload_id, key)))
        elif len(names) == 2 and method == "DELETE":
            await backend.abort_multipart(bucket, key, upload_id)
            await _send(send, 204, [], b"")
        elif len(names) == 2 and method == "POST":
            self._refuse_stale_write()
            try:
                document = json.loads(b"".join([chunk async for chunk in receive_body(receive)]))
                parts = [(int(number), str(etag)) for number, etag in document["parts"]]
                expected = {str(a): str(v) for a, v in (document.get("expected_checksums") or {}).items()}
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.InvalidArgument(f"a peer's completion document is malformed: {exc}") from None
            node = self.service.backend_for(bucket)
            if hasattr(node, "complete_here"):  # the cluster node: it retires older copies of the key too
                info = await node.complete_here(bucket, key, upload_id, parts, expected or None)
            else:
                if expected:
                    require_completion_checksums(backend)
                with self._noting_store(backend):
                    info = await backend.complete_multipart(bucket, key, upload_id, parts,
                                                            **({"expected_checksums": expected} if expected else {}))
            self.service.cluster.locations.forget(bucket, key)
            await _send_json(send, wire.info_to_json(info))
        elif len(names) == 3 and names[2] == "parts" and method == "GET":
            parts = await backend.list_parts(bucket, key, upload_id)
            await _send_json(send, [wire.part_to_json(p) for p in parts])
        elif len(names) == 4 and names[2] == "parts" and method == "PUT":
            self._refuse_stale_write()
            number = parse_decimal(names[3])
            if number is None or not 1 <= number <= MAX_PARTS:
                raise errors.InvalidArgument(f"part number {names[3]!r} is not between 1 and {MAX_PARTS}")
            size, algorithms, _ = _put_headers(headers)
            payload = Payload(receive_body(receive), expected_size=size, checksum_algorithms=algorithms)
            with self._noting_store(backend):
                part = await backend.upload_part(bucket, key, upload_id, number, payload)
            await _send_json(send, wire.part_to_json(part))
        else:
            raise errors.MethodNotAllowed(f"no peer upload route {method} /uploads/{path}")

    def _refuse_stale_write(self) -> None:
        """Refuse a peer PUT just after this process stood still past the peer timeout (cluster/stall.py).

        A node that was frozen (SIGSTOP, a paused VM) finds the PUTs sent meanwhile in its sockets
        when it runs again. Their senders timed out and answered their clients 503; the client may
        have written the key again elsewhere since, and stored now, the old request would get a
        newer modification time than that acknowledged write and replace it (last writer wins).
        The sender treats this 503 as any unreachable peer: it tries another node or says 503.
        """
        if self.service.cluster.stalls.stalled_recently():
            raise errors.NodeCatchingUp(
                "This node has just run again after standing still for longer than the peer timeout: it takes "
                "no peer writes for a moment, since their senders have given up on the ones sent meanwhile.")

    def _refuse_stale_read(self) -> None:
        """A peer's read of this node's copy just after it stood still: a 503, as for its clients
        (Cluster.reads_held); the peer asks the other nodes, which may hold the newer version."""
        if self.service.cluster.reads_held():
            raise catching_up_error()

    async def _bucket(self, method: str, bucket: str, send) -> None:
        backend = self._local(bucket)
        if method == "PUT":
            await backend.create_bucket(bucket)
        elif method == "DELETE":
            await backend.delete_bucket(bucket)
        elif method == "HEAD":
            await backend.head_bucket(bucket)
        else:
            raise errors.MethodNotAllowed()
        await _send(send, 204, [], b"")


    async def _repair(self, method: str, bucket: str, query: dict, send) -> None:
        """`gateway cluster repair` (docs/cluster.md, "Repair"): GET /repair, every bucket's name;
        POST /repair/<bucket>?start-after=&max-keys=&dry-run=1, one page of the walk (repair.py)."""
        if method == "GET" and not bucket:
            # Not whole, even with strict_listings: the walk names the nodes it could not check.
            buckets = await self.service.list_buckets(whole=False)
            await _send_json(send, {"buckets": [b.name for b in buckets]})
            return
        if method != "POST" or not bucket:
            raise errors.MethodNotAllowed(f"the repair route is GET /repair or POST /repair/<bucket>, not {method}")
        backend = self.service.backend_for(bucket)
        repair_page = getattr(backend, "repair_page", None)
        if repair_page is None:
            raise errors.InvalidRequest(f"bucket {bucket!r} is on a backend this node does not relay for")
        max_keys = parse_decimal(query.get("max-keys", "1000"))
        if max_keys is None or not 1 <= max_keys <= 1000:
            raise errors.InvalidArgument("max-keys must be a whole number from 1 to 1000")
        await _send_json(send, await repair_page(bucket, query.get("start-after", ""), max_keys,
                                                 dry_run=query.get("dry-run") == "1"))


def _put_headers(headers: dict) -> tuple[int | None, tuple[str, ...], ObjectMeta]:
    """A peer PUT's declared size, checksum algorithms and metadata; InvalidArgument if malformed
    (another node sent them: a 400 says which, where a 500 would only say something failed)."""
    size = headers.get(wire.SIZE_HEADER)
    expected = parse_decimal(size) if size else None
    if size and expected is None:
        raise errors.InvalidArgument(f"{wire.SIZE_HEADER} must be a byte count")
    algorithms = tuple(a for a in headers.get(wire.ALGORITHMS_HEADER, "").split(",") if a)
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise errors.InvalidArgument(f"{wire.ALGORITHMS_HEADER} names unknown checksum algorithms: {unknown}")
    try:
        meta = json.loads(headers.get(wire.META_HEADER, "{}"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
        return expected, algorithms, ObjectMeta.from_json(meta)
    except ValueError as exc:
        raise errors.InvalidArgument(f"{wire.META_HEADER} is not a JSON object: {exc}") from None


async def _send(send, status: int, headers: list, body: bytes) -> None:
    if status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body if status != 204 else b""})


async def _send_json(send, data) -> None:
    await _send(send, 200, [(b"content-type", b"application/json")], json.dumps(data).encode())


admin_router = APIRouter()


@admin_router.get("/_admin/cluster")
async def cluster_view(request: Request) -> JSONResponse:
    """This node's role, its node list, peer health (de-prioritized peers) and placement counts."""
    cluster = request.app.state.service.cluster
    if cluster is None:
        return JSONResponse({"cluster": None, "detail": "stand-alone node (no --role/--registry)"})
    return JSONResponse(cluster.status())
