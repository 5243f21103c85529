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
    anyway: its reads are relayed to the other nodes (services/cluster_nodes/)."""

    def __init__(self, backend: Backend, reason: str):
        super().__init__(backend.name)
        self.backend = backend
        self.reason = reason
        self.capabilities = backend.capabilities
        self.min_part_size = backend.min_part_size

    def error(self) -> errors.BackendUnavailable:
        error = errors.BackendUnavailable(
            f"{self.reason}. This backend has not been reachable since the gateway started; the gateway "
            f"tries again every {RETRY_MAX:g} s at most and serves its buckets once it answers. Retry later.")
        error.not_started = True  # said at once, nothing was asked (cluster/retirements.py goes on with others)
        return error

    async def close(self) -> None:
        await self.backend.close()

    async def _unavailable(self, *args, **kwargs):
        raise self.error()

    # Every call on the store (get_if_present too: None, "not here", is a claim it cannot make now).
    check_writable = create_bucket = delete_bucket = head_bucket = list_buckets = _unavailable
    get = get_if_present = head = head_if_present = put = delete = list = copy = _unavailable
    create_multipart = get_upload = upload_part = list_parts = list_uploads = _unavailable
    abort_multipart = discard_uploads = complete_multipart = _unavailable
