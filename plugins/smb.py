"""The smb backend: cv-storage on an SMB2/3 share, spoken to directly (no mount needed).

Configuration (``[backends.NAME] type = "smb"``)::

    server = "nas.example"        # host name or address (required)
    port = 445
    share = "cv"                  # share name (required)
    path = "gateway/cv-storage"   # directory inside the share ("" = the share's root)
    user = "cvgw"                 # or credentials_file, see below
    password = "..."
    credentials_file = "/etc/cv-gateway/smb.cred"  # mount.cifs format: username=, password=, domain=
    domain = ""                   # prefixed as DOMAIN\\user
    pool_size = 4                 # SMB connections (each carries several calls at once)
    timeout = 30                  # seconds any one SMB call may take before the request gets a 503
    connect_timeout = 10
    encrypt = false               # require SMB3 encryption
    flush = true                  # SMB FLUSH each object before publishing it (the local backend's fsync)

Objects use the layout and file format of the local backend (fslayout.py):
the same share mounted as cv-storage and served by the local or sharedfs
backend shows the same buckets and objects. A PUT writes a temp file under
``.gateway/tmp/<host>/`` and renames it over the object, so readers never see
a partial object. smbprotocol is synchronous: every call runs in the pool's
worker threads with a timeout (smb_client.py); the file operations are in
smb_files.py.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import time

from gateway import errors
from gateway.backend import (
    MULTIPART_BUCKET,
    Backend,
    BucketInfo,
    ByteRange,
    Capabilities,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectReader,
    paginate,
)
from gateway.hookspecs import hookimpl
from gateway.payload import Payload

from . import fslayout, fsutil

try:  # the smb extra (smbprotocol); without it the plugin still loads, and only an smb backend is refused
    from . import smb_files as files
    from .smb_client import SmbPool, retry_later
except ImportError as exc:
    files = SmbPool = retry_later = None
    _MISSING = f"{type(exc).__name__}: {exc}"
else:
    _MISSING = None

log = logging.getLogger(__name__)
# smbprotocol logs every open, read and close at INFO: ~4 lines per GET, ~13 per PUT, which at the
# gateway's default level buried its own lines (and cost CPU). Its warnings and errors still show.
logging.getLogger("smbprotocol").setLevel(logging.WARNING)
BUFFER_LIMIT = 1024 * 1024  # bodies up to this size are written with one thread hop
WRITE_BLOCK = 1024 * 1024  # larger bodies go out in blocks of this size: bounded memory per PUT
HEADER_SLACK = 1024
# Keys holding these would alias keys holding the characters SMB cannot carry (fsutil.SFM_MAP).
SFM_RESERVED = set(fsutil.SFM_BACK)


def _root_checked(what: str):
    """A NoSuchBucket the method raises is checked first: if the backend's directory (or the share) is
    gone, every bucket would look deleted, so that is a 503 naming it instead (SmbBackend._path_gone)."""
    def decorate(method):
        @functools.wraps(method)
        async def checked(self, *args, **kwargs):
            try:
                return await method(self, *args, **kwargs)
            except errors.NoSuchBucket:
                await self._check_root(what)
                raise
        return checked
    return decorate


def read_credentials_file(path: str) -> dict[str, str]:
    """Parse a mount.cifs style credentials file (``username=``, ``password=``, ``domain=`` lines)."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, sep, value = line.strip().partition("=")
            if sep and not name.startswith("#"):
                values[name.strip().lower()] = value.strip()
    if "user" in values and "username" not in values:
        values["username"] = values["user"]
    if "pass" in values and "password" not in values:
        values["password"] = values["pass"]
    return values


