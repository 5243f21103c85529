"""RegistryOutage: a registry that does not answer is said once, reminded now and then, and its end logged
(gateway/cluster/registry_outage.py), with an injected clock."""

from __future__ import annotations

import logging

from gateway.cluster.registry_outage import REMIND_EVERY, RegistryOutage


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_said_once_reminded_every_minute_and_its_end_logged(caplog):
    clock = Clock()
    outage = RegistryOutage("etcd://127.0.0.1:2379", clock=clock)
    assert outage.up
    with caplog.at_level(logging.WARNING, logger="gateway.cluster"):
        outage.answered()  # nothing to say while it answers
        for _ in range(30):  # a heartbeat a second
            outage.failed(RuntimeError("connection refused"))
            clock.now += 1
        assert not outage.up and outage.failed_rounds == 30
        assert len(caplog.records) == 1 and "cannot be reached: connection refused" in caplog.text
        assert "etcd://127.0.0.1:2379" in caplog.text and "--registry" in caplog.text
        clock.now += REMIND_EVERY
        outage.failed(RuntimeError("connection refused"))
        assert len(caplog.records) == 2 and "still cannot be reached, for 90 s" in caplog.records[-1].getMessage()
        clock.now += 5
        outage.answered()
        assert outage.up and "answers again, after 95 s" in caplog.records[-1].getMessage()
        outage.answered()
        assert len(caplog.records) == 3
