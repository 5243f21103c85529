"""Statahead: fetch the next small files of a directory that a program reads in name order.

``cp -r``, ``tar c``, ``rsync``, ``grep -r``, ``sha256sum dir/*`` and a loop
over sorted names open the files of a directory one after another, in the
order the listing gives them. Through the mount each small file then costs
one GET, and the program waits for each (the lookup's or the first read's)
while the gateway has nothing else to do. Lustre answers the same pattern
with its "statahead" (and NFS with READDIRPLUS): once a program has asked
for a few files of one directory in ascending name order, the mount lists
the names that follow; once its next file is the next listed name (or one of
the few after it), the mount fetches up to ``window`` of the following small
files on a background thread, pipelined in batches on one connection, with
the same ranged GET a lookup sends (attributes and, for a small file, all of
its bytes), so the program's next lookups and reads find them ready.

Bounds and freshness (docs/fuse.md, "Statahead"):

* only objects of at most ``first_bytes`` (whole small files); at most
  ``window`` answers fetched or in flight per directory, ``DIRS`` directories
  followed at once (LRU): a few MiB at most;
* an answer is used only within ``ttl`` (the attribute TTL) of when it was
  fetched, the freshness a cached attribute gives, and never for a name this
  mount changed after its GET started (``changed``);
* a name that is not after the previous one, or far after it in the listing
  (a jump), ends the run. A program reading in random order costs a LIST now
  and then (four ascending names in a row happen by chance) and no GETs;
  what a wrong guess can cost is a window of GETs.

A program that asks for a name whose GET is in flight waits for that GET
instead of sending its own.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .client import ObjectClient, ObjectStat
from .meta import parent_of

log = logging.getLogger("gateway.fuse")

DIRS = 8  # directories followed at once
TRIGGER = 3  # ascending names in a row (after the first) before the names that follow are listed
NEAR = 4  # at most this many listed names skipped between two files of a run
LIST_BATCH = 4  # names listed at once, in windows
KEEP_LISTED = 4096  # listed names behind the program dropped beyond this
BATCH = 16  # GETs pipelined on one connection (one write, one wake-up of a worker)


@dataclass
class Fetched:
    """What a lookup's GET would have returned, and when it was fetched."""

    info: ObjectStat
    data: bytes
    at: float


class _Run:
    """One directory being read in name order."""

    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix  # "" for a bucket's top level, else "dir/"
        self.epoch = 0  # a jump starts a new epoch: answers of the old one are dropped
        self.pending: dict[str, Future] = {}  # name -> its GET in flight
        self.stale: set[str] = set()  # pending names this mount changed meanwhile, or of an old epoch
        self.ready: dict[str, Fetched] = {}
        self.listing = False  # a LIST is in flight (of any epoch: one at a time)
        self.restart()

    def restart(self, name: str = "") -> None:
        """A new run from ``name``: nothing listed, nothing confirmed, the answers of before dropped."""
        self.epoch += 1
        self.last = name  # the last name the program needed
        self.streak = 0  # ascending names in a row
        self.listed: list[str] = []  # names listed since the run began, ascending (objects and prefixes)
        self.skip: set[str] = set()  # listed names not fetched ahead: directories and large objects
        self.fetch_from = 0  # listed[fetch_from:] have not been asked for yet
        self.confirmed = False  # the program took listed names in order: fetch ahead
        self.base = ""  # the name the first LIST started after
        self.steps = 0  # names asked for since then
        self.near = 0  # steps to one of the next few listed names
        self.after: str | None = None  # the key the next LIST starts after
        self.exhausted = False  # the listing ended (or failed)
        self.ready.clear()
        self.stale.update(self.pending)

    def gap(self, previous: str, name: str) -> int | None:
        """How many listed names lie between two names the program asked for one after the other
        (None: the listing does not reach ``name`` yet)."""
        if not self.exhausted and (not self.listed or name > self.listed[-1]):
            return None
        return bisect_left(self.listed, name) - bisect_right(self.listed, previous)


