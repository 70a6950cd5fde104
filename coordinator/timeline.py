"""The run's results as they arrive: per interval, per series, and in total.

Snapshots are merged by interval index (intervals are aligned to the run
start on the coordinator's clock, so every agent's interval i is the same
second). Duplicates — the same (agent, seq) resent after a lost ack — are
dropped here, so a resend can never count twice.

Memory: an open interval holds dense histograms (fast to merge into); once
an interval is a few intervals old it is compacted to the sparse wire form,
and re-inflated only if a late snapshot for it arrives. So memory per
interval is that of its non-empty buckets, not of the full layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadctl.coordinator.stats import Totals, validate_series
from loadctl.protocol.histogram import Histogram
from loadctl.protocol.messages import Snapshot

SeriesKey = tuple[str, str]  # (phase, request name)
_KEEP_OPEN = 4  # intervals behind the newest that stay dense


@dataclass
class _Compact:
    arrivals: int
    outcomes: dict[str, int]
    wires: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    bytes_in: int
    checks: tuple[int, int]

    @classmethod
    def of(cls, t: Totals) -> _Compact:
        return cls(
            t.arrivals,
            dict(t.outcomes),
            (t.latency.to_wire(), t.service.to_wire(), t.send_lag.to_wire()),
            t.bytes_in,
            (t.checks_passed, t.checks_failed),
        )

    def inflate(self) -> Totals:
        return Totals(
            self.arrivals,
            dict(self.outcomes),
            Histogram.from_wire(self.wires[0]),
            Histogram.from_wire(self.wires[1]),
            Histogram.from_wire(self.wires[2]),
            self.bytes_in,
            *self.checks,
        )


@dataclass
class IntervalRecord:
    index: int
    start: float
    end: float
    series: dict[SeriesKey, Totals | _Compact] = field(default_factory=dict)
    agents: set[str] = field(default_factory=set)
    active_users: dict[str, int] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    rss_bytes: dict[str, int] = field(default_factory=dict)

    def totals(self, key: SeriesKey) -> Totals:
        value = self.series.get(key)
        if value is None:
            value = self.series[key] = Totals()
        elif isinstance(value, _Compact):
            value = self.series[key] = value.inflate()
        return value

    def view(self, key: SeriesKey) -> Totals:
        value = self.series[key]
        return value.inflate() if isinstance(value, _Compact) else value

    def compact(self) -> None:
        for key, value in self.series.items():
            if isinstance(value, Totals):
                self.series[key] = _Compact.of(value)


class Timeline:
    def __init__(self) -> None:
        self.intervals: dict[int, IntervalRecord] = {}
        self.totals: dict[SeriesKey, Totals] = {}
        self.seen: set[tuple[str, int]] = set()  # (agent, seq)
        self.duplicates = 0
        self.newest = -1

    def add(self, snapshot: Snapshot) -> bool:
        """Merge a snapshot; False if it was a duplicate. Raises ValueError if malformed."""
        key = (snapshot.agent_id, snapshot.seq)
        if key in self.seen:
            self.duplicates += 1
            return False
        if snapshot.interval < 0 or snapshot.interval > 10_000_000:
            raise ValueError(f"interval index {snapshot.interval} out of range")
        # Decode every histogram first: a malformed one must not leave half a snapshot merged.
        decoded = [(s, validate_series(s)) for s in snapshot.series]
        record = self.intervals.get(snapshot.interval)
        if record is None:
            record = self.intervals[snapshot.interval] = IntervalRecord(
                snapshot.interval, snapshot.start, snapshot.end
            )
        for s, parts in decoded:
            k = (s.phase, s.name)
            record.totals(k).add_series(s, parts)
            total = self.totals.get(k)
            if total is None:
                total = self.totals[k] = Totals()
            total.add_series(s, parts)
        record.agents.add(snapshot.agent_id)
        record.active_users[snapshot.agent_id] = snapshot.active_users
        record.cpu_percent[snapshot.agent_id] = snapshot.cpu_percent
        record.rss_bytes[snapshot.agent_id] = snapshot.rss_bytes
        self.seen.add(key)
        if snapshot.interval > self.newest:
            self.newest = snapshot.interval
            old = self.intervals.get(self.newest - _KEEP_OPEN)
            if old is not None:
                old.compact()
        return True

    def phase_totals(self, phase: str) -> Totals:
        out = Totals()
        for (p, _), t in self.totals.items():
            if p == phase:
                out.merge(t)
        return out

    def name_totals(self) -> dict[str, Totals]:
        out: dict[str, Totals] = {}
        for (_, name), t in self.totals.items():
            out.setdefault(name, Totals()).merge(t)
        return out

    def run_totals(self) -> Totals:
        out = Totals()
        for t in self.totals.values():
            out.merge(t)
        return out

    def ordered(self) -> list[IntervalRecord]:
        return [self.intervals[i] for i in sorted(self.intervals)]
