"""A backend whose store did not answer at start-up: 503 for its buckets until it does, retried meanwhile.

A NAS or an S3 endpoint that is down when the gateway starts (a power cut
that brought the gateway back first) used to stop the start: the buckets of
every other backend, and in a cluster this node's share of the objects, were
down with it. Now a backend whose start() raises ``errors.BackendUnreachable``
(a store that does not answer, or answers that it is not serving now) is
replaced by a PendingBackend, and ObjectService tries its start() again in
the background until it succeeds, then puts the backend in its place. A wrong
setting (a refused password, a missing share or bucket) still stops the start:
that one does not pass by itself.
"""

from __future__ import annotations

from .. import errors
from ..backend import Backend

# Seconds between attempts: the first soon (a store that was restarting), then doubling up to the last.
RETRY_FIRST = 2.0
RETRY_MAX = 30.0


def retry_delays():
    """The waits before each attempt: 2, 4, 8, 16, 30, 30, ... seconds."""
    delay = RETRY_FIRST
    while True:
        yield delay
        delay = min(delay * 2, RETRY_MAX)


class PendingBackend(Backend):
    """Stands in for ``backend`` until its start() succeeds: every call is a 503 that says why.

    In a cluster a storing node's own storage failing this way is what a storage failure is
    anyway: its reads are relayed to the other nodes (services/cluster_nodes.py)."""

    def __init__(self, backend: Backend, reason: str):
        super().__init__(backend.name)
        self.backend = backend
        self.reason = reason
        self.capabilities = backend.capabilities
        self.min_part_size = backend.min_part_size

    def error(self) -> errors.BackendUnavailable:
        return errors.BackendUnavailable(
            f"{self.reason}. This backend has not been reachable since the gateway started; the gateway "
            f"tries again every {RETRY_MAX:g} s at most and serves its buckets once it answers. Retry later.")

    async def close(self) -> None:
        await self.backend.close()

    async def check_writable(self) -> None:
        raise self.error()

    async def create_bucket(self, bucket):
        raise self.error()

    async def delete_bucket(self, bucket):
        raise self.error()

    async def head_bucket(self, bucket):
        raise self.error()

    async def list_buckets(self):
        raise self.error()

    async def get(self, bucket, key, byte_range=None):
        raise self.error()

    async def get_if_present(self, bucket, key, byte_range=None):
        raise self.error()  # not None: "not here" would be a claim this backend cannot make now

    async def head_if_present(self, bucket, key):
        raise self.error()

    async def put(self, bucket, key, payload, meta):
        raise self.error()

    async def head(self, bucket, key):
        raise self.error()

    async def delete(self, bucket, key):
        raise self.error()

    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000):
        raise self.error()

    async def copy(self, src_bucket, src_key, dst_bucket, dst_key, meta=None):
        raise self.error()

    async def create_multipart(self, *args, **kwargs):
        raise self.error()

    async def get_upload(self, *args, **kwargs):
        raise self.error()

    async def upload_part(self, *args, **kwargs):
        raise self.error()

    async def list_parts(self, *args, **kwargs):
        raise self.error()

    async def list_uploads(self, *args, **kwargs):
        raise self.error()

    async def abort_multipart(self, *args, **kwargs):
        raise self.error()

    async def discard_uploads(self, *args, **kwargs):
        raise self.error()

    async def complete_multipart(self, *args, **kwargs):
        raise self.error()
