"""The peer client: calls another node's /_cluster/v1 routes over one pooled aiohttp session.

Object GET and HEAD, the relay's hot path, go over a lean httptools-based
client instead (peer_http.PeerHttp): it costs a fraction of aiohttp's CPU per
request and needs no running task, so a relayed read started eagerly by the
front end (gateway/eager.py) stays on the fast path. Bodies larger than
SMALL_BODY, and requests beyond PeerHttp's in-flight bound, are redone or sent
with aiohttp, which streams with back-pressure.

aiohttp, not httpx: measured as a relay client on this hardware, httpx's
pool was 7x slower under concurrency (see docs/calibration.md and
encode/httpx#3215). Every call is signed (peer_auth), has a connect and read
timeout of ``peer_timeout`` and reports the outcome to PeerHealth, so a
stopped peer costs at most one timeout before it is tried last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from .. import errors
from ..backend import BucketInfo, ByteRange, ListPage, ObjectInfo, ObjectMeta, ObjectReader, PartInfo, UploadInfo
from ..eager import require_task
from ..payload import Payload
from . import wire
from .health import PeerHealth
from .peer_auth import PeerSigner
from .peer_http import PeerHttp, PeerHttpError, Response
from .registry import Retirement
from .tally import Tally

log = logging.getLogger("gateway.cluster")
# Bodies up to this size are read in one piece (one send to the client);
# larger ones stream in CHUNK pieces.
SMALL_BODY = 1024 * 1024
CHUNK = 256 * 1024
# Seconds a forwarded CompleteMultipartUpload waits for the holder, which assembles the object first.
COMPLETE_TIMEOUT = 600.0
# Seconds a peer that answered the S3 read route 405 (an older version) gets its reads the usual way.
READ_ROUTE_MEMORY = 60.0


class PeerUnreachable(Exception):
    """A peer did not answer (refused, reset, timed out); ``peer`` is its node id. ``storage_failed``:
    it answered, but that its own store failed, so it could not say (services/cluster_nodes/)."""

    def __init__(self, peer: str, reason: str, storage_failed: bool = False, failed_answer: bool = False):
        super().__init__(f"peer {peer}: {reason}")
        self.peer = peer
        self.reason = reason
        self.storage_failed = storage_failed
        # It answered 500: reachable, and its answer (``reason``) is the one to pass on when no other
        # node has the object (a damaged stored copy, say), not "cannot be reached, retry".
        self.failed_answer = failed_answer


def _range_header(byte_range: ByteRange) -> str:
    if byte_range.first is None:
        return f"bytes=-{byte_range.last}"
    return f"bytes={byte_range.first}-" + ("" if byte_range.last is None else str(byte_range.last))


def object_path(bucket: str, key: str, route: str = "objects") -> str:
    """A peer route's path for an object (``route``: objects, or locations for the notice of forget_location)."""
    return f"{wire.PREFIX}/{route}/{quote(bucket, safe='')}/{quote(key, safe='/')}"


def upload_path(bucket: str, upload_id: str = "", rest: str = "", **query: str) -> str:
    """The peer route of an upload (or with no ``upload_id``, of a bucket's uploads) and ``rest`` under it."""
    path = f"{wire.PREFIX}/uploads/{quote(bucket, safe='')}"
    if upload_id:
        path += f"/{quote(upload_id, safe='')}"
    if rest:
        path += f"/{rest}"
    return f"{path}?{urlencode(query, quote_via=quote)}" if query else path


def operation(method: str, target: str) -> str:
    """The metrics label of a peer call: get, head, put, delete, supersede, list, bucket, buckets,
    multipart or ping."""
    path = target[len(wire.PREFIX):]
    if path.startswith("/uploads/"):
        return "multipart"
    if path.startswith("/objects/"):
        if method == "DELETE" and "if-older-than=" in target:
            return "supersede"
        return method.lower()
    if path.startswith("/s3/"):  # the S3 read route (forward.py): a passed-through GET or HEAD
        return method.lower()
    if path.startswith("/list/"):
        return "list"
    if path.startswith("/buckets/"):
        return "bucket"
    return path.strip("/").split("?")[0] or "other"


