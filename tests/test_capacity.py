"""Capacity search: the controller against a simulated target (fast, exact), then the
real thing — `loadctl capacity` with agents and the demo target's capacity model."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import yaml

from loadctl.coordinator.capacity import CapacitySearch, SearchSettings, capacity_scenario
from loadctl.coordinator.degradation import from_result, knee, parse_rates, plan_levels
from loadctl.coordinator.registry import AgentRecord, Registry
from loadctl.coordinator.reports.capacity import capacity_html, capacity_markdown
from loadctl.coordinator.run import Coordinator
from loadctl.coordinator.timeline import Timeline
from loadctl.protocol.histogram import Histogram
from loadctl.protocol.histogram_table import to_table
from loadctl.protocol.messages import Hello, Series, Snapshot
from loadctl.protocol.scenario import Scenario
from loadctl.protocol.thresholds import parse_expression

from target_process import running_target

# -- a simulated run ------------------------------------------------------------------------


@dataclass
class Model:
    """A FIFO target in fluid form: `capacity` RPS, a fixed service time, a backlog that
    grows by (rate − capacity) per second; and a generator that drops arrivals above
    `generator_limit` (its in-flight bound) or lags above `lag_above`."""

    capacity: float = 800.0
    service_ms: float = 10.0
    generator_limit: float = math.inf
    lag_above: float = math.inf
    lag_below: float = math.inf
    lag_ms: float = 0.5
    cpu: float = 20.0
    backlog: float = 0.0

    def interval(
        self, rate: float, seconds: float
    ) -> tuple[int, int, Histogram, Histogram, Histogram]:
        sent = min(rate, self.generator_limit)
        dropped = round((rate - sent) * seconds)
        start_wait = self.backlog / self.capacity
        self.backlog = max(0.0, self.backlog + (sent - self.capacity) * seconds)
        end_wait = self.backlog / self.capacity
        n = max(1, round(sent * seconds))
        waits = np.linspace(start_wait, end_wait, n) * 1e3
        jitter = np.random.default_rng(int(rate * 100)).uniform(0.0, 1.0, n)
        lag_ms = self.lag_ms if self.lag_above < rate < self.lag_below else 0.5
        service, latency, lag = Histogram(), Histogram(), Histogram()
        service.record_many((self.service_ms + waits + jitter) * 1e6)
        latency.record_many((self.service_ms + waits + jitter + lag_ms) * 1e6)
        lag.record_many(np.full(n, lag_ms) * 1e6)
        return n, dropped, latency, service, lag


@dataclass
class SimRun:
    """What the controller uses of a Coordinator, driven by a virtual clock."""

    scenario: Scenario
    interval: float = 1.0
    phases: tuple[Any, ...] = ()
    timeline: Timeline = field(default_factory=Timeline)
    registry: Registry = field(default_factory=Registry)
    state: str = "running"
    status: str = "completed"
    now: float = 0.0
    updates: list[tuple[int, Any, Any]] = field(default_factory=list)
    end_interval: int | None = None

    def run_time(self) -> float:
        return self.now

    def current_interval(self) -> int:
        return math.floor(self.now / self.interval)

    async def update_plan(
        self,
        at_interval: int,
        phases: list[dict[str, Any]] | None = None,
        end_interval: int | None = None,
    ) -> None:
        assert at_interval * self.interval > self.now, "a plan change must lie ahead"
        self.updates.append((at_interval, phases, end_interval))
        if end_interval is not None:
            self.end_interval = end_interval

    def rate_at(self, t: float) -> float:
        return sum(
            p.rate.rate_at(t - p.start) for p in self.phases if p.start <= t < p.end and p.rate
        )


def simulate(
    settings: SearchSettings, model: Model, limit: int = 400
) -> tuple[CapacitySearch, SimRun]:
    source = {
        "target": "http://127.0.0.1:1",
        "requests": [{"name": "item", "path": "/item"}],
        "phases": [{"executor": "constant-rate", "rate": 1, "duration": 1}],
    }
    scenario = capacity_scenario(Scenario.from_dict(source), settings, {"requests": ["item"]})
    run = SimRun(scenario, phases=scenario.phases)
    hello = Hello(1, "sim", "host", 1, 1, 1, "test")
    agent = AgentRecord("sim", b"sim", hello, planned=True)
    run.registry.add(agent)
    search = CapacitySearch(settings, {"requests": ["item"]})
    for i in range(limit):
        if run.end_interval is not None and i >= run.end_interval:
            break
        rate = run.rate_at(i + 0.5)
        phase = next(p.name for p in run.phases if p.start <= i < p.end)
        n, dropped, latency, service, lag = model.interval(rate, 1.0)
        outcomes = {"2xx": n, **({"dropped": dropped} if dropped else {})}
        series = Series(phase, "item", n + dropped, outcomes)
        table = to_table([latency, service, lag])
        run.timeline.add(
            Snapshot("r", "sim", i + 1, i, i, i + 1, (series,), table, 0, 0, model.cpu, 0)
        )
        run.now = i + 1.5
        asyncio.run(search.on_interval(cast(Coordinator, run), i))
    return search, run


def settings(**overrides: Any) -> SearchSettings:
    base: dict[str, Any] = {
        "slos": (parse_expression("p(99)<100ms"), parse_expression("error_rate<1%")),
        "start_rate": 200.0,
        "settle": 1.0,
        "window": 2.0,
        "max_duration": 600.0,
    }
    return SearchSettings(**{**base, **overrides})


def test_search_finds_the_simulated_capacity_and_names_the_slo() -> None:
    search, run = simulate(settings(), Model(capacity=800.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "found", report["message"]
    assert report["confirmed"]
    assert 760 <= report["max_sustainable_rps"] <= 840, report["steps"]
    assert report["bounded_by"] == ["p(99) < 100ms"]
    assert report["first_failing_rps"] > report["max_sustainable_rps"]
    assert (report["first_failing_rps"] - report["max_sustainable_rps"]) / report[
        "max_sustainable_rps"
    ] <= 0.05
    kinds = [s["kind"] for s in report["steps"]]
    assert kinds[:4] == ["probe"] * 4 and "bisect" in kinds and "confirm" in kinds
    # every step after a broken one waited in a cooldown until the backlog drained
    for before, after in zip(report["steps"], report["steps"][1:], strict=False):
        if before["verdict"] == "slo":
            assert after["kind"] == "cooldown" and after["verdict"] == "calm"
    # the degradation levels ran as extra steps; the confirmation is the 100 % level
    table = search.degradation()
    assert table is not None and table["basis"] == "capacity"
    assert [round(r["fraction"], 1) for r in table["levels"]] == [0.2, 0.5, 1.0]
    assert all(r["measured"] for r in table["levels"])
    assert table["levels"][2]["source"] == f"step {report['steps'][-3]['step']}"
    assert kinds[-2:] == ["degradation", "degradation"]
    # the coordinator's plan matches what the agents ran: phases cut where the next began
    assert run.end_interval is not None
    phases = run.phases
    for a, b in itertools.pairwise(phases):
        assert a.end == b.start
    assert phases[-1].end == run.end_interval * run.interval
    for p in phases:
        assert p.rate.count() == round(p.rate.rate_at(0) * p.duration)
    knee_point = report["knee"]
    assert knee_point is not None and knee_point["offered_rps"] <= report["first_failing_rps"]


def test_generator_limit_is_not_blamed_on_the_target() -> None:
    search, run = simulate(settings(start_rate=100.0), Model(generator_limit=300.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "generator-limit", report["message"]
    assert report["max_sustainable_rps"] is None
    assert report["message"].startswith("generator limit reached at 338 RPS: add agents")
    assert "in-flight limit" in report["message"]
    assert report["at_least_rps"] == 225.0
    assert report["steps"][-1]["attempts"] == 2  # measured twice before concluding


def test_send_lag_is_blamed_only_when_it_explains_the_broken_slo() -> None:
    # 20 ms of lag from 400 to 700 RPS: latencies (from the intended send) include it and
    # the SLO holds anyway, so the target held: the search goes on to the target's limit
    search, run = simulate(settings(), Model(lag_above=400.0, lag_below=700.0, lag_ms=20.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "found", report["message"]
    noted = [s for s in report["steps"] if s.get("notes")]
    assert noted and "send lag p99 20.00 ms > 10 ms" in noted[0]["notes"][0]
    # the same lag on, past the capacity: the target's own answers broke p99 by far more
    search, run = simulate(settings(), Model(lag_above=400.0, lag_ms=20.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "found", report["message"]
    assert 760 <= report["max_sustainable_rps"] <= 840
    broken = [s for s in report["steps"] if s["verdict"] == "slo"]
    assert broken and all(s["attempts"] == 2 for s in broken)  # measured twice: it lagged
    # 95 ms of lag breaks p(99)<100ms while the target answers in 10 ms: the generator
    search, run = simulate(settings(), Model(lag_above=400.0, lag_ms=95.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "generator-limit", report["message"]
    assert report["generator_limit"]["rps"] == 450 and report["at_least_rps"] == 300
    assert "send lag p99 95.00 ms > 10 ms" in report["generator_limit"]["reasons"]
    assert report["bounded_by"] == [] and report["max_sustainable_rps"] is None


def test_a_busy_agent_is_noted_not_blamed_for_the_targets_limit() -> None:
    search, run = simulate(settings(), Model(cpu=97.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "found", report["message"]
    assert "above 90% CPU in 2 of 2 intervals" in report["steps"][0]["notes"][0]


def test_a_first_step_that_breaks_the_slo_steps_down() -> None:
    search, run = simulate(settings(start_rate=400.0), Model(capacity=150.0))
    report = search.report(cast(Coordinator, run))
    assert report["status"] == "found", report["message"]
    assert 140 <= report["max_sustainable_rps"] <= 160
    assert [s["rate"] for s in report["steps"] if s["kind"] == "probe"][:3] == [400, 267, 178]


def test_expected_peak_headroom() -> None:
    search, run = simulate(settings(expected_peak=1000.0), Model(capacity=800.0))
    report = search.report(cast(Coordinator, run))
    assert report["headroom"] == pytest.approx(report["max_sustainable_rps"] / 1000.0)
    assert report["headroom_ok"] is False


def test_knee_of_a_hockey_stick() -> None:
    steps = [
        {"kind": "probe", "verdict": "ok", "rate": r, "p99_ms": p, "achieved_rps": r}
        for r, p in [(100, 10), (200, 10.5), (400, 11), (600, 14), (700, 40), (800, 400)]
    ]
    assert knee(steps)["offered_rps"] == 600  # type: ignore[index]
    assert knee(steps[:2]) is None


def test_degradation_levels_and_rates() -> None:
    assert parse_rates("500, 100,300") == (100.0, 300.0, 500.0)
    with pytest.raises(ValueError):
        parse_rates("100,fast")
    assert [lv["rate"] for lv in plan_levels(1000.0)] == [200.0, 500.0, 1000.0]
    assert [lv["level"] for lv in plan_levels(None, (1.0, 2.0, 3.0))] == ["low", "medium", "high"]


def _row(t: int, rate: float, p: float) -> dict[str, Any]:
    h = Histogram()
    h.record_many(np.full(int(rate), p * 1e6))
    return {
        "interval": t,
        "t": float(t),
        "start": float(t),
        "end": t + 1.0,
        "target_rps": rate,
        "total": {
            "arrivals": int(rate),
            "requests": int(rate),
            "errors": 0,
            "dropped": 0,
            "latency_hdr": h.to_hdr_v2().decode("ascii"),
        },
    }


def test_degradation_table_of_any_run() -> None:
    result = {"interval": 1.0, "timeline": [_row(0, 150, 5), _row(1, 250, 8), _row(2, 500, 30)]}
    table = from_result(result)
    assert table is not None and table["reference_rps"] == 500
    low, medium, high = table["levels"]
    assert not low["measured"] and "no interval" in low["source"]
    assert medium["p99_ms"] == pytest.approx(8, rel=0.01)
    assert high["p50_ms"] == pytest.approx(30, rel=0.01) and high["achieved_ratio"] == 1.0
    markdown = capacity_markdown({"degradation": table})
    assert "## Degradation" in markdown and "| high (100%) | 500.0 |" in markdown


# -- the real thing -------------------------------------------------------------------------


def run_capacity(
    scenario: dict[str, Any], *args: str, timeout: float = 150.0
) -> tuple[int, dict[str, Any], str, str, Path]:
    directory = Path(tempfile.mkdtemp(prefix="loadctl-capacity-"))
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    out = directory / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadctl",
            "capacity",
            str(path),
            "--out",
            str(out),
            "--metrics-port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    result_file = out / "result.json"
    data = json.loads(result_file.read_text()) if result_file.exists() else {}
    return proc.returncode, data, proc.stdout, proc.stderr, out


@pytest.mark.slow
def test_capacity_of_eight_workers_of_ten_ms() -> None:
    """8 workers × 10 ms serve 800 RPS: the search finds it within 10 %, bounded by p99.

    On a 2-core machine the target, the agent and the coordinator share the CPU; when
    something else stalls it, the search rightly reports a generator limit. That is
    retried once (a stall is rare twice in a row); a second one fails the test."""
    with running_target("--workers", "8", "--service-time", "10ms") as target:
        scenario = {
            "target": target.url,
            "defaults": {"timeout": "5s"},
            "requests": [{"name": "item", "path": "/api/inventory/items/3"}],
            "phases": [{"executor": "constant-rate", "rate": 10, "duration": "5s"}],
        }
        for attempt in (1, 2):
            started = time.monotonic()
            code, data, stdout, stderr, out = run_capacity(
                scenario,
                "--slo",
                "p(99)<100ms",
                "--slo",
                "error_rate<1%",
                "--start",
                "300",
                "--settle",
                "1s",
                "--window",
                "2s",
                "--agents",
                "1",
                "--expected-peak",
                "1000",
            )
            capacity = data.get("capacity", {})
            print(stderr[-4000:], stdout[-4000:], sep="\n")
            print(f"attempt {attempt}: {time.monotonic() - started:.0f} s")
            if capacity.get("status") != "generator-limit":
                break
    assert capacity, stderr[-3000:]
    assert capacity["status"] == "found", capacity["message"]
    assert abs(capacity["max_sustainable_rps"] - 800) <= 80, capacity["steps"]
    assert capacity["bounded_by"] == ["p(99) < 100ms"]
    assert code == 1  # headroom below 1 against an expected peak of 1000
    assert capacity["headroom_ok"] is False and "FAIL: headroom" in stdout
    assert "maximum sustainable rate" in stdout and "Capacity search" in stdout
    assert data["degradation"]["basis"] == "capacity"
    assert all(level["measured"] for level in data["degradation"]["levels"])
    assert "## Degradation" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert 'data-chart="capacity-latency"' in html and 'data-chart="capacity-errors"' in html
    assert capacity_html(data) in html


@pytest.mark.slow
def test_a_starved_generator_reports_its_own_limit() -> None:
    """One agent that may keep 2 requests in flight against 50 ms answers tops out near
    40 RPS: the search must say so, not call that the target's capacity."""
    with running_target("--latency", "50ms") as target:
        scenario = {
            "target": target.url,
            "defaults": {"timeout": "5s", "max_in_flight": 2},
            "requests": [{"name": "item", "path": "/api/inventory/items/3"}],
            "phases": [{"executor": "constant-rate", "rate": 10, "duration": "5s"}],
        }
        code, data, stdout, stderr, _ = run_capacity(
            scenario,
            "--slo",
            "p(99)<500ms",
            "--start",
            "20",
            "--step-factor",
            "2",
            "--settle",
            "1s",
            "--window",
            "2s",
            "--agents",
            "1",
        )
    capacity = data.get("capacity", {})
    assert capacity, stderr[-3000:]
    assert capacity["status"] == "generator-limit", capacity["message"]
    assert capacity["max_sustainable_rps"] is None
    assert "generator limit reached at" in stdout and "add agents" in stdout
    assert "in-flight limit" in capacity["message"]
    assert code == 3
