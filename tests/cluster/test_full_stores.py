"""FullStores (gateway/cluster/full.py) with an injected clock: which stores are left out, and for how long."""

from __future__ import annotations

import errno

import pytest

from gateway import errors
from gateway.cluster.full import FullStores
from gateway.testing.clock import ManualClock


def test_a_store_noted_full_is_left_out_until_the_retry_time_has_passed_since_it_was_last_seen():
    clock = ManualClock()
    full = FullStores(60, clock)
    full.note("r1", "local")
    assert full.is_full("r1", "local")
    assert not full.is_full("r1", "archive") and not full.is_full("r2", "local")
    clock.now += 59
    full.note("r1", "local")  # seen full again: counted from now
    clock.now += 59
    assert full.is_full("r1", "local") and full.of("r1") == ["local"]
    clock.now += 1
    assert not full.is_full("r1", "local") and full.of("r1") == []


@pytest.mark.parametrize("failure", [errors.InsufficientStorage("full"), OSError(errno.ENOSPC, "No space left"),
                                     OSError(errno.EDQUOT, "Disk quota exceeded")])
def test_a_full_storage_error_is_noted_and_raised_on(failure):
    full = FullStores(60, ManualClock())
    with pytest.raises(type(failure)), full.noting("p1", "local"):
        raise failure
    assert full.of("p1") == ["local"]


@pytest.mark.parametrize("failure", [errors.ServiceUnavailable("down"), OSError(errno.EIO, "I/O error"),
                                     errors.NoSuchBucket("gone")])
def test_other_failures_are_not_a_full_store(failure):
    full = FullStores(60, ManualClock())
    with pytest.raises(type(failure)), full.noting("p1", "local"):
        raise failure
    assert full.of("p1") == []