class SmbBackend(Backend):
    capabilities = Capabilities(range_reads=True, server_side_copy=False, native_multipart=False,
                                atomic_put=True, shared=True, listing="walk", listing_metadata=True)

    def __init__(self, name: str = "smb", *, server: str = "", share: str = "", port: int = 445, path: str = "",
                 user: str | None = None, password: str | None = None, credentials_file: str | None = None,
                 domain: str = "", pool_size: int = 4, timeout: float = 30.0, connect_timeout: float = 10.0,
                 encrypt: bool = False, require_signing: bool = True, flush: bool = True):
        super().__init__(name)
        self.label = f"backend {name!r} (smb)"
        if _MISSING is not None:
            raise ValueError(f"{self.label} needs the smb extra, which is not installed ({_MISSING}): "
                             "pip install 'cv-gateway[smb]' (or `make test`, which installs it)")
        for setting, value in (("server", server), ("share", share)):
            if not value:
                raise ValueError(f"{self.label}: backends.{name}.{setting} is required")
        if credentials_file:
            try:
                creds = read_credentials_file(credentials_file)
            except OSError as exc:
                raise ValueError(f"{self.label}: credentials_file {credentials_file!r} cannot be read: "
                                 f"{exc.strerror}") from None
            user = user or creds.get("username")
            password = password if password is not None else creds.get("password")
            domain = domain or creds.get("domain", "")
        if not user:
            raise ValueError(f"{self.label}: set backends.{name}.user (and password) or credentials_file")
        for setting, value in (("timeout", timeout), ("connect_timeout", connect_timeout), ("pool_size", pool_size)):
            if not value or value <= 0:
                raise ValueError(f"{self.label}: backends.{name}.{setting} must be a positive number")
        self.server, self.port, self.share = server, int(port), share.strip("\\/")
        self.user = f"{domain}\\{user}" if domain else user
        self.flush = flush
        self.timeout = float(timeout)
        self.pool = SmbPool(self.label, server, self.port, self.user, password, size=int(pool_size),
                            timeout=self.timeout, connect_timeout=float(connect_timeout),
                            encrypt=True if encrypt else None, require_signing=require_signing)
        inner = "\\".join(p for p in path.replace("/", "\\").split("\\") if p)
        self.share_root = f"\\\\{server}\\{self.share}"
        # A UNC path, deliberately not called `root`: that name means a local directory elsewhere.
        self.unc_root = files.join(self.share_root, inner) if inner else self.share_root
        self.path = inner
        self.host = socket.gethostname() or "localhost"
        self.tmp_dir = files.join(self.unc_root, ".gateway", "tmp", self.host)
        self._counter = itertools.count()
        self._orphans: set[str] = set()  # temp files a failed PUT could not remove yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Task] = set()

    # Life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect, log in, check share and path, and clean this host's stale temp files."""
        self._loop = asyncio.get_running_loop()  # for clean_temp_files, called from the reaper's thread
        where = f"SMB server {self.server}:{self.port}"
        try:
            await self.pool.call(lambda kw: None, what="connect")
        except errors.BackendUnreachable as exc:  # down or not answering: the gateway starts and tries again
            reason = exc.message.removeprefix(f"{self.label}: ")
            raise errors.BackendUnreachable(f"{self.label}: {where} is not answering (check the server/port setting "
                                            f"if it stays so): {reason}") from None
        except errors.GatewayError as exc:
            setting = "user/password" if "rejected the user" in exc.message else "server/port"
            raise ValueError(f"{self.label}: cannot use {where} (check the {setting} setting): "
                             f"{exc.message.removeprefix(f'{self.label}: ')}") from None
        try:
            problem = None
            if not await self.pool.call(files.exists_dir, self.share_root, what="open the share"):
                problem = "the server has no share by that name, or the user may not use it"
        except (OSError, errors.GatewayError) as exc:
            problem = getattr(exc, "message", str(exc))
        if problem:
            raise ValueError(f"{self.label}: share {self.share!r} is not available on {where} "
                             f"(check the share setting): {problem}")
        try:
            await self.pool.call(_makedirs, self.tmp_dir, what="create the path")
            if not await self.pool.call(files.case_sensitive, self.tmp_dir, f"case-{os.getpid()}-probe"):
                log.warning("%s: the share is case-insensitive, so keys differing only in case collide "
                            "(on Samba set 'case sensitive = yes' for the share)", self.label)
        except (OSError, errors.GatewayError) as exc:
            raise ValueError(f"{self.label}: path {self.path!r} in share {self.share!r} is not writable "
                             f"(check the path setting): {getattr(exc, 'message', exc)}") from None
        removed = await self.pool.call(files.clean_temp_files, self.tmp_dir, self._stale_temp, what="clean up")
        if removed:
            log.info("%s: removed %d stale temp files", self.label, removed)

    def _stale_temp(self, name: str) -> bool:
        # Another live gateway on this host may be writing it; anything else is left over.
        return not fsutil.temp_owner_alive(name)

    def _stale_temp_now(self, name: str) -> bool:
        # While running, this process's own files are PUTs in flight (or orphans, swept on their own).
        return name.split("-", 1)[0] != str(os.getpid()) and self._stale_temp(name)

    def clean_temp_files(self) -> int:
        """For the gateway's upload reaper, which calls it in a thread now and then: remove the temp files
        this process's failed PUTs could not remove (the server was down or hung at the time) and those of
        this host's dead gateways; return how many. Without it they stayed, each as large as its object,
        until a later PUT through this process (its own) or a restart (dead writers')."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return 0
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # it would wait for itself
            raise RuntimeError(f"{self.label}: clean_temp_files() is for a thread, not the event loop")
        return asyncio.run_coroutine_threadsafe(self._clean_temp_files(), loop).result()

    async def _clean_temp_files(self) -> int:
        before = len(self._orphans)
        await self._sweep_orphans()
        removed = before - len(self._orphans)
        try:
            removed += await self.pool.call(files.clean_temp_files, self.tmp_dir, self._stale_temp_now,
                                            what="clean up")
        except (OSError, errors.GatewayError) as exc:  # the server is down: the next sweep tries again
            log.info("%s: could not clean temp files now: %s", self.label, getattr(exc, "message", exc))
        if removed:
            log.info("%s: removed %d stale temp files", self.label, removed)
        return removed

    async def close(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.pool.close()

    async def check_writable(self) -> None:
        probe = files.join(self.tmp_dir, f"{os.getpid()}-ready")
        try:
            await self.pool.call(_write_and_remove, probe, what="write a probe file")
        except OSError as exc:  # /readyz says what a request would: which backend, which directory
            if files.is_missing(exc):
                await self._check_root("write a probe file")
            raise retry_later(errors.BackendUnavailable(
                f"{self.label}: write a probe file in {self.tmp_dir!r}: {exc.strerror or exc}")) from None

    # Paths --------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> str:
        if not bucket or any(c in fsutil.SFM_MAP or c in "/\\" for c in bucket) or bucket in (".", "..") or (
            bucket.startswith(".") and bucket != MULTIPART_BUCKET
        ):
            raise errors.InvalidBucketName(BucketName=bucket)
        return files.join(self.unc_root, bucket)

    def _object_path(self, bucket: str, key: str) -> str:
        if not SFM_RESERVED.isdisjoint(key):
            raise errors.InvalidArgument(
                "This bucket is stored on SMB, where the characters U+F001 to U+F027 stand for characters "
                "names cannot hold; use another key.", ArgumentName="key", ArgumentValue=key,
            )
        relpath = fslayout.key_to_relpath(key)
        return files.join(self._bucket_dir(bucket), *(fsutil.sfm_encode(p) for p in relpath.split("/")))

    def _temp_path(self) -> str:
        return files.join(self.tmp_dir, f"{os.getpid()}-{next(self._counter)}-{os.urandom(4).hex()}")

    def _missing(self, bucket: str, key: str):
        async def decide():
            if not await self.pool.call(files.exists_dir, self._bucket_dir(bucket), what="check the bucket"):
                return errors.NoSuchBucket(BucketName=bucket)
            return errors.NoSuchKey(Key=key)
        return decide()

    # Buckets --------------------------------------------------------------------

    def _path_gone(self, what: str) -> errors.GatewayError:
        """The backend's directory is missing from the share (removed, or the volume behind the share is
        not there): a 503 naming it, not a 500. It is not made again: that could write beside a missing volume."""
        where = f"directory {self.path!r} in share {self.share!r}" if self.path else f"share {self.share!r}"
        return retry_later(errors.BackendUnavailable(
            f"{self.label}: {what}: the {where} on SMB server {self.server}:{self.port} does not exist "
            "(was it removed, or is the share or the storage behind it missing? check the share and path "
            "settings)"))

    async def _check_root(self, what: str) -> None:
        """Raise the 503 of _path_gone when the backend's directory is missing (a share that is gone looks
        the same over SMB: every path in it is "not found")."""
        if not await self.pool.call(files.exists_dir, self.unc_root, what=what):
            raise self._path_gone(what)

    async def create_bucket(self, bucket: str) -> None:
        try:
            await self.pool.call(files.create_bucket, self._bucket_dir(bucket), bucket, what="create bucket")
        except OSError as exc:
            if files.is_missing(exc):
                await self._check_root("create bucket")
            raise

    @_root_checked("delete bucket")
    async def delete_bucket(self, bucket: str) -> None:
        await self.pool.call(files.delete_bucket, self._bucket_dir(bucket), bucket, what="delete bucket")

    @_root_checked("head bucket")
    async def head_bucket(self, bucket: str) -> BucketInfo:
        return await self.pool.call(files.head_bucket, self._bucket_dir(bucket), bucket, what="head bucket")

    async def list_buckets(self) -> list[BucketInfo]:
        try:
            return await self.pool.call(files.list_buckets, self.unc_root, what="list buckets")
        except OSError as exc:
            if files.is_missing(exc):
                raise self._path_gone("list buckets") from None
            raise

    # Objects ----------------------------------------------------------------------

    @_root_checked("read object")
    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        path = self._object_path(bucket, key)
        slot = self.pool.pick()
        opened = await self._read_object(bucket, key, files.open_object, path, byte_range, slot=slot,
                                         what="read object")
        if opened[0] == "data":
            _, info, start, stop, data = opened
            return ObjectReader(info, start, stop, data=data)
        _, info, start, stop, handle, offset = opened
        state = {"open": True}

        async def chunks():
            position, end = offset + start, offset + stop
            try:
                while position < end:
                    chunk = await self.pool.call_on(slot, files.read_at, handle, position,
                                                    min(files.READ_CHUNK, end - position), what="read object")
                    if not chunk:
                        raise errors.InternalError("object file is shorter than its header says")
                    position += len(chunk)
                    yield chunk
            finally:
                release()

        def release():
            if state["open"]:
                state["open"] = False
                task = asyncio.get_running_loop().create_task(self._close_handle(slot, handle))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

        return ObjectReader(info, start, stop, _chunks=chunks(), _close=release)

    async def _close_handle(self, slot, handle) -> None:
        try:
            await self.pool.call_on(slot, handle.close, what="close object")
        except Exception as exc:  # the server closes it with the connection anyway
            log.debug("%s: closing a file failed: %s", self.label, exc)

    @_root_checked("head object")
    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await self._read_object(bucket, key, files.read_info, self._object_path(bucket, key),
                                       what="head object")

    async def _read_object(self, bucket: str, key: str, function, *args, **call_options):
        """``pool.call(function, *args)``; a missing file is NoSuchKey (or NoSuchBucket), a damaged one a 500."""
        try:
            return await self.pool.call(function, *args, **call_options)
        except OSError as exc:
            if files.is_missing(exc):
                raise await self._missing(bucket, key) from None
            raise
        except fslayout.CorruptObject as exc:
            raise errors.InternalError(f"{self.label}: {bucket}/{key} is not a valid object file: {exc}") from None

    @_root_checked("write object")
    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        final = self._object_path(bucket, key)
        bucket_dir = self._bucket_dir(bucket)
        meta_json = meta.to_json()
        tmp = self._temp_path()
        slot = self.pool.pick()
        handle = None
        buffered: list[bytes] = []
        buffered_size = 0
        position = reserved = 0
        try:
            async for chunk in payload:
                buffered.append(chunk)
                buffered_size += len(chunk)
                if buffered_size <= (BUFFER_LIMIT if handle is None else WRITE_BLOCK):
                    continue
                if handle is None:
                    # Too big for one hop: open the temp file, reserve room for the header, stream blocks.
                    if not await self.pool.call(files.exists_dir, bucket_dir, slot=slot, what="check the bucket"):
                        raise errors.NoSuchBucket(BucketName=bucket)
                    handle = await self.pool.call(files.open_temp, tmp, self.tmp_dir, slot=slot, what="open temp file")
                    probe = fslayout.encode_header(key, 0, "", 0.0, meta_json, {})
                    reserved = len(probe) - fslayout.PREFIX.size + HEADER_SLACK
                    position = fslayout.PREFIX.size + reserved
                block, buffered, buffered_size = b"".join(buffered), [], 0
                await self.pool.call_on(slot, files.write_at, handle, position, block, what="write object")
                position += len(block)
            info = ObjectInfo(key, payload.size, payload.etag, time.time(), meta, payload.checksums)
            header = fslayout.encode_header(key, info.size, info.etag, info.last_modified, meta_json,
                                            dict(info.checksums), pad_to=reserved)
            deadline = time.monotonic() + self.timeout * 0.8
            if handle is None:
                await self.pool.call(files.write_small, tmp, self.tmp_dir, header + b"".join(buffered), self.flush,
                                     final, bucket_dir, key, deadline, slot=slot, what="write object")
            else:
                if buffered:
                    await self.pool.call_on(slot, files.write_at, handle, position, b"".join(buffered),
                                            what="write object")
                opened, handle = handle, None
                await self.pool.call(files.finish_large, opened, header, self.flush, tmp, final, bucket_dir, key,
                                     deadline, slot=slot, retry=False, what="publish object")
        except BaseException as exc:
            await self._discard(slot, handle, tmp)
            if files.is_delete_pending(exc):  # the rename waited for the reader until the deadline, as for "in use"
                raise retry_later(errors.ServiceUnavailable(
                    f"{self.label}: publish object: {bucket}/{key} was deleted while a reader still has it open; "
                    "it can be written again once that read ends")) from None
            raise
        if self._orphans:
            await self._sweep_orphans()
        return info

    async def _discard(self, slot, handle, tmp: str) -> None:
        """Best effort: close and remove a failed PUT's temp file, or remember it for later."""
        try:
            if handle is not None:
                await self.pool.call_on(slot, handle.close, what="close temp file")
            if not await self.pool.call(files.remove_quietly, tmp, what="remove temp file"):
                self._orphans.add(tmp)
        except Exception:
            self._orphans.add(tmp)

    async def _sweep_orphans(self) -> None:
        for tmp in list(self._orphans):
            try:
                if await self.pool.call(files.remove_quietly, tmp, what="remove temp file"):
                    self._orphans.discard(tmp)
            except errors.GatewayError:
                return

    @_root_checked("delete object")
    async def delete(self, bucket: str, key: str) -> None:
        await self.pool.call(files.delete_object, self._object_path(bucket, key), self._bucket_dir(bucket), bucket,
                             what="delete object")

    @_root_checked("list objects")
    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000) -> ListPage:
        bucket_dir = self._bucket_dir(bucket)

        def page(kw):
            if not files.exists_dir(kw, bucket_dir):
                raise errors.NoSuchBucket(BucketName=bucket)
            walked = files.walk(kw, bucket_dir, "", prefix, start_after, delimiter == "/")
            return paginate(walked, prefix, delimiter, start_after, max_keys)

        return await self.pool.call(page, what="list objects")


def _makedirs(kw: dict, path: str) -> None:
    import smbclient

    smbclient.makedirs(path, exist_ok=True, **kw)


def _write_and_remove(kw: dict, path: str) -> None:
    import smbclient

    with smbclient.open_file(path, mode="wb", **kw) as f:
        f.write(b"ok")
    smbclient.remove(path, **kw)


@hookimpl
def register_backends(register):
    register("smb", SmbBackend)
