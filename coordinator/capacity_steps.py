"""The capacity search's settings and steps, and the plan phases a step runs as.

Each step of the search is one open-model constant-rate phase with the
scenario's request mix (`step_phase`). A step starts at an interval boundary
and is leased to the end of the search's time budget, because when it starts
nobody knows how long it will run; the step after it cuts it at the boundary
where it takes over (`truncate` cuts the rate curve with it, so the plan the
coordinator keeps says what the agents were really asked to send). The first
step is the only phase of the scenario the search starts with
(`capacity_scenario`).

A `Step` records, in intervals, where the step began, where its measuring
window lies (after the settle period) and where the next step took over,
with what its window measured and the verdict; `Step.as_dict` is its entry
in result.json. Rates are rounded to a few digits (`nice`) so the steps read
as round numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from loadctl.protocol.scenario import Phase, Scenario
from loadctl.protocol.schedule import RateCurve, RateStage
from loadctl.protocol.thresholds import LATENCY_METRICS, Threshold

_LAG_CAP_MS = 10.0


@dataclass(frozen=True)
class SearchSettings:
    slos: tuple[Threshold, ...]
    start_rate: float = 50.0
    max_rate: float = 100_000.0
    step_factor: float = 1.5
    precision: float = 0.05  # relative gap between last good and first bad rate
    settle: float = 5.0  # seconds held before measuring
    window: float = 10.0  # seconds measured
    max_send_lag_ms: float | None = None  # None: min(10 ms, 10 % of the tightest latency bound)
    max_cpu_percent: float = 90.0
    degradation: bool = True
    degradation_rates: tuple[float, ...] | None = None  # None: 20/50/100 % of the capacity
    expected_peak: float | None = None
    max_duration: float = 1800.0  # the whole search, seconds
    max_cooldown: float = 15.0
    min_rate: float = 1.0

    @property
    def latency_bound_ms(self) -> float | None:
        bounds = [t.value for t in self.slos if t.metric in LATENCY_METRICS and t.op in ("<", "<=")]
        return min(bounds) if bounds else None

    @property
    def lag_limit_ms(self) -> float:
        if self.max_send_lag_ms is not None:
            return self.max_send_lag_ms
        bound = self.latency_bound_ms
        return min(_LAG_CAP_MS, 0.1 * bound) if bound is not None else _LAG_CAP_MS


def step_phase(
    name: str, rate: float, start: float, until: float, template: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "executor": "constant-rate",
        "rate": rate,
        "start": start,
        "duration": max(until - start, 0.001),
        **template,
    }


def capacity_scenario(
    scenario: Scenario, settings: SearchSettings, template: dict[str, Any]
) -> Scenario:
    """The scenario the search runs: its requests and defaults, the first step as its
    only phase (leased to the end of the time budget: later steps cut it), and no
    thresholds or chaos (the search judges its SLOs step by step)."""
    source = dict(scenario.source)
    first = step_phase("step-01", settings.start_rate, 0.0, settings.max_duration, template)
    source["phases"] = [first]
    for key in ("thresholds", "chaos"):
        source.pop(key, None)
    return Scenario.from_dict(source, scale=1.0)


def truncate(phase: Phase, duration: float) -> Phase:
    """The phase as it ran when cut after `duration` seconds (its rate curve too)."""
    if phase.rate is None:
        return replace(phase, duration=duration)
    stages, left = [], duration
    for s in phase.rate.stages:
        if left <= 0:
            break
        take = min(s.duration, left)
        end = s.start_rate + (s.end_rate - s.start_rate) * take / s.duration
        stages.append(RateStage(take, s.start_rate, end))
        left -= take
    return replace(phase, duration=duration, rate=RateCurve(stages))


def nice(rate: float) -> float:
    return float(round(rate)) if rate >= 100 else round(rate, 1) if rate >= 10 else round(rate, 2)


@dataclass
class Step:
    number: int
    kind: str  # probe | bisect | confirm | degradation | cooldown
    rate: float
    phase: str
    start: int  # first interval
    window_start: int
    window: int
    attempts: int = 1
    waited: int = 0
    end: int | None = None  # the boundary where the next step took over
    figures: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""  # ok | slo | generator | calm | still disturbed
    slos: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def window_end(self) -> int:
        return self.window_start + self.window

    @property
    def failed(self) -> list[str]:
        return [s["slo"] for s in self.slos if not s["ok"]]

    def as_dict(self, interval: float) -> dict[str, Any]:
        return {
            "step": self.number,
            "kind": self.kind,
            "rate": self.rate,
            "phase": self.phase,
            "t_start": self.start * interval,
            "t_end": self.end * interval if self.end is not None else None,
            "window": [self.window_start * interval, self.window_end * interval],
            "attempts": self.attempts,
            "verdict": self.verdict,
            "failed_slos": self.failed,
            "slos": self.slos,
            "generator_reasons": self.reasons,
            **self.figures,
        }
