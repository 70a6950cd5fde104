"""Evaluating the scenario's thresholds: live, interval by interval, and at the end.

Live figures are the run so far, through the newest reported interval:
`Cumulative` merges each reported interval once (a snapshot that arrives
after its interval was reported is missing from the live figures, never from
the final ones). A live failure of an `abort_on_fail` threshold, once the run
is past its `delay_abort_eval`, ends the run at the next interval boundary
through `Coordinator.update_plan`, so load stops within two intervals of the
failing one. A threshold without data yet is pending, never a reason to abort.

The final verdict uses the run's merged totals with the very durations
result.json uses (`measured_seconds`, phase durations), so the observed value
next to ✓/✗ is the one the reports show. No data at the end is a failure (a
threshold that could not be checked did not hold); a threshold that aborted
the run stays failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loadctl.coordinator.result import measured_seconds
from loadctl.coordinator.run import Coordinator, RunEvent
from loadctl.coordinator.stats import Totals
from loadctl.coordinator.timeline import SeriesKey, Timeline
from loadctl.protocol.scenario import Phase
from loadctl.protocol.thresholds import Threshold

_MS = 1e6


class Cumulative:
    """The run so far per (phase, request) series, merged interval by interval."""

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Totals] = {}
        self.through = -1  # newest interval merged

    def advance(self, timeline: Timeline, index: int) -> None:
        for i in range(self.through + 1, index + 1):
            record = timeline.intervals.get(i)
            if record is None:
                continue
            for key in list(record.series):
                self.series.setdefault(key, Totals()).merge(record.view(key))
        self.through = max(self.through, index)

    def select(self, scope: str = "total", name: str = "") -> Totals:
        """A fresh Totals for the whole run, one request name, or one phase."""
        out = Totals()
        for (phase, request), totals in self.series.items():
            if (
                scope == "total"
                or (scope == "request" and request == name)
                or (scope == "phase" and phase == name)
            ):
                out.merge(totals)
        return out


def observe(threshold: Threshold, totals: Totals, seconds: float) -> float | None:
    """The threshold's metric over `totals` (None: no data to judge by)."""
    metric = threshold.metric
    lat = totals.latency
    if metric in ("p", "min", "max", "mean"):
        if lat.count == 0:
            return None
        if metric == "p":
            return lat.percentile(threshold.percentile) / _MS
        return float(getattr(lat, metric)) / _MS
    if metric == "rps":
        return totals.completed / seconds if seconds > 0 else None
    if metric == "error_rate":
        attempted = totals.completed + totals.dropped
        return (totals.errors + totals.dropped) / attempted if attempted else None
    if metric == "checks":
        checks = totals.checks_passed + totals.checks_failed
        return totals.checks_passed / checks if checks else None
    return float(
        {"requests": totals.completed, "errors": totals.errors}.get(metric, totals.dropped)
    )


def _phase(phases: Iterable[Phase], name: str) -> Phase | None:
    return next((p for p in phases if p.name == name), None)


@dataclass
class ThresholdState:
    threshold: Threshold
    live: float | None = None  # the latest live value
    live_ok: bool | None = None  # None: pending (no data yet)
    first_failed_at: float | None = None  # run time of the first live failure
    live_failures: int = 0
    aborted: bool = False  # this threshold ended the run early
    aborted_at: float | None = None  # run time the failure that aborted describes
    final: float | None = None
    ok: bool | None = None  # the final verdict

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {
            "threshold": t.expression,
            "on": t.on,
            "label": t.label,
            "metric": t.metric,
            "unit": t.unit,
            "ok": bool(self.ok),
            "observed": self.final,
            "observed_text": t.format(self.final),
            "abort_on_fail": t.abort_on_fail,
            "delay_abort_eval": t.delay_abort_eval,
            "aborted": self.aborted,
            "aborted_at": self.aborted_at,
            "first_failed_at": self.first_failed_at,
            "live_failures": self.live_failures,
        }


class ThresholdMonitor:
    def __init__(self, thresholds: Sequence[Threshold]) -> None:
        self.states = [ThresholdState(t) for t in thresholds]
        self.aborted_by: ThresholdState | None = None

    def __bool__(self) -> bool:
        return bool(self.states)

    def evaluate_live(
        self, cumulative: Cumulative, phases: Sequence[Phase], interval: float
    ) -> float:
        """Update every live verdict; returns the run time they describe."""
        elapsed = (cumulative.through + 1) * interval
        for state in self.states:
            t = state.threshold
            seconds = elapsed
            if t.scope == "phase":
                phase = _phase(phases, t.name)
                seconds = (
                    max(0.0, min(elapsed, phase.end) - phase.start) if phase is not None else 0.0
                )
            value = observe(t, cumulative.select(t.scope, t.name), seconds)
            state.live = value
            state.live_ok = None if value is None else t.holds(value)
            if state.live_ok is False:
                state.live_failures += 1
                if state.first_failed_at is None:
                    state.first_failed_at = elapsed
        return elapsed

    async def on_interval(self, run: Coordinator, cumulative: Cumulative) -> None:
        elapsed = self.evaluate_live(cumulative, run.phases, run.interval)
        if self.aborted_by is not None or run.state != "running":
            return
        for state in self.states:
            t = state.threshold
            if t.abort_on_fail and state.live_ok is False and elapsed >= t.delay_abort_eval:
                await self._abort(run, state, elapsed)
                return

    async def _abort(self, run: Coordinator, state: ThresholdState, elapsed: float) -> None:
        self.aborted_by = state
        state.aborted = True
        state.aborted_at = elapsed
        at = run.current_interval() + 1
        await run.update_plan(at, end_interval=at)
        t = state.threshold
        run.events.append(
            RunEvent(
                time.time(),
                "aborted",
                "",
                f"threshold '{t.label}' failed (observed {t.format(state.live)}): "
                f"the run ends at {at * run.interval:g} s (abort_on_fail)",
            )
        )

    def evaluate_final(self, run: Coordinator) -> list[dict[str, Any]]:
        measured = measured_seconds(run)
        timeline = run.timeline
        for state in self.states:
            t = state.threshold
            if t.scope == "total":
                totals, seconds = timeline.run_totals(), measured
            elif t.scope == "request":
                totals, seconds = timeline.name_totals().get(t.name, Totals()), measured
            else:
                phase = _phase(run.phases, t.name)
                totals = timeline.phase_totals(t.name)
                seconds = phase.duration if phase is not None else 0.0
            state.final = observe(t, totals, seconds)
            state.ok = state.final is not None and t.holds(state.final) and not state.aborted
        return [s.as_dict() for s in self.states]

    @property
    def failed(self) -> bool:
        return any(s.ok is False for s in self.states)
