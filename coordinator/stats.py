"""Merged results for one series (or a whole phase, or the run) and their summary.

Merging is exact: counters add, histograms add bucket by bucket (see
`loadctl.protocol.histogram`). Percentiles are only ever read from a merged
histogram, never averaged across agents or intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadctl.protocol.histogram import Histogram, HistogramBatch, WireParts
from loadctl.protocol.histogram_table import decode_tables
from loadctl.protocol.messages import Series, Snapshot
from loadctl.protocol.outcomes import ERROR_OUTCOMES

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9, 99.99)
_MS = 1e6  # nanoseconds per millisecond


@dataclass
class Totals:
    arrivals: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    service: Histogram = field(default_factory=Histogram)
    send_lag: Histogram = field(default_factory=Histogram)
    bytes_in: int = 0
    checks_passed: int = 0
    checks_failed: int = 0

    def add_series(self, s: Series, parts: tuple[WireParts, WireParts, WireParts]) -> None:
        """Add one series whose histograms `validate_snapshots` already decoded."""
        self.latency.add_parts(parts[0])
        self.service.add_parts(parts[1])
        self.send_lag.add_parts(parts[2])
        self.add_counters(s)

    def add_counters(self, s: Series) -> None:
        """Add a series' counters (its histograms are merged separately)."""
        self.arrivals += s.arrivals
        for k, v in s.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        self.bytes_in += s.bytes_in
        self.checks_passed += s.checks_passed
        self.checks_failed += s.checks_failed

    def merge(self, other: Totals) -> None:
        self.latency.merge(other.latency)
        self.service.merge(other.service)
        self.send_lag.merge(other.send_lag)
        self.arrivals += other.arrivals
        for k, v in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        self.bytes_in += other.bytes_in
        self.checks_passed += other.checks_passed
        self.checks_failed += other.checks_failed

    @property
    def completed(self) -> int:
        return sum(v for k, v in self.outcomes.items() if k != "dropped")

    @property
    def errors(self) -> int:
        return sum(self.outcomes.get(k, 0) for k in ERROR_OUTCOMES)

    @property
    def dropped(self) -> int:
        return self.outcomes.get("dropped", 0)

    def summary(self, seconds: float) -> dict[str, Any]:
        completed = self.completed
        attempted = completed + self.dropped
        return {
            "arrivals": self.arrivals,
            "requests": completed,
            "rps": completed / seconds if seconds > 0 else 0.0,
            "outcomes": dict(sorted(self.outcomes.items())),
            "errors": self.errors,
            "error_rate": (self.errors + self.dropped) / attempted if attempted else 0.0,
            "dropped": self.dropped,
            "bytes_in": self.bytes_in,
            "checks": {"passed": self.checks_passed, "failed": self.checks_failed},
            "latency_ms": histogram_summary(self.latency),
            "service_ms": histogram_summary(self.service),
            "send_lag_ms": histogram_summary(self.send_lag),
        }


def validate_snapshots(snapshots: Sequence[Snapshot]) -> HistogramBatch:
    """Check snapshots' series completely before anything is merged: ValueError if
    any is malformed; else all their histograms (latency, service, send_lag of each
    series, snapshot after snapshot), validated together, ready for one merge
    (`add_batch`)."""
    counters = [
        v
        for snapshot in snapshots
        for s in snapshot.series
        for v in (s.arrivals, s.bytes_in, s.checks_passed, s.checks_failed)
    ]
    for snapshot in snapshots:
        for s in snapshot.series:
            counters += s.outcomes.values()
    if counters and (min(counters) < 0 or max(counters) > _MAX_COUNTER):
        raise ValueError("counters out of range")
    return decode_tables(
        [snapshot.histograms for snapshot in snapshots],
        [3 * len(snapshot.series) for snapshot in snapshots],
    )


_MAX_COUNTER = 2**62


def histogram_summary(h: Histogram) -> dict[str, float]:
    if h.count == 0:
        return {"count": 0}
    values = h.percentiles(PERCENTILES)
    out: dict[str, float] = {
        "count": h.count,
        "min": h.min / _MS,
        "mean": h.mean / _MS,
        "stdev": h.stdev / _MS,
    }
    for p, v in zip(PERCENTILES, values, strict=True):
        out[f"p{p:g}"] = v / _MS
    out["max"] = h.max / _MS
    if h.overflow:
        out["overflow"] = h.overflow
    return out
