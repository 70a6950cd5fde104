"""Per-interval results, cheap on the hot path.

A request's completion appends three floats and bumps a counter: no
histogram work per request. When the interval is cut, each series' raw
latencies are binned into histograms in one vectorised call
(`Histogram.record_many`) and the buffers start over. Memory is bounded by
one interval's requests, whatever the length of the run.

Series are keyed by (phase, request name). Arrivals are counted apart from
completions: an arrival is counted when it is due (its intended time), a
completion when its outcome is known, so open-model arrival counts match the
schedule exactly while latencies land in the interval where they finished.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from loadctl.protocol.histogram import Histogram
from loadctl.protocol.histogram_table import to_table
from loadctl.protocol.messages import Series
from loadctl.protocol.outcomes import REPLY_OUTCOMES

if TYPE_CHECKING:
    from loadctl.agent._lane import Lane

_NS = 1e9


@dataclass(slots=True)
class SeriesBuffer:
    phase: str
    name: str
    arrivals: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latency: list[float] = field(default_factory=list)  # seconds, from intended start
    service: list[float] = field(default_factory=list)  # seconds, from actual send
    send_lag: list[float] = field(default_factory=list)  # seconds
    bytes_in: int = 0
    checks_passed: int = 0
    checks_failed: int = 0

    def completed(
        self, outcome: str, intended: float, sent: float, done: float, nbytes: int
    ) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.bytes_in += nbytes
        self.send_lag.append(sent - intended)
        if outcome in _TIMED:
            self.latency.append(done - intended)
            self.service.append(done - sent)

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    @property
    def is_empty(self) -> bool:
        return not (self.arrivals or self.outcomes or self.checks_passed or self.checks_failed)

    def to_series(self) -> Series:
        return Series(
            phase=self.phase,
            name=self.name,
            arrivals=self.arrivals,
            outcomes=dict(self.outcomes),
            bytes_in=self.bytes_in,
            checks_passed=self.checks_passed,
            checks_failed=self.checks_failed,
        )

    def histograms(self) -> tuple[Histogram, Histogram, Histogram]:
        """Latency, service and send lag, binned from this interval's raw seconds."""
        return _histogram(self.latency), _histogram(self.service), _histogram(self.send_lag)


# Outcomes that got an HTTP status: their latency is a real response time.
_TIMED = frozenset(REPLY_OUTCOMES)
_LANE_OUTCOMES = REPLY_OUTCOMES  # also the order of Lane.take's counts


def _histogram(seconds: list[float]) -> Histogram:
    h = Histogram()
    if seconds:
        values = np.asarray(seconds, dtype=np.float64) * _NS
        np.maximum(values, 0.0, out=values)
        h.record_many(values)
    return h


class Recorder:
    """The current interval's buffers; `cut` hands them over and starts anew.

    An interval is cut a little after its end, so an arrival due in the *next*
    interval can be sent before the cut; it is parked in `_early` and counted
    in its own interval, which keeps per-interval arrival counts exact.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str], SeriesBuffer] = {}
        self.index = 0  # the interval the buffers are accumulating
        self._early: dict[tuple[int, str, str], int] = {}
        # users' compiled lanes (agent/_lane.c): what they recorded is taken at the cut
        self.lanes: set[Lane] = set()

    def arrival(self, phase: str, name: str, interval: int) -> SeriesBuffer:
        """Count an arrival due in `interval`; returns the series' current buffer."""
        buffer = self.series(phase, name)
        if interval <= self.index:
            buffer.arrivals += 1
        else:
            key = (interval, phase, name)
            self._early[key] = self._early.get(key, 0) + 1
        return buffer

    def series(self, phase: str, name: str) -> SeriesBuffer:
        key = (phase, name)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = SeriesBuffer(phase, name)
        return buffer

    def absorb(self, lane: Lane) -> None:
        """Add what `lane` recorded since it was last taken to its series' buffers: in
        a closed loop with no think time latency and service time are the same, and
        the send lag is 0."""
        for name, arrivals, counts, nbytes, passed, raw in lane.take():
            buffer = self.series(lane.phase, name)
            buffer.arrivals += arrivals
            buffer.checks_passed += passed
            for outcome, n in zip(_LANE_OUTCOMES, counts, strict=True):
                if n:
                    buffer.count(outcome, n)
            buffer.bytes_in += nbytes
            seconds = array("d")
            seconds.frombytes(raw)
            buffer.latency.extend(seconds)
            buffer.service.extend(seconds)
            buffer.send_lag.extend(repeat(0.0, len(seconds)))

    def cut(self) -> tuple[tuple[Series, ...], list[Any]]:
        """The interval's series and the table of their histograms (three per
        series, in order; see histogram_table); the buffers start over."""
        for lane in self.lanes:
            self.absorb(lane)
        buffers, self._buffers = self._buffers, {}
        # Keep the keys alive for the next interval so hot-path lookups hit.
        for key in buffers:
            self._buffers[key] = SeriesBuffer(*key)
        self.index += 1
        for early in [k for k in self._early if k[0] <= self.index]:
            self.series(early[1], early[2]).arrivals += self._early.pop(early)
        full = [b for b in buffers.values() if not b.is_empty]
        return tuple(b.to_series() for b in full), to_table(
            [h for b in full for h in b.histograms()]
        )
