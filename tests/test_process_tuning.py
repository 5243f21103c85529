"""What `gateway serve` sets on its own process: CPU scheduling policy and garbage collection."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_settings
from gateway.testing.server import GatewayProcess


def _policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of ``pid``."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_serve_runs_every_thread_under_batch_scheduling_by_default(tmp_path):
    gateway = GatewayProcess(tmp_path / "cv-storage")
    gateway.start()
    try:
        gateway.client().list_buckets()  # a request served: the worker threads exist by now
        assert _policies(gateway.process.pid) == {os.SCHED_BATCH}
    finally:
        gateway.stop()


def test_cpu_scheduling_normal_runs_the_process_under_the_default_policy(tmp_path):
    class StartedUnderBatch(GatewayProcess):
        def command(self):  # started under SCHED_BATCH: "normal" must set SCHED_OTHER, not keep what it got
            return ["chrt", "--batch", "0", *super().command()]

    gateway = StartedUnderBatch(tmp_path / "cv-storage", env={"GATEWAY_CPU_SCHEDULING": "normal"})
    gateway.start()
    try:
        gateway.client().list_buckets()
        assert _policies(gateway.process.pid) == {os.SCHED_OTHER}
    finally:
        gateway.stop()


def test_an_unknown_cpu_scheduling_policy_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("GATEWAY_CPU_SCHEDULING", "realtime")
    with pytest.raises(ConfigError, match="cpu_scheduling") as failure:
        load_settings(None)
    assert "batch" in str(failure.value) and "normal" in str(failure.value)


def test_tune_gc_freezes_what_exists_and_collects_the_young_generation_less_often():
    script = ("import gc; from gateway import process_tuning as t; before = gc.get_threshold(); t.tune_gc(); "
              "print(before[0], gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:], gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "700" and out[1] == "10000" and out[2] == "True", out
    assert int(out[3]) > 1_000, out  # what the interpreter and the imports made: frozen
