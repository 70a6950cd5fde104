"""Load models across two agents: ramps, bursts, users, multi-phase — against the real target."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import run_scenario
from target_process import running_target

pytestmark = pytest.mark.slow


def scenario(target: str, *phases: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {
        "target": target,
        "defaults": {"timeout": "5s", **defaults},
        "requests": [{"name": "item", "path": "/api/inventory/items/3"}],
        "phases": list(phases),
    }


def arrivals_per_interval(data: dict[str, Any], phase: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for row in data["timeline"]:
        for s in row["series"]:
            if s["phase"] == phase:
                out[row["interval"]] = out.get(row["interval"], 0) + s["arrivals"]
    return out


def test_ramp_follows_the_integral_each_second() -> None:
    """50→250 RPS over 4 s: seconds carry 75, 125, 175, 225 (±2); 600 in all, exactly."""
    ramp = {
        "name": "ramp",
        "executor": "ramping-rate",
        "start_rate": 50,
        "stages": [{"duration": "4s", "target": 250}],
    }
    with running_target() as target:
        run = run_scenario(scenario(target.url, ramp), agents=2)
        seen = target.counts()["total"]
    assert run.code == 0, run.stderr
    per_second = {i: n for i, n in arrivals_per_interval(run.data, "ramp").items() if n}
    expected = {0: 75, 1: 125, 2: 175, 3: 225}
    assert set(per_second) == set(expected), per_second
    for second, count in expected.items():
        assert abs(per_second[second] - count) <= 2, per_second
    assert run.data["totals"]["arrivals"] == 600
    assert run.data["totals"]["requests"] == seen == 600


def test_burst_is_exact_in_total_and_within_one_percent_per_second() -> None:
    burst = {"name": "burst", "executor": "burst", "rate": 2000, "duration": "2s"}
    with running_target() as target:
        run = run_scenario(scenario(target.url, burst, max_in_flight=2000), agents=2)
        seen = target.counts()["total"]
    assert run.code == 0, run.stderr
    per_second = {i: n for i, n in arrivals_per_interval(run.data, "burst").items() if n}
    assert sorted(per_second) == [0, 1], per_second
    for count in per_second.values():
        assert abs(count - 2000) <= 20, per_second
    totals = run.data["totals"]
    assert totals["arrivals"] == 4000
    assert totals["requests"] + totals["dropped"] == 4000
    assert totals["requests"] == seen
    lag = totals["send_lag_ms"]
    print(f"burst 2000 RPS on 2 agents: send lag p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms")


def test_users_throughput_gauge_and_graceful_ramp_down() -> None:
    """200 users, 50 ms think, 10 ms service: ≈ 200 / 0.06 s RPS; 200 active at the plateau;
    the ramp down ends every user within the grace period."""
    users = {
        "name": "users",
        "executor": "ramping-users",
        "start_users": 200,
        "think": "50ms",
        "grace": "2s",
        "stages": [{"duration": "4s", "target": 200}, {"duration": "1s", "target": 0}],
    }
    with running_target("--latency", "10ms") as target:
        run = run_scenario(scenario(target.url, users, connections=256), agents=2)
        seen = target.counts()["total"]
    assert run.code == 0, run.stderr
    rows = {row["interval"]: row for row in run.data["timeline"]}
    plateau = [rows[i] for i in (1, 2, 3) if i in rows]
    assert plateau and all(r["active_users"] == 200 for r in plateau), [
        (r["interval"], r["active_users"]) for r in plateau
    ]
    rates = [sum(s["requests"] for s in r["series"]) for r in plateau]
    median = sorted(rates)[len(rates) // 2]
    # A closed model obeys Little's law: throughput = users / (think + response time). With
    # the 10 ms the target promises that is 200 / 0.060 s ≈ 3,333 RPS; on a 2-core machine
    # that also runs the (Python) target, the response time is what the target manages
    # (13-14 ms on a quiet machine, 17-22 ms on a busy one), so the law is checked with
    # the response time measured in the same intervals.
    service = [
        sum(s["service_ms"]["mean"] * s["requests"] for s in r["series"] if s["requests"])
        / max(1, sum(s["requests"] for s in r["series"]))
        for r in plateau
    ]
    response = sorted(service)[len(service) // 2] / 1000
    expected = 200 / (0.050 + response)
    print(
        f"200 users: {rates} RPS at {response * 1000:.1f} ms responses; "
        f"Little's law ≈ {expected:.0f} (≈ {200 / 0.060:.0f} at 10 ms)"
    )
    assert abs(median - expected) / expected <= 0.10, (rates, service)
    assert run.data["totals"]["requests"] == seen
    # graceful ramp-down: the run ended within the stage plus the grace period
    assert run.data["duration"] <= 5 + 2 + 1.5


def test_multi_phase_results_add_up() -> None:
    phases = [
        {"name": "warm", "executor": "constant-rate", "rate": 100, "duration": "2s"},
        {
            "name": "users",
            "executor": "constant-users",
            "users": 10,
            "think": "20ms",
            "duration": "2s",
        },
        {
            "name": "background",
            "executor": "constant-rate",
            "rate": 50,
            "duration": "3s",
            "start": "1s",
        },
    ]
    with running_target() as target:
        run = run_scenario(scenario(target.url, *phases), agents=2)
        seen = target.counts()["total"]
    assert run.code == 0, run.stderr
    by_phase = {p["name"]: p["totals"]["requests"] for p in run.data["phases"]}
    assert by_phase["warm"] == 200 and by_phase["background"] == 150
    assert by_phase["users"] > 0
    assert sum(by_phase.values()) == run.data["totals"]["requests"] == seen
    starts = {p["name"]: p["start"] for p in run.data["phases"]}
    assert starts == {"warm": 0.0, "users": 2.0, "background": 1.0}
