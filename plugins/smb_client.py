"""SMB plumbing for the smb backend: a small connection pool, worker threads, timeouts, errors.

smbprotocol is synchronous, so every SMB call runs in this pool's own
bounded thread pool (never the event loop's default one, so a stuck SMB
server cannot starve the rest of the gateway).

- Pool: ``size`` SMB connections ("slots"), each its own smbclient
  connection cache. Calls are spread round-robin; one connection carries
  several calls at once (SMB2 multiplexes requests).
- Timeouts: every call is bounded by ``timeout`` seconds. When it expires the
  slot's socket is shut down, which wakes the blocked worker thread (smbprotocol
  itself waits forever for a reply), and the caller gets a 503.
- Reconnect: a call that fails because its connection died (the server
  restarted) reconnects the slot and runs once more; a server that is still
  down gives BackendUnavailable (503) at once.
- Errors: :func:`translate` is the one table from smbprotocol exceptions to
  gateway errors; "not found" stays an OSError for the backend to name
  (NoSuchKey or NoSuchBucket depends on what was missing).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import smbclient
from smbprotocol.exceptions import (
    LogonFailure,
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import NtStatus

from gateway import errors

log = logging.getLogger(__name__)

# Statuses that mean "this session or tree is gone", as after a server restart.
_STALE_STATUSES = {
    NtStatus.STATUS_USER_SESSION_DELETED,
    NtStatus.STATUS_NETWORK_NAME_DELETED,
    0xC000035C,  # STATUS_NETWORK_SESSION_EXPIRED
}
# Statuses that mean the storage is there but cannot take the request now.
_BUSY_STATUSES = {
    0xC000009A: "the SMB server is out of resources",  # STATUS_INSUFFICIENT_RESOURCES
}
# Statuses that mean the share is full: 507 InsufficientStorage, as the local backend answers ENOSPC
# (docs/s3-compatibility.md): a full disk does not clear by itself, so clients should not retry.
_FULL_STATUSES = {
    NtStatus.STATUS_DISK_FULL: "the SMB share is full",
    0xC0000044: "the SMB user's quota on the share is used up",  # STATUS_QUOTA_EXCEEDED
}
# What a client should wait before retrying a 503 from this backend (server down, hung, busy, file in use).
RETRY_AFTER = "5"
ACCESS_DENIED = NtStatus.STATUS_ACCESS_DENIED
SHARING_VIOLATION = NtStatus.STATUS_SHARING_VIOLATION
# A file deleted while another handle (a GET streaming it) still has it open stays, "delete pending",
# until that handle closes; opening or replacing the name fails with this meanwhile.
DELETE_PENDING = NtStatus.STATUS_DELETE_PENDING


# The call a worker thread is running (its _Call), for progress() to reach.
_running = threading.local()


class _Call:
    """When one pooled call last made progress: the timeout counts from there."""

    __slots__ = ("last",)

    def __init__(self):
        self.last = time.monotonic()


def progress() -> None:
    """Say, from a worker thread, that a long unit of work (a listing page: many SMB calls in one hop)
    got an answer and goes on: ``timeout`` bounds each SMB call, not the whole unit."""
    call = getattr(_running, "call", None)
    if call is not None:
        call.last = time.monotonic()


class ConnectionLost(Exception):
    """The slot's connection died under a call (internal: the call is retried once)."""


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` says the connection is unusable, not that the request was wrong."""
    if isinstance(exc, SMBOSError):
        return exc.ntstatus in _STALE_STATUSES
    if isinstance(exc, SMBResponseException):
        return exc.status in _STALE_STATUSES
    if isinstance(exc, (SMBConnectionClosed, ConnectionError, TimeoutError, EOFError, socket.timeout)):
        return True
    if isinstance(exc, ValueError) and str(exc).startswith("Failed to connect"):
        return True  # smbprotocol's Tcp.connect reports refused connections as ValueError
    if isinstance(exc, SMBException) and not isinstance(exc, (SMBOSError, SMBResponseException)):
        # Receive timeouts and a dead receiver thread come as a bare SMBException.
        return True
    return isinstance(exc, OSError) and not isinstance(exc, SMBOSError) and exc.errno in (
        errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ENOTCONN, errno.EHOSTUNREACH, errno.ENETUNREACH,
        errno.EBADF,
    )


def retry_later(error: errors.GatewayError) -> errors.GatewayError:
    """A 503 says when to retry (Retry-After), as the gateway's other 503s do."""
    if error.status == 503:
        error.headers.setdefault("Retry-After", RETRY_AFTER)
    return error


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, SMBOSError):
        return exc.ntstatus
    if isinstance(exc, SMBResponseException):
        return exc.status
    return None


def translate(exc: BaseException, where: str) -> BaseException:
    """The one table: an smbprotocol exception -> the gateway error to raise.

    Not-found, exists, not-empty and similar SMBOSErrors are returned as they
    are: the backend knows which key or bucket they are about. Every 503 carries Retry-After.
    """
    translated = _translate(exc, where)
    return retry_later(translated) if isinstance(translated, errors.GatewayError) else translated


def _translate(exc: BaseException, where: str) -> BaseException:
    if isinstance(exc, errors.GatewayError):
        return exc
    if _status(exc) in _FULL_STATUSES:
        # Written to a temp file, which the backend removes: nothing was stored.
        return errors.InsufficientStorage(
            f"{where}: {_FULL_STATUSES[_status(exc)]}; nothing was stored. Free space on the SMB server "
            "(or raise the quota), then retry.")
    if isinstance(exc, (LogonFailure, SMBAuthenticationError)):
        return errors.BackendUnavailable(f"{where}: the SMB server rejected the user or password")
    if is_connection_error(exc):
        return errors.BackendUnreachable(f"{where}: the SMB server cannot be reached ({_short(exc)})")
    if isinstance(exc, SMBOSError):
        if exc.ntstatus in _BUSY_STATUSES:
            return errors.ServiceUnavailable(f"{where}: {_BUSY_STATUSES[exc.ntstatus]}")
        if exc.ntstatus in (ACCESS_DENIED, SHARING_VIOLATION):
            return errors.ServiceUnavailable(
                f"{where}: the SMB server denied access (the file is in use, or the user may not write there)"
            )
        return exc
    if isinstance(exc, SMBResponseException):
        return errors.ServiceUnavailable(f"{where}: the SMB server answered {_short(exc)}")
    return exc


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


class _Slot:
    """One SMB connection (an smbclient connection cache holding it)."""

    def __init__(self, number: int):
        self.number = number
        self.cache: dict = {}
        self.lock = threading.Lock()  # serialises (re)connecting, not the calls

    def connected(self) -> bool:
        return any(getattr(c.transport, "connected", False) for c in self.cache.values())

    def abort(self) -> None:
        """Shut the socket down so threads blocked on it return (called from the event loop)."""
        for connection in list(self.cache.values()):
            sock = getattr(connection.transport, "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        """Forget the connection; the next call connects afresh."""
        try:
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self.cache)
        except Exception:  # a dead connection may fail to say goodbye
            pass
        self.cache.clear()


class SmbPool:
    """Connections, worker threads and the timeout policy for one SMB server.

    :param label: names the backend in error messages ("backend 'nas' (smb)").
    """

    def __init__(self, label: str, server: str, port: int, username: str | None, password: str | None, *,
                 size: int = 4, timeout: float = 30.0, connect_timeout: float = 10.0,
                 encrypt: bool | None = None, require_signing: bool = True):
        self.label = label
        self.server = server
        self.port = port
        self.username = username
        self.password = password
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.encrypt = encrypt
        self.require_signing = require_signing
        self.slots = [_Slot(i) for i in range(max(1, size))]
        self._round_robin = itertools.cycle(self.slots)
        # Two threads per connection: one can wait on a slow reply while the other works.
        self._executor = ThreadPoolExecutor(max_workers=2 * len(self.slots), thread_name_prefix=f"smb-{label}")

    def pick(self) -> _Slot:
        return next(self._round_robin)

    def kwargs(self, slot: _Slot) -> dict:
        """smbclient keyword arguments that route a call through ``slot``."""
        return {"username": self.username, "password": self.password, "port": self.port,
                "connection_cache": slot.cache, "connection_timeout": self.connect_timeout,
                "encrypt": self.encrypt}

    def _connect(self, slot: _Slot) -> None:
        with slot.lock:
            smbclient.register_session(
                self.server, username=self.username, password=self.password, port=self.port,
                encrypt=self.encrypt, connection_timeout=self.connect_timeout, connection_cache=slot.cache,
                require_signing=self.require_signing,
            )

    def _run(self, slot: _Slot, fn, args, with_kwargs: bool, call: _Call):
        was_connected = slot.connected()
        _running.call = call  # (its clock runs from the request, waiting for a worker thread included)
        try:
            if with_kwargs:
                self._connect(slot)
                return fn(self.kwargs(slot), *args)
            return fn(*args)
        except Exception as exc:
            if is_connection_error(exc):
                slot.reset()
                if was_connected:
                    raise ConnectionLost() from exc
            raise
        finally:
            _running.call = None

    async def call(self, fn, *args, slot: _Slot | None = None, retry: bool = True, what: str = "SMB call"):
        """Run ``fn(smbclient_kwargs, *args)`` in a worker thread, with the timeout and one reconnect."""
        slot = slot or self.pick()
        for attempt in (1, 2):
            try:
                return await self._bounded(slot, fn, args, True, what)
            except ConnectionLost as lost:
                if attempt == 2 or not retry:
                    raise translate(lost.__cause__, f"{self.label}: {what}") from lost.__cause__
                log.info("%s: connection %d was lost (%s); reconnecting", self.label, slot.number,
                         _short(lost.__cause__))

    async def call_on(self, slot: _Slot, fn, *args, what: str = "SMB call"):
        """Run ``fn(*args)`` (a method of an open file) in a worker thread, with the timeout, no retry."""
        try:
            return await self._bounded(slot, fn, args, False, what)
        except ConnectionLost as lost:
            raise translate(lost.__cause__, f"{self.label}: {what}") from lost.__cause__

    async def _bounded(self, slot: _Slot, fn, args, with_kwargs: bool, what: str):
        loop = asyncio.get_running_loop()
        call = _Call()
        future = loop.run_in_executor(self._executor, self._run, slot, fn, args, with_kwargs, call)
        try:
            while True:
                if future.done():
                    return future.result()
                # Each SMB call gets `timeout`: a unit of many (a listing) reports progress() between them.
                left = call.last + self.timeout - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                try:
                    return await asyncio.wait_for(asyncio.shield(future), left)
                except TimeoutError:
                    if future.done():  # the call itself raised TimeoutError
                        return future.result()
                    # Still running: progress meanwhile, or the deadline; the loop's test decides.
        except TimeoutError:
            future.cancel()  # not started yet: never run it
            # The worker may be blocked on the socket forever: shut it down so the thread is freed.
            slot.abort()
            raise retry_later(errors.BackendUnreachable(
                f"{self.label}: {what} got no answer from the SMB server {self.server}:{self.port} "
                f"within {self.timeout:g}s (setting timeout)"
            )) from None
        except ConnectionLost:
            raise
        except Exception as exc:
            translated = translate(exc, f"{self.label}: {what}")
            if translated is exc:
                raise
            raise translated from exc

    async def close(self) -> None:
        if self._executor._shutdown:  # closed already (close may be called twice)
            return

        def close_all():
            for slot in self.slots:
                slot.reset()

        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, close_all), self.connect_timeout)
        except TimeoutError:
            for slot in self.slots:
                slot.abort()
        self._executor.shutdown(wait=False, cancel_futures=True)