def outcome(status: int) -> str:
    """The metrics label of a peer's answer."""
    if status < 300:
        return "ok"
    if status == 404:
        return "missing"
    return "error"


class PeerClient:
    """:param signer: signs every request; :param health: told about every answer and failure;
    :param timeout: seconds to connect and between reads; :param ssl_context: None for plain HTTP."""

    def __init__(self, signer: PeerSigner, health: PeerHealth, timeout: float,
                 ssl_context: ssl.SSLContext | None = None, on_failure=None):
        self.signer = signer
        self.health = health
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.on_failure = on_failure  # called with the peer id after a failure (membership reloads)
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None  # object bodies: GETs over SMALL_BODY, PUTs
        # GET and HEAD of objects (the hot relay calls): no aiohttp, no task needed (peer_http.py).
        self.lean = PeerHttp(timeout, ssl_context, body_limit=SMALL_BODY)
        # How long a GET or HEAD waits for a limited peer (one that failed lately, health.py) to
        # begin its answer. A peer stopped (SIGSTOP) or frozen keeps its sockets open and answers
        # nothing: with the whole timeout, every miss and every read of its objects waited for it
        # again (3 s each in the probe), although it had failed already. An alive peer answers in
        # milliseconds; the heartbeat's ping (full timeout) makes it healthy again.
        self.limited_timeout = min(timeout, max(0.2, timeout / 10))
        # (peer, operation, outcome) -> calls, for GET /metrics. Outcomes: ok, missing (404),
        # error (any other HTTP error), unreachable (no answer), refused (our signature was rejected).
        self.calls: Tally[tuple[str, str, str]] = Tally()
        # Plain reads passed through to the peer the location cache names (cluster/forward.py), by
        # outcome: passed (its answer went to the client), declined (not the object's answer: asked
        # the usual way), failed (no answer: the usual way), busy (no idle connection: the usual
        # way), cut (the peer failed once the answer had begun: the client's connection closed).
        self.pass_through: Tally[str] = Tally()
        # Peers of an older version, without the S3 read route (they answered it 405: a rolling
        # upgrade), until when their reads are not passed through: peer -> monotonic time.
        self._without_read_route: dict[str, float] = {}

    def lacks_read_route(self, peer: str) -> bool:
        """Whether ``peer`` answered the S3 read route 405 (an older version) within READ_ROUTE_MEMORY."""
        until = self._without_read_route.get(peer)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._without_read_route[peer]
            return False
        return True

    def lacked_read_route(self, peer: str) -> None:
        """``peer`` has no S3 read route: its reads go the usual way for READ_ROUTE_MEMORY seconds,
        then one is passed through again (it may have been upgraded meanwhile)."""
        if peer not in self._without_read_route:
            log.info("peer %s has no S3 read route (an older version?): its objects are relayed the usual way",
                     peer)
        self._without_read_route[peer] = time.monotonic() + READ_ROUTE_MEMORY

    def session(self, stream: bool = False) -> aiohttp.ClientSession:
        """The pooled session for short calls, or with ``stream`` the one for object bodies.

        Object bodies (a GET over SMALL_BODY, a PUT) hold their connection as long as the client
        takes to read or send them: one peer connection per client request in flight, so they are
        not limited in number. In the bounded pool of the short calls, 64 slow readers of large
        objects through one node took every connection to a peer, and every LIST, DELETE, PUT and
        overwrite retirement to that peer then waited for a free one without end.
        """
        current = self._streams if stream else self._session
        if current is None or current.closed:
            if stream:
                connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self.ssl_context or False,
                                                 keepalive_timeout=15, ttl_dns_cache=300)
            else:
                connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ssl=self.ssl_context or False,
                                                 keepalive_timeout=30, ttl_dns_cache=300)
            # Peers set no cookies: DummyCookieJar skips the per-request cookie filtering.
            current = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
            )
            if stream:
                self._streams = current
            else:
                self._session = current
        return current

    async def close(self) -> None:
        self.lean.close()
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()
        self._session = self._streams = None

    async def request(self, peer: str, address: str, method: str, target: str, *, headers=None, data=None,
                      retry: bool = True, stream: bool = False,
                      read_timeout: float | None = None) -> aiohttp.ClientResponse:
        """Send a signed request and return the response once its headers arrived; raise PeerUnreachable.

        The caller must release the response. A pooled connection the peer
        closed meanwhile (it restarted) is retried once on a fresh one for
        requests without a body. ``read_timeout``: seconds to wait for the answer instead of the
        peer timeout (a CompleteMultipartUpload assembles the whole object before it answers).
        """
        require_task()  # aiohttp needs a running task (a plain read started eagerly gets retried in one)
        all_headers = self.signer.headers(method, target)
        if headers:
            all_headers.update(headers)
        started = time.monotonic()
        try:
            options = {} if read_timeout is None else {"timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout, sock_read=read_timeout)}
            response = await self.session(stream).request(method, URL(address + target, encoded=True),
                                                    headers=all_headers, data=data, allow_redirects=False,
                                                    **options)
        except aiohttp.ServerDisconnectedError as exc:
            if isinstance(data, HeldBackBody) and (failure := data.client_failure()) is not None:
                raise failure from None  # our client's body failed, not the peer (see HeldBackBody)
            if retry and data is None:
                return await self.request(peer, address, method, target, headers=headers, retry=False,
                                          stream=stream, read_timeout=read_timeout)
            self._failed(peer, f"disconnected: {exc}")
            self.calls[peer, operation(method, target), "unreachable"] += 1
            raise PeerUnreachable(peer, "closed the connection") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if isinstance(data, HeldBackBody) and (failure := data.client_failure()) is not None:
                raise failure from None
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            self._failed(peer, reason)
            self.calls[peer, operation(method, target), "unreachable"] += 1
            raise PeerUnreachable(peer, reason) from None
        if response.status == 403 and response.headers.get(wire.ERROR_HEADER) == "AccessDenied":
            reason = (await response.read()).decode(errors="replace")[:200] if method != "HEAD" else ""
            response.release()
            raise self._refused(peer, method, target, reason)
        self.health.succeeded(peer, time.monotonic() - started)
        self.calls[peer, operation(method, target), outcome(response.status)] += 1
        return response

    def _refused(self, peer: str, method: str, target: str, reason: str) -> PeerUnreachable:
        """The peer refused our signature: a node of another cluster, or a wrong GATEWAY_CLUSTER_SECRET."""
        self.calls[peer, operation(method, target), "refused"] += 1
        self._failed(peer, f"refused our peer signature ({reason or 'HTTP 403'}): "
                           "check that every node has the same GATEWAY_CLUSTER_SECRET")
        return PeerUnreachable(peer, "refused our peer signature")

    def _malformed(self, peer: str, what: str, exc: Exception) -> errors.ServiceUnavailable:
        """The peer answered, but not as a peer route does (another server at its address, a broken
        node): it could not say whether it has the object, so it counts as failed and is asked last."""
        self._failed(peer, f"malformed answer to {what}: {type(exc).__name__}: {exc}")
        return errors.ServiceUnavailable(f"peer {peer} sent a malformed answer to {what}: {exc}")

    def _failed(self, peer: str, reason: str) -> None:
        self.health.failed(peer, reason)
        if self.on_failure is not None:
            self.on_failure(peer)

    @staticmethod
    async def _raise_for(response: aiohttp.ClientResponse) -> None:
        if response.status < 300:
            return
        try:
            message = (await response.read()).decode(errors="replace") if response.method != "HEAD" else ""
        except (aiohttp.ClientError, TimeoutError):  # the error's text was cut off: the status still says it
            message = ""
        finally:
            response.release()
        raise wire.error_from_peer(response.headers, message, response.status)

    # Objects ------------------------------------------------------------------

    async def _lean(self, peer: str, address: str, method: str, target: str,
                    headers: dict[str, str] | None = None) -> Response | None:
        """GET or HEAD over the lean client, with request()'s accounting; None: use aiohttp instead.

        None when the body is larger than SMALL_BODY (nothing is counted: the aiohttp request that
        follows is) or too many requests to that peer are in flight. No require_task(): PeerHttp
        needs no running task (gateway/eager.py), so this may run in the front end's eager start.
        """
        all_headers = self.signer.headers(method, target)
        if headers:
            all_headers.update(headers)
        started = time.monotonic()
        limited = self.health.limited(peer)
        try:
            response = await self.lean.request(address, method, target, all_headers,
                                               self.limited_timeout if limited else None)
        except PeerHttpError as exc:
            if exc.stage == "body":
                # The peer answered, then failed while sending the body: as request() + the body read.
                self.health.succeeded(peer, time.monotonic() - started)
                self.calls[peer, operation(method, target), outcome(exc.status or 200)] += 1
                self._failed(peer, f"body: {exc.reason}")
                raise errors.ServiceUnavailable(f"peer {peer} failed while sending the object") from None
            self.calls[peer, operation(method, target), "unreachable"] += 1
            if exc.disconnected and exc.stage == "request":
                self._failed(peer, f"disconnected: {exc.reason}")
                raise PeerUnreachable(peer, "closed the connection") from None
            reason = exc.reason
            if limited and exc.timed_out:
                reason = f"{reason} (within {self.limited_timeout:g}s: it failed before, so it is not waited for)"
            self._failed(peer, reason)
            raise PeerUnreachable(peer, reason) from None
        if response is None or response.body is None:
            return None
        if response.status == 403 and response.headers.get(wire.ERROR_HEADER) == "AccessDenied":
            raise self._refused(peer, method, target, response.body.decode(errors="replace")[:200])
        self.health.succeeded(peer, time.monotonic() - started)
        self.calls[peer, operation(method, target), outcome(response.status)] += 1
        return response

    async def get(self, peer: str, address: str, bucket: str, key: str,
                  byte_range: ByteRange | None = None) -> ObjectReader:
        headers = {"range": _range_header(byte_range)} if byte_range is not None else None
        target = object_path(bucket, key)
        response = await self._lean(peer, address, "GET", target, headers)
        if response is None:  # larger than SMALL_BODY (or the lean client is busy): aiohttp streams it
            return await self._get_aiohttp(peer, address, target, headers)
        if response.status >= 300:
            raise wire.error_from_peer(response.headers, response.body.decode(errors="replace"), response.status)
        try:
            info = wire.info_from_header(response.headers[wire.INFO_HEADER])
            start, stop = (int(x) for x in response.headers[wire.SPAN_HEADER].split("-"))
            if stop - start != len(response.body):
                raise ValueError(f"span {start}-{stop} but {len(response.body)} bytes")
        except (KeyError, ValueError, TypeError) as exc:
            raise self._malformed(peer, "GET", exc) from None
        return ObjectReader(info, start, stop, data=response.body)

    async def _get_aiohttp(self, peer: str, address: str, target: str, headers: dict | None) -> ObjectReader:
        response = await self.request(peer, address, "GET", target, headers=headers, stream=True)
        await self._raise_for(response)
        try:
            info = wire.info_from_header(response.headers[wire.INFO_HEADER])
            start, stop = (int(x) for x in response.headers[wire.SPAN_HEADER].split("-"))
        except (KeyError, ValueError, TypeError) as exc:
            response.close()
            raise self._malformed(peer, "GET", exc) from None
        if stop - start <= SMALL_BODY:
            try:
                data = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                response.close()
                self._failed(peer, f"body: {exc or 'timed out'}")
                raise errors.ServiceUnavailable(f"peer {peer} failed while sending the object") from None
            finally:
                response.release()
            return ObjectReader(info, start, stop, data=data)
        return ObjectReader(info, start, stop, _chunks=self._stream(response), _close=response.close)

    @staticmethod
    async def _stream(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                yield chunk
        finally:
            response.release()

    async def head(self, peer: str, address: str, bucket: str, key: str) -> ObjectInfo:
        target = object_path(bucket, key)
        response = await self._lean(peer, address, "HEAD", target)
        if response is None:  # the lean client is busy
            response = await self.request(peer, address, "HEAD", target)
            await self._raise_for(response)
            response.release()
        elif response.status >= 300:
            raise wire.error_from_peer(response.headers, "", response.status)
        try:
            return wire.info_from_header(response.headers[wire.INFO_HEADER])
        except (KeyError, ValueError, TypeError) as exc:  # no exception handling cost unless raised
            raise self._malformed(peer, "HEAD", exc) from None

    async def put(self, peer: str, address: str, bucket: str, key: str, payload: Payload,
                  meta: ObjectMeta, ensure_bucket: bool = False) -> ObjectInfo:
        """Store on the peer; ``ensure_bucket``: the caller knows the bucket exists, create it there if missing."""
        headers = {wire.META_HEADER: json.dumps(meta.to_json()),
                   wire.ALGORITHMS_HEADER: ",".join(payload.algorithms)}  # the checksums the client asked for
        if ensure_bucket:
            headers[wire.ENSURE_BUCKET_HEADER] = "1"
        if payload.expected_size is not None:
            headers[wire.SIZE_HEADER] = str(payload.expected_size)
        if payload.given_etag:
            headers[wire.ETAG_HEADER] = payload.given_etag
        body = HeldBackBody(payload)
        response = await self.request(peer, address, "PUT", object_path(bucket, key), headers=headers, data=body,
                                      stream=True)
        failure = body.failure_behind(response)
        if failure is not None:
            response.close()
            raise failure
        await self._raise_for(response)
        try:
            data = await response.read()
            return wire.info_from_json(json.loads(data))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(peer, f"body: {exc or 'timed out'}")
            raise errors.ServiceUnavailable(f"peer {peer} failed while answering a PUT") from None
        except (KeyError, ValueError, TypeError) as exc:
            raise self._malformed(peer, "PUT", exc) from None
        finally:
            response.release()

    async def delete(self, peer: str, address: str, bucket: str, key: str) -> bool:
        """Delete the peer's copy; return whether it had one."""
        response = await self.request(peer, address, "DELETE", object_path(bucket, key))
        await self._raise_for(response)
        response.release()
        return response.headers.get(wire.EXISTED_HEADER) == "1"

    async def supersede(self, peer: str, address: str, bucket: str, key: str,
                        newer: ObjectInfo | Retirement, own_storage: bool = False) -> ObjectInfo | None:
        """Delete the peer's copy if it is older than ``newer`` (its last_modified and etag; wire.is_older).

        Return the peer's copy when that one is newer still (kept), else None. ``own_storage``: ``newer``
        is stored on a node's own disk, not on shared storage, so a peer on a share may drop its copy
        (versions.supersede_local).
        """
        fields = {"if-older-than": repr(newer.last_modified), "etag": newer.etag}
        if isinstance(newer, ObjectInfo):  # (a registry's retirement has no size): the peer lists it a moment
            fields["size"] = str(newer.size)
        if own_storage:
            fields["newer-on"] = "own-storage"
        query = urlencode(fields, quote_via=quote)
        response = await self.request(peer, address, "DELETE", f"{object_path(bucket, key)}?{query}")
        await self._raise_for(response)
        response.release()
        kept = response.headers.get(wire.INFO_HEADER)
        try:
            return wire.info_from_json(json.loads(kept)) if kept else None
        except (KeyError, ValueError, TypeError) as exc:
            raise self._malformed(peer, "a conditional DELETE", exc) from None

    async def forget_location(self, peer: str, address: str, bucket: str, key: str | None) -> None:
        """Tell ``peer`` that this node stored the key, so that it drops a cached miss of it
        (watchers.py); with no key, that the bucket was deleted. Waited for only limited_timeout: an
        alive node answers at once."""
        target = (object_path(bucket, key, "locations") if key is not None
                  else f"{wire.PREFIX}/locations/{quote(bucket, safe='')}")
        response = await self.request(peer, address, "DELETE", target, read_timeout=self.limited_timeout)
        await self._raise_for(response)
        response.release()

    async def list(self, peer: str, address: str, bucket: str, prefix: str, delimiter: str, start_after: str,
                   max_keys: int) -> ListPage:
        query = urlencode({"prefix": prefix, "delimiter": delimiter, "start-after": start_after,
                           "max-keys": str(max_keys)}, quote_via=quote)
        target = f"{wire.PREFIX}/list/{quote(bucket, safe='')}?{query}"
        return await self._json(peer, address, target, "LIST", wire.page_from_json)

    # Buckets --------------------------------------------------------------------

    async def bucket(self, peer: str, address: str, method: str, bucket: str) -> None:
        """PUT (create, existing is fine), HEAD or DELETE a bucket on the peer."""
        response = await self.request(peer, address, method, f"{wire.PREFIX}/buckets/{quote(bucket, safe='')}")
        await self._raise_for(response)
        response.release()

    async def list_buckets(self, peer: str, address: str) -> list[BucketInfo]:
        return await self._json(peer, address, f"{wire.PREFIX}/buckets", "a bucket list", wire.buckets_from_json)

    # Multipart uploads held by the peer (a node that does not hold an upload forwards to its holder) -----

    async def get_upload(self, peer: str, address: str, bucket: str, upload_id: str, key: str | None) -> UploadInfo:
        query = {"key": key} if key is not None else {}
        return await self._json(peer, address, upload_path(bucket, upload_id, **query), "an upload",
                                wire.upload_from_json)

    async def list_uploads(self, peer: str, address: str, bucket: str, prefix: str) -> list[UploadInfo]:
        return await self._json(peer, address, upload_path(bucket, prefix=prefix), "a list of uploads",
                                wire.uploads_from_json)

    async def list_parts(self, peer: str, address: str, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        return await self._json(peer, address, upload_path(bucket, upload_id, "parts", key=key), "a list of parts",
                                wire.parts_from_json)

    async def upload_part(self, peer: str, address: str, bucket: str, key: str, upload_id: str, part_number: int,
                          payload: Payload) -> PartInfo:
        """Stream the part's body to the holder of its upload (HeldBackBody: the last chunk only once
        the client's body passed its checks, as a PUT)."""
        headers = {wire.ALGORITHMS_HEADER: ",".join(payload.algorithms)}
        if payload.expected_size is not None:
            headers[wire.SIZE_HEADER] = str(payload.expected_size)
        body = HeldBackBody(payload)
        target = upload_path(bucket, upload_id, f"parts/{part_number}", key=key)
        response = await self.request(peer, address, "PUT", target, headers=headers, data=body, stream=True)
        failure = body.failure_behind(response)
        if failure is not None:
            response.close()
            raise failure
        return await self._decode(peer, response, "an UploadPart", wire.part_from_json)

    async def complete_multipart(self, peer: str, address: str, bucket: str, key: str, upload_id: str,
                                 parts: list[tuple[int, str]], expected_checksums: dict | None) -> ObjectInfo:
        data = json.dumps({"parts": [[n, etag] for n, etag in parts],
                           "expected_checksums": dict(expected_checksums or {})}).encode()
        # The holder answers once it has assembled the object: that takes longer than the peer timeout
        # for a large one (a timeout here would be a 503 for an upload completed meanwhile).
        response = await self.request(peer, address, "POST", upload_path(bucket, upload_id, key=key),
                                      headers={"content-type": "application/json"}, data=data,
                                      read_timeout=max(self.timeout, COMPLETE_TIMEOUT))
        return await self._decode(peer, response, "a CompleteMultipartUpload", wire.info_from_json)

    async def abort_multipart(self, peer: str, address: str, bucket: str, key: str, upload_id: str) -> None:
        response = await self.request(peer, address, "DELETE", upload_path(bucket, upload_id, key=key))
        await self._raise_for(response)
        response.release()

    async def _decode(self, peer: str, response: aiohttp.ClientResponse, what: str, decode):
        """``decode(JSON answer)``; a body cut off or not what a peer sends is a 503
        ServiceUnavailable (the caller counts the peer as unreachable), never a 500."""
        await self._raise_for(response)
        try:
            return decode(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(peer, f"body: {exc or 'timed out'}")
            raise errors.ServiceUnavailable(f"peer {peer} failed while sending {what}") from None
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise self._malformed(peer, what, exc) from None
        finally:
            response.release()

    async def ping(self, peer: str, address: str, announce: str | None = None, role: str | None = None) -> dict:
        """``announce``: this node's own address (and ``role``), told to the peer (a node announcing itself
        at start)."""
        target = f"{wire.PREFIX}/ping"
        if announce:
            target += f"?address={quote(announce, safe='')}" + (f"&role={quote(role, safe='')}" if role else "")
        # The whole timeout, also for a limited peer: the heartbeat's ping is what finds it alive again.
        return await self._json(peer, address, target, "a ping", _json_object, whole_timeout=True)

    async def _json(self, peer: str, address: str, target: str, what: str, decode, whole_timeout: bool = False):
        """GET ``target`` and return ``decode(JSON answer)`` (see _decode).

        A limited peer (one that failed lately) is waited for only limited_timeout, as a GET of an
        object: every LIST, ListBuckets and ListMultipartUploads asks every storing node, and
        while one was frozen each of them waited the whole peer timeout for it again."""
        limited = not whole_timeout and self.health.limited(peer)
        read_timeout = self.limited_timeout if limited else None
        response = await self.request(peer, address, "GET", target, read_timeout=read_timeout)
        return await self._decode(peer, response, what, decode)


def _json_object(data) -> dict:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


# Seconds without a byte of a client's body after which a peer closing the connection of the write
# is the client's stall, not the peer's failure: the peer closes it 1-2 keep_alive_timeout after the
# last byte (30 s by default; a setting under a second would count some stalls against the peer).
STALLED_BODY = 1.0


class HeldBackBody:
    """The payload's chunks for a PUT to a peer, holding the last one back until the payload verified itself.

    Payload checks length and digests only after its last chunk; if that
    check fails, the peer must not have the whole body, or it would commit a
    bad object. So the last chunk is sent only once the check passed, and a
    failure leaves the peer with a short body that it discards.

    The payload's own failure (the client's body was cut off, a bad
    Content-MD5 or checksum) is kept in ``error``: aiohttp reports it as a
    failed connection, but it is the client's fault, not the peer's, so
    PeerClient.request raises it as it is (400 BadDigest, IncompleteBody)
    instead of a 503 that marks a healthy peer as failed. So is a body that
    stopped arriving (``client_failure``): the peer closes a connection whose
    body stalls (400 RequestTimeout, api/protocol.py), as it should.
    """

    def __init__(self, payload: Payload):
        self.payload = payload
        self.error: BaseException | None = None
        # Since when the next chunk is the client's to send (None: not begun, or all of it came).
        self._waiting_since: float | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        previous = None
        self._waiting_since = time.monotonic()
        try:
            async for chunk in self.payload:
                if previous is not None:
                    yield previous  # may wait for the peer to take it: not the client's time
                self._waiting_since = time.monotonic()
                previous = chunk
        except errors.GatewayError as exc:
            self.error = exc
            raise
        self._waiting_since = None
        if previous is not None:
            yield previous

    def failure_behind(self, response: aiohttp.ClientResponse) -> BaseException | None:
        """The client's failure behind the peer's answer: the payload's error (the peer answered before
        our client's body failed), or the stall of a body the peer refused at its HTTP layer (a 400
        RequestTimeout without a peer route's error header: an UploadPart, a chunked PUT); None when
        the answer is the peer's own."""
        if self.error is not None:
            return self.error
        if response.status >= 400 and wire.ERROR_HEADER not in response.headers:
            return self.client_failure()
        return None

    def client_failure(self) -> BaseException | None:
        """Why the peer's connection failed if the client is to blame: the payload's error, or a
        RequestTimeout when the body was not complete and no byte of it had come for STALLED_BODY
        seconds; None otherwise."""
        if self.error is not None:
            return self.error
        since = self._waiting_since
        if since is not None and time.monotonic() - since >= STALLED_BODY:
            return errors.RequestTimeout(
                f"No part of the request body arrived for {time.monotonic() - since:.0f} seconds; the request "
                "was not completed and nothing was stored.")
        return None
