"""Capacity search: the highest arrival rate the target sustains within its SLOs.

One run, steered interval by interval (a `Controller`): every step is an
open-model constant-rate phase with the scenario's request mix, started at an
interval boundary through `Coordinator.update_plan` — the agents change rate
mid-run, nothing restarts. A step is held for a *settle* period, then
measured over a *window* (merged histograms of that step's own series, so a
request is judged with the step that sent it).

1. Probe: step the rate up geometrically (× `step_factor`) from `start_rate`
   until a step breaks an SLO (or `max_rate` holds: capacity is at least that).
   If the very first step breaks one, step down instead.
2. Bisect between the last good and the first bad rate until they are within
   `precision` of each other.
3. Confirm: repeat the answer. A confirmation that fails moves the bad bound
   down and the search bisects again (twice at most).
4. Degradation: the levels of the degradation table (20/50/100 % of the
   capacity, or given rates) run as extra steps; the confirmation counts as
   the 100 % level.

A step that broke an SLO leaves a queue on the target; before the next step a
*cooldown* at a low rate runs until an interval's p99 is calm again (or
`max_cooldown` passes), so no step inherits its predecessor's backlog.

The generator's limit is told apart from the target's. Latency counts from
the intended send, so a strained generator can only make a step look worse,
never better: a step that held every SLO held, whatever the generator's
state. A step is the generator's limit when arrivals were dropped at the
agents' in-flight bound while the target's own answers (service time from the
actual send, errors over answered requests) met every SLO; or when it broke
an SLO while the generator was strained — send lag p99 above
`max_send_lag_ms` (by default 10 ms or 10 % of the tightest latency bound,
whichever is smaller), or an agent above `max_cpu_percent` in most of the
window — and the strain explains the break: the target's answers met the
SLOs, or the lag is a quarter or more of the p99 that broke them (a stalled
machine delays answers and sends alike). A target past its capacity breaks
p99 by far more than any lag, and stays the target's limit. A step that
looked like the generator's limit, or was strained while it broke an SLO, is
measured once more first; if the generator is still the limit, the search
stops with "generator limit reached at N RPS: add agents" rather than
blaming the target.

The coordinator's own view of the plan (`run.phases`) is kept here, exact:
each step's phase is cut at the boundary where the next began, its rate curve
with it, so result.json's per-phase targets are what the agents were asked
to send. (`Coordinator.update_plan` alone would leave the new phase cut to
zero length and the old one's rate curve uncut; the agents, which read the
plan update themselves, are not affected.)

Beside this module: `capacity_steps` (the settings, the `Step` record, and
the phases a step runs as) and `capacity_record` (what the search leaves in
result.json).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from loadctl.coordinator.capacity_record import capacity_record, degradation_record
from loadctl.coordinator.capacity_steps import (
    SearchSettings,
    Step,
    capacity_scenario,
    nice,
    step_phase,
    truncate,
)
from loadctl.coordinator.degradation import judge, plan_levels, suspect
from loadctl.coordinator.reports.capacity import step_line
from loadctl.coordinator.run import Coordinator
from loadctl.coordinator.stats import Totals
from loadctl.protocol.scenario import Phase, parse_phases

__all__ = [
    "SEARCH_KINDS",
    "CapacitySearch",
    "Progress",
    "SearchSettings",
    "Step",
    "capacity_scenario",
    "step_phase",
]

log = logging.getLogger("loadctl.coordinator")

_MS = 1e6
SEARCH_KINDS = ("probe", "bisect", "confirm")


Progress = Callable[[str], None]


class CapacitySearch:
    """The search as a Controller: `on_interval` is called once per reported interval."""

    def __init__(
        self, settings: SearchSettings, template: dict[str, Any], progress: Progress | None = None
    ) -> None:
        self.settings = settings
        self.template = template
        self.progress = progress or (lambda line: None)
        self.steps: list[Step] = []
        self.mode = "probe"  # probe | down | bisect | confirm | degradation | done
        self.status = "running"
        self.message = ""
        self.lo: float | None = None  # highest rate that held every SLO
        self.hi: float | None = None  # lowest rate that broke one
        self.hi_step: Step | None = None
        self.capacity: float | None = None
        self.confirmed = False
        self.confirm_failures = 0
        self.generator: dict[str, Any] | None = None
        self.pending: tuple[str, float] | None = None  # the step after a cooldown
        self.levels: list[dict[str, Any]] = []
        self.level_steps: list[Step | None] = []
        self.queue: list[int] = []  # indexes into levels still to run
        self._level: int | None = None  # the level the current degradation step measures
        self.baseline: tuple[float, float] | None = None  # (rate, p99 ms), the lowest good step
        self.interval = 1.0
        self._phases: list[Phase] = []
        self._started = False
        self.ended_at: int | None = None
        self.settle_intervals = 0  # the settings' settle and window, in whole intervals
        self.window_intervals = 1
        self.steps.append(Step(1, "probe", settings.start_rate, "step-01", 0, 0, 1))

    # -- the controller -----------------------------------------------------------------
    async def on_interval(self, run: Coordinator, index: int) -> None:
        if self.mode == "done":
            return
        try:
            if not self._started:
                self._start(run)
            await self._advance(run, index)
        except Exception:
            log.exception("capacity search failed at interval %d", index)
            self.status, self.message = "error", "the search failed (see the log); run ended"
            await self._end(run)

    def _start(self, run: Coordinator) -> None:
        self._started = True
        self.interval = run.interval
        self.settle_intervals = math.ceil(self.settings.settle / self.interval - 1e-9)
        self.window_intervals = max(1, math.ceil(self.settings.window / self.interval - 1e-9))
        first = self.steps[0]
        first.window_start, first.window = self.settle_intervals, self.window_intervals
        self._phases = list(run.phases)

    async def _advance(self, run: Coordinator, index: int) -> None:
        step = self.steps[-1]
        if step.kind == "cooldown":
            if index < step.start:
                return
            calm = self._calm(run, index)
            if calm or index - step.start + 1 >= math.ceil(
                self.settings.max_cooldown / self.interval
            ):
                step.verdict = "calm" if calm else "still disturbed"
                step.window = index - step.start + 1
                self.progress(
                    f"  cooldown at {step.rate:g} rps after step {step.number}: {step.verdict} "
                    f"after {step.window} interval(s)"
                )
                assert self.pending is not None
                kind, rate = self.pending
                self.pending = None
                await self._begin(run, kind, rate)
            return
        if index < step.window_end - 1:
            return
        by_name, cpu, missing = self._measure(run, step)
        if missing and step.waited < 2:
            step.waited += 1  # a snapshot is late: give it an interval or two
            return
        seconds = step.window * self.interval
        s = self.settings
        step.verdict, step.figures, step.slos, step.reasons = judge(
            by_name, cpu, seconds, s.slos, s.lag_limit_ms, s.max_cpu_percent
        )
        self.progress(step_line(step.as_dict(self.interval)))
        await self._decide(run, step)

    def _measure(
        self, run: Coordinator, step: Step
    ) -> tuple[dict[str, Totals], dict[str, list[float]], list[int]]:
        by_name: dict[str, Totals] = {}
        cpu: dict[str, list[float]] = {}
        missing = []
        expected = {a.agent_id for a in run.registry.planned() if a.alive}
        for i in range(step.window_start, step.window_end):
            record = run.timeline.intervals.get(i)
            if record is None or not expected <= record.agents:
                missing.append(i)
            if record is None:
                continue
            for key in list(record.series):
                if key[0] == step.phase:
                    by_name.setdefault(key[1], Totals()).merge(record.view(key))
            for agent, value in record.cpu_percent.items():
                cpu.setdefault(agent, []).append(value)
        return by_name, cpu, missing

    def _calm_limit(self) -> float:
        limits = []
        if self.baseline is not None:
            limits.append(2 * self.baseline[1])
        bound = self.settings.latency_bound_ms
        if bound is not None:
            limits.append(0.5 * bound)
        return max(limits) if limits else math.inf

    def _calm(self, run: Coordinator, index: int) -> bool:
        record = run.timeline.intervals.get(index)
        if record is None:
            return False
        total = Totals()
        for key in list(record.series):
            total.merge(record.view(key))
        if total.latency.count == 0:  # no answer at all: still queued, unless all failed fast
            return total.completed > 0
        return total.latency.percentile(99.0) / _MS <= self._calm_limit()

    # -- decisions ----------------------------------------------------------------------
    async def _decide(self, run: Coordinator, step: Step) -> None:
        if suspect(step.figures, step.verdict) and step.attempts < 2:
            step.attempts += 1  # once more before concluding: a hiccup is not a limit
            step.window_start = step.window_end  # same phase, same rate: no settle again
            step.waited = 0
            self.progress(f"  step {step.number}: the generator was strained; measuring again")
            return
        if step.kind == "degradation":
            await self._next_level(run)
            return
        if step.verdict == "generator":
            await self._generator_limit(run, step)
            return
        answered = step.figures.get("requests", 0) - step.figures.get("errors", 0)
        if step.number == 1 and answered <= 0:  # nothing succeeded: no search to be had
            self.hi, self.hi_step, self.status = step.rate, step, "below-start"
            self.message = f"no request succeeded at {step.rate:g} RPS: is the target up?"
            await self._finish(run)
            return
        ok = step.verdict == "ok"
        p99 = step.figures.get("p99_ms")
        if ok and p99 is not None and (self.baseline is None or step.rate < self.baseline[0]):
            self.baseline = (step.rate, p99)
        if ok:
            self.lo = step.rate if self.lo is None else max(self.lo, step.rate)
        elif self.hi is None or step.rate <= self.hi:
            self.hi, self.hi_step = step.rate, step
        s = self.settings
        if step.kind == "confirm":
            if ok:
                self.capacity, self.confirmed = step.rate, True
                await self._found(run)
                return
            self.confirm_failures += 1
            good = [x.rate for x in self.steps if x.verdict == "ok" and x.rate < step.rate]
            self.lo = max(good) if good else None
            if self.confirm_failures >= 2 or self.lo is None:
                self.capacity = self.lo
                self.status = "unconfirmed"
                await self._found(run)
                return
            await self._bisect_or_confirm(run)
            return
        if self.mode == "probe":
            if ok:
                if step.rate >= s.max_rate:
                    self.capacity = step.rate
                    self.status = "max-reached"
                    await self._found(run)
                else:
                    await self._next(run, "probe", nice(min(step.rate * s.step_factor, s.max_rate)))
                return
            if self.lo is None:
                self.mode = "down"
            else:
                self.mode = "bisect"
                await self._bisect_or_confirm(run)
                return
        if self.mode == "down":
            if ok:
                self.mode = "bisect"
                await self._bisect_or_confirm(run)
                return
            lower = nice(step.rate / s.step_factor)
            if lower < s.min_rate or len(self.steps) > 60:
                self.status = "below-start"
                await self._finish(run)
                return
            await self._next(run, "probe", lower)
            return
        await self._bisect_or_confirm(run)

    async def _bisect_or_confirm(self, run: Coordinator) -> None:
        assert self.lo is not None and self.hi is not None
        self.mode = "bisect"
        if (self.hi - self.lo) / self.lo <= self.settings.precision:
            self.mode = "confirm"
            await self._next(run, "confirm", self.lo)
            return
        mid = nice((self.lo + self.hi) / 2)
        if mid <= self.lo or mid >= self.hi:
            self.mode = "confirm"
            await self._next(run, "confirm", self.lo)
            return
        await self._next(run, "bisect", mid)

    async def _generator_limit(self, run: Coordinator, step: Step) -> None:
        self.status = "generator-limit"
        self.generator = {
            "rps": step.rate,
            "achieved_rps": step.figures.get("achieved_rps"),
            "reasons": step.reasons,
            "message": f"generator limit reached at {step.rate:g} RPS: add agents",
        }
        await self._finish(run)

    async def _found(self, run: Coordinator) -> None:
        if self.status == "running":
            self.status = "found"
        s = self.settings
        if self.capacity is None or not s.degradation:
            await self._finish(run)
            return
        self.levels = plan_levels(self.capacity, s.degradation_rates)
        self.level_steps = [None] * len(self.levels)
        last = self.steps[-1]
        for i, level in enumerate(self.levels):
            if (
                last.kind in SEARCH_KINDS
                and last.verdict == "ok"
                and abs(level["rate"] - last.rate) <= 0.005 * last.rate
            ):
                self.level_steps[i] = last  # the confirmation measured this level already
        self.queue = [i for i, step in enumerate(self.level_steps) if step is None]
        self.mode = "degradation"
        await self._next_level(run)

    async def _next_level(self, run: Coordinator) -> None:
        last = self.steps[-1]
        if last.kind == "degradation" and self._level is not None:
            self.level_steps[self._level] = last
            self._level = None
        if not self.queue:
            await self._finish(run)
            return
        self._level = self.queue.pop(0)
        await self._next(run, "degradation", nice(self.levels[self._level]["rate"]))

    # -- the plan -----------------------------------------------------------------------
    async def _next(self, run: Coordinator, kind: str, rate: float) -> None:
        if self.steps[-1].verdict == "slo":
            self.pending = (kind, rate)
            base = self.lo if self.lo is not None else self.settings.start_rate
            await self._begin(run, "cooldown", nice(max(self.settings.min_rate, 0.25 * base)))
            return
        await self._begin(run, kind, rate)

    def _boundary(self, run: Coordinator) -> int:
        """The next boundary the agents can hear of in time (≥ 0.3 interval ahead)."""
        now = run.run_time() / self.interval
        at = math.floor(now) + 1
        return at if at - now >= 0.3 else at + 1

    async def _begin(self, run: Coordinator, kind: str, rate: float) -> None:
        at = self._boundary(run)
        needs = 2 if kind == "cooldown" else self.settle_intervals + self.window_intervals + 1
        if (at + needs) * self.interval > self.settings.max_duration:
            if self.status == "running":
                self.status = "budget"
            await self._finish(run)
            return
        measured = sum(1 for x in self.steps if x.kind != "cooldown")
        number = measured if kind == "cooldown" else measured + 1  # a cooldown follows its step
        name = f"cool-{number:02d}" if kind == "cooldown" else f"step-{number:02d}"
        start = at * self.interval
        raw = step_phase(name, rate, start, self.settings.max_duration, self.template)
        await run.update_plan(at, phases=[raw])
        names = [r.name for r in run.scenario.requests]
        parsed = parse_phases([raw], ("phases",), names, run.scenario.scale)[0]
        self._cut(run, start, parsed)
        self.steps[-1].end = at
        settle = 0 if kind == "cooldown" else self.settle_intervals
        self.steps.append(Step(number, kind, rate, name, at, at + settle, self.window_intervals))

    def _cut(self, run: Coordinator, at: float, new: Phase | None) -> None:
        phases = [
            truncate(p, max(0.0, at - p.start)) if p.end > at + 1e-9 else p for p in self._phases
        ]
        if new is not None:
            phases.append(new)
        self._phases = phases
        run.phases = tuple(phases)

    async def _finish(self, run: Coordinator) -> None:
        if self.status == "running":
            self.status = "done"
        await self._end(run)

    async def _end(self, run: Coordinator) -> None:
        if self.mode == "done":
            return
        self.mode = "done"
        if run.state != "running":
            return
        at = self._boundary(run)
        await run.update_plan(at, end_interval=at)
        self._cut(run, at * self.interval, None)
        self.steps[-1].end = at
        self.ended_at = at

    # -- output -------------------------------------------------------------------------
    def report(self, run: Coordinator) -> dict[str, Any]:
        """result.json's "capacity" record (and the run's "degradation" table)."""
        return capacity_record(self, run)

    def degradation(self) -> dict[str, Any] | None:
        return degradation_record(self)
