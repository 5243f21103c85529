"""A scenario: a subject and its references measured in interleaved rounds, then compared."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

# Fields of a round that are summarised by their median across rounds.
MEDIAN_FIELDS = ("rps", "bytes_per_s", "p50_ms", "p99_ms", "cpu_us_per_request", "client_cpu_s", "seconds",
                 "requests", "errors")


@dataclass
class Scenario:
    name: str  # "GET 4 KiB"
    metric: str  # "rps" or "bytes_per_s": what the ratio compares
    target: float  # the ratio the subject must reach
    subject: str  # the server under test's label
    runners: dict[str, Callable[[], object]]  # label -> one timed round (returns a wrk.Sample or alike)
    rounds: dict[str, list[dict]] = field(default_factory=dict)

    def run(self, rounds: int, log: Callable[[str], None]) -> dict:
        # Interleave servers round by round, so slow drift (thermal, noisy neighbours) hits all alike.
        for number in range(1, rounds + 1):
            for label, runner in self.runners.items():
                sample = runner().as_dict()
                self.rounds.setdefault(label, []).append(sample)
                log(f"  {self.name:<11} round {number}/{rounds}  {label:<22} {sample['rps']:>10,.0f} req/s "
                    f"{sample['bytes_per_s'] / 1e6:>9,.1f} MB/s  p99 {sample['p99_ms']:7.2f} ms"
                    + (f"  {sample['errors']} ERRORS" if sample["errors"] else ""))
        return self.summary()

    def summary(self) -> dict:
        servers = {}
        for label, samples in self.rounds.items():
            median = {name: statistics.median(s[name] for s in samples) for name in MEDIAN_FIELDS}
            servers[label] = {"median": median, "rounds": samples}
        references = [label for label in servers if label != self.subject]
        # The reference is the best of the others (nginx with sendfile on or off, for instance).
        reference = max(references, key=lambda label: servers[label]["median"][self.metric])
        ratio = servers[self.subject]["median"][self.metric] / servers[reference]["median"][self.metric]
        errors = sum(s["errors"] for samples in self.rounds.values() for s in samples)
        return {
            "scenario": self.name, "metric": self.metric, "target": self.target, "subject": self.subject,
            "reference": reference, "ratio": ratio, "met": ratio >= self.target and errors == 0,
            "errors": errors, "servers": servers,
        }
