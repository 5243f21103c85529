"""The small cluster classes on their own: health with a hand-driven clock, cache, merge, signing, balancer."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.backend import ListPage, ObjectInfo
from gateway.cluster.balancer import Balancer
from gateway.cluster.health import PeerHealth
from gateway.cluster.listing import differing_copies, merge_pages
from gateway.cluster.locations import NOWHERE, LocationCache
from gateway.cluster.peer_auth import PeerAuthError, PeerSigner
from gateway.cluster.stall import StallWatch
from gateway.cluster.watchers import MissWatchers
from gateway.testing.clock import ManualClock


def test_failed_peer_goes_last_until_it_answers_again():
    clock = ManualClock()
    health = PeerHealth(clock)
    health.succeeded("a", 0.010)
    health.succeeded("b", 0.002)
    assert health.order(["a", "b", "c"]) == ["c", "b", "a"]  # unknown peers count as fast until measured
    health.failed("b", "timed out")
    assert health.limited("b")
    assert health.order(["a", "b", "c"]) == ["c", "a", "b"]
    clock.now += 3600  # time alone does not make it healthy: only an answer does
    assert health.split(["a", "b"]) == (["a"], ["b"])
    assert health.snapshot()["b"]["limited_for"] == 3600
    assert health.snapshot()["b"]["last_error"] == "timed out"
    health.succeeded("b", 0.001)
    assert not health.limited("b")
    assert health.order(["a", "b"])[0] == "b"


def test_longest_failing_peer_is_tried_last():
    clock = ManualClock()
    health = PeerHealth(clock)
    health.failed("old", "refused")
    clock.now += 5
    health.failed("new", "refused")
    health.failed("old", "refused")  # a second failure keeps the original start of the streak
    assert health.order(["old", "new"]) == ["new", "old"]
    assert health.snapshot()["old"]["failures"] == 2


def test_latency_is_smoothed():
    health = PeerHealth(ManualClock())
    health.succeeded("a", 1.0)
    health.succeeded("a", 0.0)
    assert health.snapshot()["a"]["latency_ms"] == pytest.approx(700.0)


def test_location_cache_expires_bounds_and_forgets():
    clock = ManualClock()
    cache = LocationCache(hit_ttl=10, miss_ttl=1, max_entries=2, clock=clock)
    cache.found("b", "k1", "r1")
    cache.missing("b", "k2")
    assert cache.get("b", "k1") == "r1" and cache.get("b", "k2") == NOWHERE
    clock.now += 1.5
    assert cache.get("b", "k2") is None and cache.get("b", "k1") == "r1"
    cache.found("b", "k3", "r2")
    cache.found("b", "k4", "r2")  # over the bound: the least recently used entry goes
    assert len(cache) == 2 and cache.get("b", "k1") is None
    cache.forget("b", "k4")
    assert cache.get("b", "k4") is None
    clock.now += 11
    assert cache.get("b", "k3") is None


def test_a_miss_found_by_a_lookup_that_a_write_overtook_is_not_cached():
    """A write of the key while the lookup was asking (forget) keeps that lookup's miss out of the
    cache; a lookup that began after it caches its miss as usual, and so does one after a drop (the
    lookup's own removal of an entry found wrong)."""
    clock = ManualClock()
    cache = LocationCache(miss_ttl=1, clock=clock)
    asked_at = clock()
    clock.now += 0.1
    cache.forget("b", "k")  # the key was written meanwhile
    clock.now += 0.1
    cache.missing("b", "k", asked_at)
    assert cache.get("b", "k") is None
    cache.missing("b", "k", clock())
    assert cache.get("b", "k") == NOWHERE
    cache.found("b", "k2", "r1")
    asked_at = clock()
    cache.drop("b", "k2")
    cache.missing("b", "k2", asked_at)
    assert cache.get("b", "k2") == NOWHERE


def test_forgotten_keys_are_kept_bounded_in_number_and_time():
    clock = ManualClock()
    cache = LocationCache(max_entries=3, clock=clock)
    for n in range(5):
        cache.forget("b", f"k{n}")
    assert list(cache._forgotten) == [("b", "k2"), ("b", "k3"), ("b", "k4")]
    clock.now += cache.forgotten_for + 1
    cache.forget("b", "new")
    assert list(cache._forgotten) == [("b", "new")]


def test_miss_watchers_are_taken_once_and_expire():
    clock = ManualClock()
    watchers = MissWatchers(keep=5, max_entries=2, clock=clock)
    watchers.note("b", "k", "x1")
    watchers.note("b", "k", "r1")
    watchers.note("b", "k", "x1")
    assert watchers.take("b", "k") == ["r1", "x1"]
    assert watchers.take("b", "k") == []  # told once
    watchers.note("b", "old", "x1")
    clock.now += 6
    watchers.note("b", "old", "x2")
    assert watchers.take("b", "old") == ["x2"]  # x1's miss has expired there by now
    watchers.note(".multipart", "record", "x1")  # the gateway's own records are never polled for
    assert len(watchers) == 0
    for key in ("k1", "k2", "k3"):
        watchers.note("b", key, "x1")
    assert len(watchers) == 2 and watchers.take("b", "k1") == []  # bounded: the oldest went


def info(key: str, modified: float = 1.0) -> ObjectInfo:
    return ObjectInfo(key, 1, "e", modified)


def test_merge_orders_dedupes_and_pages():
    a = ListPage([info("a"), info("c", 1.0)], ["p/"], is_truncated=False)
    b = ListPage([info("b"), info("c", 2.0)], ["p/", "q/"], is_truncated=False)
    merged = merge_pages([a, b], max_keys=3)
    assert [o.key for o in merged.objects] == ["a", "b", "c"] and merged.objects[2].last_modified == 2.0
    assert merged.common_prefixes == [] and merged.is_truncated and merged.next_marker == "c"
    whole = merge_pages([a, b], max_keys=10)
    assert whole.common_prefixes == ["p/", "q/"] and not whole.is_truncated and whole.next_marker == ""


def test_merge_is_truncated_when_a_source_is():
    a = ListPage([info("a"), info("b")], [], is_truncated=True, next_marker="b")
    merged = merge_pages([a, ListPage([], [])], max_keys=2)
    assert merged.is_truncated and merged.next_marker == "b"


def test_merge_orders_by_utf8_bytes():
    merged = merge_pages([ListPage([info("é")], []), ListPage([info("z")], [])], max_keys=10)
    assert [o.key for o in merged.objects] == ["z", "é"]


def test_merge_keeps_the_newer_copy_by_time_then_etag():
    # The order every node applies to versions (wire.is_older): equal times go by ETag, whatever page comes first.
    one, other = ObjectInfo("k", 1, "e1", 5.0), ObjectInfo("k", 1, "e2", 5.0)
    for pages in ([ListPage([one], []), ListPage([other], [])], [ListPage([other], []), ListPage([one], [])]):
        assert merge_pages(pages, max_keys=10).objects == [other]


def test_differing_copies_are_keys_listed_in_different_versions():
    same = ObjectInfo("same", 1, "e", 1.0)
    pages = {"r1": ListPage([info("a", 2.0), same, info("z", 2.0)], []),
             "r2": ListPage([info("a", 1.0), same], []),
             "p1": ListPage([info("a", 1.0), info("only-here")], [])}
    differing = differing_copies(pages)
    assert list(differing) == ["a"]  # the same version on two nodes is no stale copy
    assert {node: i.last_modified for node, i in differing["a"].items()} == {"r1": 2.0, "r2": 1.0, "p1": 1.0}
    assert differing_copies(pages, up_to="Z") == {}  # only keys up to a merged page's last one
    assert list(differing_copies({"r1": pages["r1"], "r2": ListPage([info("z", 1.0)], [])}, up_to="y")) == []


def test_peer_signatures():
    clock = ManualClock(1_000_000.0)
    signer = PeerSigner("secret-0123456789abcdef", "p1", clock)
    headers = signer.headers("GET", "/_cluster/v1/objects/b/k?x=1")
    other = PeerSigner("secret-0123456789abcdef", "r1", clock)
    assert other.verify("GET", "/_cluster/v1/objects/b/k?x=1", headers["x-cluster-auth"], "p1") == "p1"
    with pytest.raises(PeerAuthError):  # another path
        other.verify("GET", "/_cluster/v1/objects/b/other", headers["x-cluster-auth"], "p1")
    with pytest.raises(PeerAuthError):  # another method
        other.verify("DELETE", "/_cluster/v1/objects/b/k?x=1", headers["x-cluster-auth"], "p1")
    with pytest.raises(PeerAuthError):  # another claimed node
        other.verify("GET", "/_cluster/v1/objects/b/k?x=1", headers["x-cluster-auth"], "r2")
    with pytest.raises(PeerAuthError):  # another cluster
        PeerSigner("another-secret-0123456789", "r1", clock).verify(
            "GET", "/_cluster/v1/objects/b/k?x=1", headers["x-cluster-auth"], "p1")
    clock.now += 120
    with pytest.raises(PeerAuthError, match="away from ours"):  # replayed later
        other.verify("GET", "/_cluster/v1/objects/b/k?x=1", headers["x-cluster-auth"], "p1")
    with pytest.raises(PeerAuthError):
        other.verify("GET", "/x", None, None)


@pytest.mark.parametrize("secret", ["s", "secret-0123456789abcdef", "x" * 64, "y" * 65, "é" * 100])
def test_peer_signatures_are_hmac_sha256(secret):
    """The signer's HMAC with precomputed states is RFC 2104's: the same hex digest as hmac.new, for
    keys shorter than, as long as and longer than SHA-256's 64-byte block (then hashed first)."""
    import hashlib
    import hmac

    clock = ManualClock(1_000_000.0)
    value = PeerSigner(secret, "p1", clock).headers("GET", "/_cluster/v1/s3/b/k")["x-cluster-auth"]
    stamp, digest = value.split(":")
    message = f"GET\n/_cluster/v1/s3/b/k\n{stamp}\np1".encode()
    assert digest == hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_balancer_prefers_the_less_busy_of_two():
    balancer = Balancer(random.Random(7))
    with balancer.track("busy"), balancer.track("busy"):
        picks = {balancer.choose(["busy", "idle"]) for _ in range(20)}
    assert picks == {"idle"}
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(300):
        counts[balancer.choose(list(counts))] += 1
    assert min(counts.values()) > 50, counts  # all idle: spread over every node
    assert balancer.snapshot()["busy"] == {"placed": 2, "reads": 0, "outstanding": 0}
    end = balancer.begin("idle")
    balancer.served_read("idle", "get")
    assert balancer.least_busy(["idle", "busy"]) == "busy"
    end()
    end()  # a second call changes nothing
    assert balancer.snapshot()["idle"] == {"placed": 0, "reads": 1, "outstanding": 0}
    assert balancer.served["idle", "get"] == 1 and balancer.served["busy", "put"] == 2


def test_newer_version_wins_and_ties_are_ordered_by_etag():
    from gateway.cluster.wire import is_older

    copy = ObjectInfo("k", 1, "bbb", 100.0)
    assert is_older(copy, 100.5, "aaa")  # later wins
    assert not is_older(copy, 99.0, "zzz")
    assert is_older(copy, 100.0, "ccc") and not is_older(copy, 100.0, "aaa")  # same time: both sides agree
    assert not is_older(copy, 100.0, "bbb")  # the same version


def test_supersede_local_drops_an_older_copy_and_reports_a_newer_one():
    import asyncio

    from gateway_plugins.memory import MemoryBackend

    from gateway.backend import ObjectMeta
    from gateway.cluster.versions import supersede_local
    from gateway.payload import Payload

    async def body(data: bytes):
        yield data

    async def scenario():
        local = MemoryBackend()
        await local.create_bucket("b")
        mine = await local.put("b", "k", Payload(body(b"mine")), ObjectMeta())
        # Our copy is newer than the version another node wrote: kept and reported.
        assert await supersede_local(local, "b", "k", mine.last_modified - 1, "x") == mine
        assert await supersede_local(local, "b", "k", mine.last_modified, mine.etag) is None  # same version
        assert await local.exists("b", "k")
        # An older copy goes.
        assert await supersede_local(local, "b", "k", mine.last_modified + 1, "x") is None
        assert not await local.exists("b", "k")
        assert await supersede_local(local, "missing-bucket", "k", 1.0, "x") is None

    asyncio.run(scenario())


def test_location_cache_counts_lookups():
    clock = ManualClock()
    cache = LocationCache(clock=clock)
    cache.get("b", "k")
    cache.found("b", "k", "r1")
    cache.get("b", "k")
    cache.missing("b", "gone")
    cache.get("b", "gone")
    assert (cache.hits, cache.negative_hits, cache.misses) == (1, 1, 1)


def test_metrics_exposition_escapes_labels():
    from gateway.api.metrics import Exposition

    out = Exposition()
    out.family("x_total", "counter", "Things.", [({"peer": 'a"b\\c\nd'}, 3), ({}, 0.5)])
    assert out.text().splitlines() == ["# HELP x_total Things.", "# TYPE x_total counter",
                                       'x_total{peer="a\\"b\\\\c\\nd"} 3', "x_total 0.5"]


def test_peer_call_labels():
    from gateway.cluster.relay import object_path, operation, outcome

    assert operation("GET", object_path("b", "k/1")) == "get"
    assert operation("DELETE", object_path("b", "k") + "?if-older-than=1.5&etag=e") == "supersede"
    assert operation("DELETE", object_path("b", "k")) == "delete"
    assert operation("GET", "/_cluster/v1/list/b?prefix=") == "list"
    assert operation("PUT", "/_cluster/v1/buckets/b") == "bucket"
    assert operation("GET", "/_cluster/v1/buckets") == "buckets"
    assert operation("GET", "/_cluster/v1/ping") == "ping"
    assert [outcome(s) for s in (200, 204, 404, 409, 503)] == ["ok", "ok", "missing", "error", "error"]


def test_stall_watch_sees_a_gap_between_ticks_and_forgets_it_soon_after():
    clock = ManualClock()
    watch = StallWatch(2.0, clock, interval=0.25)
    stalls = []
    watch.on_stall = lambda: stalls.append(clock.now)  # the cluster catches up on overwrites (reads_held)
    for _ in range(20):  # a loop that runs: ticks 0.25 s apart
        clock.now += 0.25
        watch.tick()
        assert not watch.stalled_recently()
    clock.now += 1.9  # slow, not stopped: under the limit
    watch.tick()
    assert not watch.stalled_recently() and stalls == []
    clock.now += 30  # SIGSTOP for 30 s, then SIGCONT
    watch.tick()
    assert watch.stalled_recently() and stalls == [clock.now]
    clock.now += 0.4
    watch.tick()
    assert watch.stalled_recently()  # writes sent during the stall may still be being read
    clock.now += 0.2
    watch.tick()
    assert not watch.stalled_recently()  # 0.6 s later: a write now is a fresh one
    assert len(stalls) == 1  # told once per stall


def test_stall_watch_counts_a_stall_whose_tick_is_still_overdue():
    """A request handled right after the process ran again, before the overdue tick: still a stall."""
    clock = ManualClock()
    watch = StallWatch(2.0, clock, interval=0.25)

    async def main():
        watch.start()
        try:
            assert not watch.stalled_recently()
            clock.now += 10
            assert watch.stalled_recently()
        finally:
            watch.stop()

    asyncio.run(main())
