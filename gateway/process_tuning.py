"""What `gateway serve` sets on its own process before it starts: open files, garbage collection, CPU scheduling.

Each is a measured choice for a long-running server whose work comes in
batches per event-loop iteration (docs/performance.md, "Process settings").
"""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger(__name__)

# Allocations of container objects between two young-generation collections (CPython's default: 700).
# A relayed GET allocates a few hundred (coroutines, futures, dicts, lists): at 700 the collector ran
# every two or three requests, ~7% of the relaying node's CPU (perf). Young objects still die young;
# what survives is collected by the older generations as before.
GC_YOUNG_THRESHOLD = 10_000


def raise_open_file_limit(target: int = 65536) -> None:
    """Raise the soft limit on open files to the hard one (at most ``target``), as nginx's
    worker_rlimit_nofile does: connections and the local backend's open files share it
    (docs/storage-layout.md, "Reading"). The soft limit is often 1,024; the hard one much higher."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.info("could not raise the open-file limit from %d to %d: %s", soft, want, exc)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off what lives as long as the process, and run it less often.

    Called once everything is imported and the app is built: ``gc.freeze`` moves the objects that
    exist then (modules, classes, the app; hundreds of thousands with boto3 and FastAPI loaded)
    out of the collector's reach, so its full collections no longer walk them (as Instagram's
    servers do). The young generation is collected every GC_YOUNG_THRESHOLD allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def set_cpu_scheduling(policy: str) -> None:
    """Run this process (and the threads it starts from now on) under ``policy``: "batch" or "normal".

    "batch" is Linux's SCHED_BATCH: the same share of the CPU, but a gateway woken by a message
    does not preempt the process that is running. Where processes that talk to each other share a
    CPU (a proxy and a storing node on one host, a FUSE mount and its gateway, nodes on one test
    machine), a woken receiver used to interrupt the sender at its first write, answer one
    request, and hand the CPU back: for a relayed GET with both nodes on one core, 25,000 context
    switches per 40,000 requests and 188 µs of CPU per request. Under SCHED_BATCH the sender
    finishes its batch and the receiver takes all of it at once: 2,000 switches, 129 µs
    (docs/performance.md, "Process settings"). "normal" is SCHED_OTHER, the default of processes."""
    wanted = {"batch": os.SCHED_BATCH, "normal": os.SCHED_OTHER}[policy]
    if os.sched_getscheduler(0) == wanted:
        return
    try:
        os.sched_setscheduler(0, wanted, os.sched_param(0))
    except OSError as exc:  # e.g. a real-time policy set by the service manager, which needs privileges to leave
        log.warning("could not set the CPU scheduling policy to %s (cpu_scheduling): %s; running under the "
                    "one this process started with", policy, exc)
