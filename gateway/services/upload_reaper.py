"""Abort multipart uploads that nobody finished, so their parts do not fill the disk for ever.

A client killed half-way through an upload (or a FUSE mount whose gateway went
away mid-upload) leaves an upload record and its parts behind; S3 keeps them
until a lifecycle rule or the client aborts them, and MinIO aborts them after
24 hours (``api stale_uploads_expiry``). This node does the same for its own
storage: every ``interval`` seconds (and once at start) it aborts the uploads
initiated more than ``multipart_expiry`` seconds ago (default 24 h; 0 turns it
off), logging each. An upload completed or aborted meanwhile is skipped. A proxy
node stores nothing and reaps nothing; on shared storage every node sweeps the
same uploads, and the second abort finds nothing.

Each sweep also removes the temp files of this host's dead writers (a gateway
killed mid-PUT): the backends do that at start only, so a node restarted at
once (the sharedfs backend keeps files written in the last
``stale_temp_seconds`` at start) or a process that crashed while another
gateway on the host kept running would keep them, each as large as its
unfinished object, until the next restart; and the temp files of writes that
failed while the disk failed and could not be removed then. It also removes
the parts of uploads whose record is gone, an Abort or Complete cut short
(Backend.discard_orphaned_parts), once they are ORPHAN_GRACE old (at most
multipart_expiry). A backend whose disk fails is said in one line per sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from .. import errors
from ..backend import Backend

log = logging.getLogger("gateway.uploads")

MAX_INTERVAL = 3600.0
ORPHAN_GRACE = 3600.0  # seconds (at most multipart_expiry) before parts no upload points at are removed


class UploadReaper:
    def __init__(self, backends: dict[str, Backend], expiry: float, clock=time.time):
        self.backends = backends
        self.expiry = expiry
        self.interval = min(MAX_INTERVAL, max(expiry / 4, 0.5))
        self.clock = clock
        self.aborted = 0  # since start, for metrics and tests
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.expiry > 0 and self.backends and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="upload-reaper")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the next sweep tries again; the node keeps serving
                log.exception("looking for unfinished multipart uploads failed")
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Abort every upload older than the expiry; return how many were aborted. A backend whose
        store fails is said in one line and skipped: the others are still swept."""
        aborted = 0
        for name, backend in list(self.backends.items()):
            with _said_when_its_store_fails(name, "looking for unfinished multipart uploads"):
                aborted += await self._sweep(backend)
        self.aborted += aborted
        await self._clean_temp_files()
        return aborted

    async def _sweep(self, backend: Backend) -> int:
        aborted = 0
        deadline = self.clock() - self.expiry
        # The files of uploads whose record is gone (an Abort or Complete cut short) wait this long.
        orphans_before = self.clock() - min(self.expiry, ORPHAN_GRACE)
        for bucket in await backend.list_buckets():
            if bucket.name.startswith("."):  # the backend's own bookkeeping (.multipart)
                continue
            try:
                uploads = await backend.list_uploads(bucket.name)
            except errors.NoSuchBucket:
                continue  # deleted meanwhile
            for upload in uploads:
                if upload.initiated >= deadline:
                    continue
                try:
                    await backend.abort_multipart(bucket.name, upload.key, upload.upload_id)
                except errors.NoSuchUpload:
                    continue  # completed or aborted meanwhile (on shared storage: by another node)
                except errors.SlowDown:
                    continue  # being completed right now: gone by the next sweep, or aborted then
                aborted += 1
                age = (self.clock() - upload.initiated) / 3600
                log.warning("aborted the multipart upload %s of %s/%s: unfinished after %.1f hours "
                            "(multipart_expiry)", upload.upload_id, bucket.name, upload.key, age)
            cleaned = await backend.discard_orphaned_parts(bucket.name, orphans_before)
            if cleaned:
                log.warning("removed the parts of %d multipart uploads of %s whose completion or abort was cut "
                            "short", cleaned, bucket.name)
        return aborted

    async def _clean_temp_files(self) -> None:
        for name, backend in self.backends.items():
            clean = getattr(backend, "clean_temp_files", None)  # local and sharedfs: files of dead writers
            if clean is None:
                continue
            with _said_when_its_store_fails(name, "removing the temp files of failed writes"):
                await asyncio.to_thread(clean)  # a directory walk: on NFS it may block


@contextlib.contextmanager
def _said_when_its_store_fails(name: str, doing: str) -> Iterator[None]:
    """Around work on backend ``name``'s store: its store down, or its filesystem failing (EIO and the
    like), is one warning line and the sweep goes on with the others; anything else is raised on."""
    try:
        yield
    except errors.GatewayError as exc:
        log.warning("%s in backend %r: %s", doing, name, exc.message)
    except OSError as exc:
        failed = errors.storage_error(exc, f"backend {name!r}'s storage")
        if failed is None:
            raise
        log.warning("%s in backend %r: %s", doing, name, failed.message)
