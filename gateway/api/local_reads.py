"""Local reads: object files handed to readers on the gateway's own host, over a Unix socket.

HDFS's short-circuit local reads, for the FUSE mount: a mount on the host of a
gateway that keeps its objects in local files (the local and sharedfs
backends) asks this socket for a large object it opens, gets the object file's
descriptor (``SCM_RIGHTS``) and reads it with ``pread``, instead of streaming
it through HTTP. The gateway does no work per read; a sequential read through
the mount then costs what FUSE itself costs (docs/fuse.md, "Local reads").

Who may ask: whoever can connect to the socket, which is created mode 0600 (the
gateway's user, and root). Such a process can read the storage directory
itself, so a descriptor gives it nothing new; S3 credentials are not asked.
Anything this socket cannot answer (an object on another node, a backend
without local files, an older version than the mount looked up) is "not
here", and the mount reads through HTTP as before.

The protocol, one exchange per connection:

- request: one line of JSON, ``{"bucket": ..., "key": ..., "etag": ...}``
  (``etag`` optional: the version the reader looked up) and a newline;
- reply: one line of JSON and a newline: ``{"found": true, "offset": N,
  "size": N, "etag": ...}`` with the descriptor attached to its first byte
  (the object's bytes are ``size`` bytes from ``offset`` in that file),
  ``{"found": false}`` (no such object here, or another version), or
  ``{"error": "..."}`` (a malformed request, a storage error).
"""

from __future__ import annotations

import array
import asyncio
import errno
import json
import logging
import os
import socket
import stat

from .. import errors
from .s3.request import check_bucket_name, check_key

log = logging.getLogger("gateway.local_reads")

MAX_REQUEST = 16 * 1024  # a bucket name and a key of at most 1,024 bytes, JSON-escaped, fit many times
REQUEST_TIMEOUT = 5.0  # seconds a connection may take to send its request line
MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path (sun_path is 108, with its terminating NUL)


class LocalReadServer:
    """The gateway's end: answers requests for object files on ``path`` (see the module's doc).

    ``backend_for(bucket)``: this node's own backend for a bucket, or None (a proxy node);
    ``held()``: whether this node's own copies must not be read now (a cluster node that has just
    run again after a stall, Cluster.reads_held): everything is "not here" meanwhile, and the
    mount reads through HTTP, which says so."""

    def __init__(self, path: str, backend_for, held=lambda: False):
        self.path = path
        self.backend_for = backend_for
        self.held = held
        self.sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self.answered = 0  # descriptors handed out (for /metrics and tests)

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"--local-socket {self.path} is longer than {MAX_SOCKET_PATH} bytes, the most a Unix "
                               "socket's path may have: choose a shorter one, e.g. /run/cv-gateway/local.sock")
        _clear_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Made 0600 before it listens: until then a connect is refused, so there is no moment at
            # which another user could get in (and no process-wide umask to change meanwhile).
            os.chmod(self.path, 0o600)
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"cannot create the local-read socket {self.path}: {exc.strerror or exc}: check "
                               "that its directory exists and is writable, or change --local-socket") from None
        sock.listen(64)
        sock.setblocking(False)
        self.sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept())
        log.info("local reads on %s", self.path)

    async def close(self) -> None:
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE and the like: wait instead of spinning, keep serving
                log.warning("local reads: accept failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            task = loop.create_task(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with conn:
            try:
                line = await asyncio.wait_for(_read_line(loop, conn), REQUEST_TIMEOUT)
            except (asyncio.TimeoutError, OSError, ValueError) as exc:
                log.info("local reads: a request was not read: %s", exc or "timed out")
                return
            reply, fd = self.answer(line)
            try:
                data = json.dumps(reply).encode() + b"\n"
                if fd is None:
                    await loop.sock_sendall(conn, data)
                    return
                # A reply line of a few dozen bytes on a fresh connection goes out whole.
                sent = conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                if sent < len(data):
                    await loop.sock_sendall(conn, data[sent:])
                self.answered += 1
            except OSError as exc:  # the reader went away: the descriptor in flight is closed with its socket
                log.info("local reads: the reply was not sent: %s", exc)
            finally:
                if fd is not None:
                    os.close(fd)  # the reader has its own copy now

    def answer(self, line: bytes) -> tuple[dict, int | None]:
        """The reply to one request line, and the descriptor to attach (the caller closes it)."""
        try:
            request = json.loads(line)
            bucket, key, etag = request["bucket"], request["key"], request.get("etag")
            if not (isinstance(bucket, str) and isinstance(key, str) and isinstance(etag, (str, type(None)))):
                raise TypeError("bucket and key must be strings")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return {"error": f"malformed request ({exc}): expected one JSON line with bucket, key and etag"}, None
        try:
            check_bucket_name(bucket)  # the S3 API's checks: a name it refuses is never looked up here either
            check_key(key)
        except errors.GatewayError as exc:
            return {"error": exc.message}, None
        backend = self.backend_for(bucket)
        if self.held():
            return {"found": False}, None
        try:
            found = backend.open_file(bucket, key) if backend is not None else None
        except Exception as exc:  # a storage error is this request's, never the server's
            log.warning("local reads: %s/%s: %s", bucket, key, exc)
            return {"error": f"{type(exc).__name__}: {exc}"}, None
        if found is None:
            return {"found": False}, None
        info, fd, offset = found
        if etag is not None and info.etag != etag:  # replaced since the reader looked: it asks HTTP
            os.close(fd)
            return {"found": False}, None
        return {"found": True, "offset": offset, "size": info.size, "etag": info.etag}, fd


async def _read_line(loop, conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await loop.sock_recv(conn, 4096)
        if not chunk:
            raise ValueError("the connection closed before a whole request line")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"a request line longer than {MAX_REQUEST} bytes")
    return data.partition(b"\n")[0]


def _clear_stale_socket(path: str) -> None:
    """Remove a socket left by a gateway that died; refuse to take one another gateway listens on,
    or to remove anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"--local-socket {path} exists and is not a socket: choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise RuntimeError(f"cannot check --local-socket {path}: {exc.strerror or exc}") from None
        os.unlink(path)  # nobody listens: left behind by a gateway that was killed
        return
    finally:
        probe.close()
    raise RuntimeError(f"--local-socket {path} is in use by another running gateway: stop it or choose another path")


def open_object_file(path: str, bucket: str, key: str, etag: str | None,
                     timeout: float = 2.0) -> tuple[int, int, int] | None:
    """The reader's end: (descriptor, offset, size) of the object from the gateway listening on
    ``path``, or None when it does not have it (read it through HTTP then). Raises OSError when
    the socket cannot be used at all, ValueError for a reply that is not the protocol."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"bucket": bucket, "key": key, "etag": etag}).encode() + b"\n")
        data, fds = b"", []
        while not data.endswith(b"\n"):
            chunk, received, _, _ = socket.recv_fds(sock, 4096, 1)
            fds += received
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
        found, error = reply.get("found"), reply.get("error")
        opened = (fds.pop(), int(reply["offset"]), int(reply["size"])) if found and len(fds) == 1 else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a local-read reply ({exc}): {data[:200]!r}") from None
    finally:
        for fd in fds:
            os.close(fd)
    if error is not None:
        raise ValueError(f"the gateway refused the request: {error}")
    if found and opened is None:
        raise ValueError("the gateway's reply carried no file descriptor")
    return opened