class Statahead:
    """Fetches ahead for directories read in name order; shared by FUSE's threads."""

    def __init__(self, client: ObjectClient, *, window: int, first_bytes: int, ttl: float, workers: int = 1,
                 clock=time.monotonic):
        """``workers``: fetching threads. One: two took turns at the GIL with the FUSE threads and
        read fewer files a second (docs/fuse.md, "Numbers")."""
        self.client = client
        self.window = window
        self.first_bytes = first_bytes
        self.ttl = ttl
        self.clock = clock
        self.enabled = window > 0 and ttl > 0  # a TTL of 0 asks for every answer fresh
        self._closed = False
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="gateway-fuse-ahead") \
            if self.enabled else None
        self.stats = {"statahead_hits": 0, "statahead_fetched": 0, "statahead_gets": 0,
                      "statahead_lists": 0, "statahead_waits": 0}

    def take(self, path: str, wait: bool = True) -> Fetched | None:
        """The program needs ``path`` now: its answer if one was fetched ahead (with ``wait``, also
        when its GET is in flight), else None. Either way this notes the access, which may start or
        extend fetching ahead in its directory."""
        if not self.enabled or self._closed:
            return None
        directory, name = parent_of(path)
        with self._lock:
            run = self._run(directory)
            if run is None:
                return None
            fetched = run.ready.pop(name, None)
            pending = run.pending.get(name) if fetched is None and wait else None
            self._note(run, name)
        if pending is not None:
            with self._lock:
                self.stats["statahead_waits"] += 1
            try:
                pending.result(timeout=self.client.timeout * 2 + 1)
            except Exception:  # noqa: BLE001 - the program's own request will say what is wrong
                return None
            with self._lock:
                fetched = run.ready.pop(name, None)
        if fetched is None or self.clock() - fetched.at > self.ttl:
            return None
        with self._lock:
            self.stats["statahead_hits"] += 1
        return fetched

    def changed(self, path: str, tree: bool = False) -> None:
        """This mount changed ``path`` (or everything under it): forget what was fetched for it."""
        if not self.enabled:
            return
        directory, name = parent_of(path)
        with self._lock:
            if tree:
                for key in [k for k in self._runs if k == path or k.startswith(path.rstrip("/") + "/")]:
                    self._runs.pop(key).restart()
            run = self._runs.get(directory)
            if run is not None:
                run.ready.pop(name, None)
                if name in run.pending:
                    run.stale.add(name)

    def close(self) -> None:
        with self._lock:
            self._closed = True  # no more GETs are scheduled (the workers' own _pump calls included)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # Under the lock ------------------------------------------------------------

    def _run(self, directory: str) -> _Run | None:
        run = self._runs.get(directory)
        if run is not None:
            self._runs.move_to_end(directory)
            return run
        bucket, _, key = directory.lstrip("/").partition("/")
        if not bucket:
            return None  # the top level lists buckets, not objects
        run = self._runs[directory] = _Run(bucket, key + "/" if key else "")
        while len(self._runs) > DIRS:
            self._runs.popitem(last=False)[1].restart()
        return run

    def _note(self, run: _Run, name: str) -> None:
        previous = run.last
        if name == previous:
            return
        if not previous or name < previous:
            run.restart(name)
            return
        run.last = name
        run.streak += 1
        run.steps += 1
        for behind in [n for n in run.ready if n <= name]:  # skipped by the program
            del run.ready[behind]
        if run.listed or run.exhausted:
            gap = run.gap(previous, name)
            if gap is not None and gap >= NEAR:
                run.restart(name)
                return
            if gap is not None:
                # The next listed name, or twice one of the few after it (*.jpg among .txt files):
                # a random order hardly ever does either.
                run.near += 1
                run.confirmed = run.confirmed or gap == 0 or run.near >= 2
        elif run.streak >= TRIGGER and not run.listing:
            run.after = run.prefix + previous  # the listing starts with the name just asked for
            run.base = previous
            run.steps = 1
        self._pump(run)

    def _pump(self, run: _Run) -> None:
        """Once confirmed: keep up to a window of GETs fetched or in flight after the program's
        position. Keep a window of names listed beyond them (from the first LIST on)."""
        if self._closed:
            return
        listed = run.listed
        here = bisect_right(listed, run.last)  # listed[here:] are after the program's position
        if run.confirmed:
            start = max(run.fetch_from, here)
            # Refilled half a window at a time: whole batches (one write and one wake-up each),
            # sent while the other half still serves the program.
            batch_size = max(1, min(BATCH, self.window // 2))
            while start < len(listed):
                room = self.window - len(run.pending) - len(run.ready)
                if room < batch_size and (run.ready or run.pending or room <= 0):
                    break
                batch = []
                while start < len(listed) and len(batch) < min(room, batch_size):
                    name = listed[start]
                    start += 1
                    if name not in run.skip and name not in run.pending and name not in run.ready:
                        batch.append(name)
                if batch:
                    future = self._executor.submit(self._fetch, run, run.epoch, batch)
                    for name in batch:
                        run.pending[name] = future
            run.fetch_from = start
            if here > KEEP_LISTED:
                del listed[:here]
                run.fetch_from -= here
                here = 0
        unfetched = len(listed) - max(run.fetch_from, here)
        if run.after is not None and unfetched < self.window and not run.listing and not run.exhausted:
            run.listing = True
            self._executor.submit(self._list, run, run.epoch, run.after)

    # On the workers ------------------------------------------------------------

    def _list(self, run: _Run, epoch: int, start_after: str) -> None:
        try:
            page = self.client.list_page(run.bucket, run.prefix, "/", max_keys=self.window * LIST_BATCH,
                                         start_after=start_after)
        except Exception as exc:  # noqa: BLE001 - a guess failed: the program's own requests go on
            log.debug("statahead: listing %s/%s failed: %s", run.bucket, run.prefix, exc)
            page = None
        with self._lock:
            self.stats["statahead_lists"] += 1
            run.listing = False
            if run.epoch != epoch:
                return
            if page is None:
                run.exhausted = True
                return
            cut = len(run.prefix)
            files = {o.key[cut:]: o.size <= self.first_bytes and not o.key.endswith("/") for o in page.objects}
            directories = [p[cut:].rstrip("/") for p in page.prefixes]
            names = [*files, *directories]
            run.skip.update(name for name, small in files.items() if not small)
            run.skip.update(directories)
            run.listed.extend(sorted(n for n in names if not run.listed or n > run.listed[-1]))
            keys = [o.key for o in page.objects[-1:]] + page.prefixes[-1:]
            run.after = max(keys) if keys else run.after
            run.exhausted = not page.next_token or not keys
            if not run.confirmed:  # the names asked for since the LIST began: were they the listed ones?
                gap = run.gap(run.base, run.last)
                run.confirmed = gap is not None and gap <= 2 * (run.steps - 1)
            self._pump(run)

    def _fetch(self, run: _Run, epoch: int, names: list[str]) -> None:
        with self._lock:
            self.stats["statahead_gets"] += len(names)
        try:
            answers = self.client.get_first_many(run.bucket, [run.prefix + name for name in names], self.first_bytes)
        except Exception as exc:  # noqa: BLE001 - unreachable: the program's own lookups will say so
            log.debug("statahead: fetching %d files of %s/%s failed: %s", len(names), run.bucket, run.prefix, exc)
            answers = [None] * len(names)
        now = self.clock()
        with self._lock:
            for name, answer in zip(names, answers):
                run.pending.pop(name, None)
                stale = name in run.stale
                run.stale.discard(name)
                if answer is not None and not stale and run.epoch == epoch:
                    run.ready[name] = Fetched(answer[0], answer[1], now)
                    self.stats["statahead_fetched"] += 1
            if run.epoch == epoch:
                self._pump(run)
