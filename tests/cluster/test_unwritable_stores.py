"""FullStores and FailedStores (gateway/cluster/unwritable.py) with an injected clock: which stores are
left out of write placement, for which failures, and for how long."""

from __future__ import annotations

import errno

import pytest

from gateway import errors
from gateway.cluster.unwritable import FailedStores, FullStores
from gateway.services.cluster_nodes import unreachable_error, write_unreachable_error
from gateway.testing.clock import ManualClock


@pytest.mark.parametrize("kind", [FullStores, FailedStores])
def test_a_store_noted_is_left_out_until_the_retry_time_has_passed_since_it_was_last_seen(kind):
    clock = ManualClock()
    marks = kind(60, clock)
    marks.note("r1", "local")
    assert marks.left_out("r1", "local")
    assert not marks.left_out("r1", "archive") and not marks.left_out("r2", "local")
    clock.now += 59
    marks.note("r1", "local")  # seen so again: counted from now
    clock.now += 59
    assert marks.left_out("r1", "local") and marks.of("r1") == ["local"] and marks.noted() == [("r1", "local")]
    clock.now += 1
    assert not marks.left_out("r1", "local") and marks.of("r1") == [] and marks.noted() == []


FULL = [errors.InsufficientStorage("full"), OSError(errno.ENOSPC, "No space left"),
        OSError(errno.EDQUOT, "Disk quota exceeded")]
FAILED = [
    errors.BackendUnavailable("backend 'nas': the shared storage failed"),
    errors.BackendUnreachable("backend 's3': the remote store cannot be reached"),
    OSError(errno.EIO, "Input/output error"), OSError(errno.EROFS, "Read-only file system"),
    OSError(errno.ESTALE, "Stale file handle"),
    errors.storage_error(OSError(errno.EROFS, "Read-only file system")),  # as a peer answers it
]
NEITHER = [
    errors.ServiceUnavailable("a peer failed while answering a PUT"), errors.SlowDown("busy"),
    errors.NoSuchBucket("gone"), errors.InternalError("bug"), OSError(errno.EACCES, "Permission denied"),
    # The cluster's own 503s name a node that could not be reached: PeerHealth's business, not a store's.
    write_unreachable_error("The write of object 'k'", "r2"), unreachable_error("Object 'k'", ["r2"]),
]


@pytest.mark.parametrize("failure,noted", [(f, "full") for f in FULL] + [(f, "failed") for f in FAILED]
                         + [(f, None) for f in NEITHER])
def test_a_write_failure_notes_the_store_full_failed_or_neither_and_is_raised_on(failure, noted):
    full, failed = FullStores(60, ManualClock()), FailedStores(60, ManualClock())
    with pytest.raises(type(failure)), full.noting("p1", "local"), failed.noting("p1", "local"):
        raise failure
    assert (full.of("p1"), failed.of("p1")) == (["local"] if noted == "full" else [],
                                                ["local"] if noted == "failed" else [])


def test_a_storage_os_error_is_answered_507_or_503_naming_the_cause_and_anything_else_is_left_alone():
    full = errors.storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full.status == 507 and "is full (No space left on device)" in full.message
    failed = errors.storage_error(OSError(errno.EROFS, "Read-only file system"), "the storage of cluster node r1")
    assert failed.status == 503 and failed.code == "ServiceUnavailable" and failed.retry_after
    assert failed.message.startswith("The storage of cluster node r1 failed (Read-only file system, errno 30)")
    assert "dmesg" in failed.message
    # Files of another user (restored or copied as root): the operator's to fix, a 503 that says how.
    denied = errors.storage_error(OSError(errno.EACCES, "Permission denied", "/var/lib/cv-storage/b/k%obj"))
    assert denied.status == 503 and "Permission denied: /var/lib/cv-storage/b/k%obj" in denied.message
    assert "chown -R" in denied.message
    assert errors.storage_error(OSError(errno.ENOENT, "No such file or directory")) is None
    assert errors.storage_error(ValueError("no")) is None
