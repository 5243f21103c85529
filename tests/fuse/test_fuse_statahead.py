"""Statahead (gateway/fuse/statahead.py): the small files of a directory read in name order are
fetched ahead, pipelined; every answer is the object's bytes, nothing older than the attribute TTL
or changed by the mount is served, and a wrong guess costs at most a window of GETs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time

import pytest

from gateway.fuse.client import ObjectClient
from gateway.fuse.statahead import Statahead
from gateway.testing.clock import ManualClock


def _stats(mount) -> dict:
    return json.loads((mount.path / ".cv-gateway-stats").read_text())


def _fill(fuse_gw, bucket: str, count: int, prefix: str = "d/") -> dict[int, bytes]:
    s3 = fuse_gw.client()
    bodies = {}
    for n in range(count):
        bodies[n] = os.urandom(1000 + n)
        s3.put_object(Bucket=bucket, Key=f"{prefix}{n:03d}.jpg", Body=bodies[n])
    s3.put_object(Bucket=bucket, Key=f"{prefix}zz-big.bin", Body=b"B" * (300 * 1024))  # not fetched ahead
    return bodies


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_files_opened_by_name_in_order_come_from_statahead(fuse_gw, bucket, mount_factory):
    bodies = _fill(fuse_gw, bucket, 120)
    mount = mount_factory()
    base = mount.path / bucket / "d"
    for n in range(120):
        assert (base / f"{n:03d}.jpg").read_bytes() == bodies[n]
    assert (base / "zz-big.bin").read_bytes() == b"B" * (300 * 1024)
    stats = _stats(mount)
    assert stats["statahead_hits"] >= 110, stats
    # Each file was fetched once: by the program (the first three) or ahead of it, never both
    # (a program asking for a file whose GET is in flight waits for it). Plus the directory's own
    # lookup and the big file's reads.
    assert stats["requests"]["GET"] <= 120 + 4, stats
    assert stats["statahead_fetched"] <= 120


def test_a_tool_reading_a_listed_directory_gets_its_files_ahead(fuse_gw, bucket, mount_factory):
    """sha256sum dir/*: readdir first (attributes from the listing), then the reads fetch the bytes."""
    bodies = _fill(fuse_gw, bucket, 80)
    mount = mount_factory()
    out = subprocess.run("sha256sum -- *.jpg", shell=True, cwd=mount.path / bucket / "d", capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    assert out == [f"{hashlib.sha256(bodies[n]).hexdigest()}  {n:03d}.jpg" for n in range(80)]
    stats = _stats(mount)
    assert stats["statahead_hits"] >= 70, stats
    assert stats["requests"]["GET"] <= 80 + 2, stats


def test_reading_in_random_order_wastes_at_most_a_window(fuse_gw, bucket, mount_factory):
    bodies = _fill(fuse_gw, bucket, 100)
    mount = mount_factory(["--statahead", "16"])
    order = list(range(100))
    random.Random(7).shuffle(order)
    for n in order:
        assert (mount.path / bucket / "d" / f"{n:03d}.jpg").read_bytes() == bodies[n]
    stats = _stats(mount)
    # Four ascending names in a row happen in a shuffle (a LIST each), the next listed name after
    # them hardly ever: no GETs on a wrong guess.
    assert stats["requests"]["GET"] <= 100 + 1 + stats["statahead_gets"], stats
    assert stats["statahead_lists"] <= 12, stats
    assert stats["statahead_gets"] <= 16, stats


def test_statahead_0_turns_it_off(fuse_gw, bucket, mount_factory):
    bodies = _fill(fuse_gw, bucket, 20)
    mount = mount_factory(["--statahead", "0"])
    for n in range(20):
        assert (mount.path / bucket / "d" / f"{n:03d}.jpg").read_bytes() == bodies[n]
    stats = _stats(mount)
    assert stats["statahead_fetched"] == stats["statahead_lists"] == 0


def test_an_answer_older_than_the_attribute_ttl_is_not_served(fuse_gw, bucket, mount_factory):
    bodies = _fill(fuse_gw, bucket, 40)
    mount = mount_factory(["--attr-ttl", "1", "--dir-ttl", "1"])
    base = mount.path / bucket / "d"
    for n in range(5):
        assert (base / f"{n:03d}.jpg").read_bytes() == bodies[n]
    _wait_for(lambda: _stats(mount)["statahead_fetched"] >= 20)
    fuse_gw.client().put_object(Bucket=bucket, Key="d/010.jpg", Body=b"replaced by another client")
    time.sleep(1.3)
    for n in range(5, 40):
        expected = b"replaced by another client" if n == 10 else bodies[n]
        assert (base / f"{n:03d}.jpg").read_bytes() == expected


def test_changes_made_through_the_mount_are_never_undone_by_a_prefetched_answer(fuse_gw, bucket, mount_factory):
    bodies = _fill(fuse_gw, bucket, 40)
    mount = mount_factory()
    base = mount.path / bucket / "d"
    for n in range(5):
        assert (base / f"{n:03d}.jpg").read_bytes() == bodies[n]
    _wait_for(lambda: _stats(mount)["statahead_fetched"] >= 20)
    (base / "010.jpg").write_bytes(b"rewritten")
    (base / "011.jpg").unlink()
    (base / "012.jpg").rename(base / "012.moved")
    for n in range(5, 40):
        path = base / f"{n:03d}.jpg"
        if n in (11, 12):
            assert not path.exists()
        else:
            assert path.read_bytes() == (b"rewritten" if n == 10 else bodies[n])
    assert (base / "012.moved").read_bytes() == bodies[12]


# The Statahead object itself, against the real gateway, with an injected clock ------------------------


@pytest.fixture
def ahead_of(fuse_gw):
    made = []

    def make(window: int, clock) -> Statahead:
        client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key, pool_size=2)
        ahead = Statahead(client, window=window, first_bytes=64 * 1024, ttl=5.0, clock=clock)
        made.append((ahead, client))
        return ahead

    yield make
    for ahead, client in made:
        ahead.close()
        client.close()


def test_statahead_lists_then_confirms_then_keeps_a_window(fuse_gw, bucket, ahead_of):
    bodies = _fill(fuse_gw, bucket, 60)
    clock = ManualClock()
    ahead = ahead_of(8, clock)
    path = f"/{bucket}/d/{{:03d}}.jpg".format
    assert [ahead.take(path(n)) for n in (0, 1, 2, 9)] == [None] * 4  # four ascending names: a LIST
    _wait_for(lambda: ahead.stats["statahead_lists"] >= 1)
    time.sleep(0.2)
    assert ahead.stats["statahead_gets"] == 0  # not yet: 002 -> 009 skipped six listed names
    assert ahead.take(path(10)) is None  # the next listed name: fetch ahead
    _wait_for(lambda: ahead.stats["statahead_fetched"] >= 8)
    time.sleep(0.2)
    assert ahead.stats["statahead_gets"] == 8  # a window (011..018), no more, until the program moves on
    got = ahead.take(path(11))
    assert (got.data, got.info.size, got.info.key) == (bodies[11], len(bodies[11]), "d/011.jpg")
    ahead.changed(path(12))  # this mount changed 012: its answer is dropped
    assert ahead.take(path(12)) is None
    assert ahead.take(path(13)).data == bodies[13]
    clock.now += 5.1  # older than the TTL
    assert ahead.take(path(14)) is None
    # Refilled half a window at a time: 019..022 were fetched when 014 was taken (after the clock moved).
    _wait_for(lambda: ahead.stats["statahead_fetched"] >= 12)
    time.sleep(0.2)
    assert ahead.stats["statahead_gets"] == 12
    assert ahead.take(path(15)) is None
    got = ahead.take(path(19))  # 016..018 skipped: still the same run
    assert got is not None and got.data == bodies[19]
    assert ahead.stats["statahead_hits"] == 3


def test_a_jump_ends_the_run_and_drops_its_answers(fuse_gw, bucket, ahead_of):
    _fill(fuse_gw, bucket, 60)
    ahead = ahead_of(8, ManualClock())
    path = f"/{bucket}/d/{{:03d}}.jpg".format
    for n in range(5):  # the LIST after 002 arrives after 003 and 004 were asked for: fetch ahead
        ahead.take(path(n))
    _wait_for(lambda: ahead.stats["statahead_fetched"] >= 8)
    assert ahead.take(path(1)) is None  # back: a new run
    assert ahead.take(path(6)) is None  # the old run's answers are gone
    for n in (7, 8, 9, 10):
        ahead.take(path(n))
    _wait_for(lambda: ahead.stats["statahead_fetched"] >= 16)  # a new run, confirmed by 010
    assert ahead.take(path(30)) is None  # far ahead in the listing: a jump too
    assert ahead.take(path(11)) is None
    assert ahead.stats["statahead_hits"] == 0
    ahead.changed(f"/{bucket}/d", tree=True)
    assert ahead.take(path(12)) is None


def test_a_buckets_top_level_is_fetched_ahead_too(fuse_gw, bucket, mount_factory):
    bodies = _fill(fuse_gw, bucket, 40, prefix="")
    fuse_gw.client().put_object(Bucket=bucket, Key="015.jpg.d/inner", Body=b"a directory among the files")
    mount = mount_factory()
    for n in range(40):
        assert (mount.path / bucket / f"{n:03d}.jpg").read_bytes() == bodies[n]
    stats = _stats(mount)
    assert stats["statahead_hits"] >= 30, stats
    assert stats["requests"]["GET"] <= 40 + 1, stats
