"""`loadctl compare`: flags a slowed-down target, passes an unchanged one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadctl.coordinator.compare import Limits, compare, parse_tolerance

from cluster import LOADCTL, loadctl, write_scenario
from target_process import running_target


def stats(p50: float, p99: float, rps: float, error_rate: float = 0.0) -> dict[str, Any]:
    return {
        "latency_ms": {"p50": p50, "p95": p99, "p99": p99},
        "rps": rps,
        "error_rate": error_rate,
    }


def result(totals: dict[str, Any], **requests: dict[str, Any]) -> dict[str, Any]:
    return {"totals": totals, "requests": requests, "phases": [{"name": "p", "totals": totals}]}


def flagged(base: dict[str, Any], new: dict[str, Any], **limits: float) -> set[tuple[str, str]]:
    return {(c.scope, c.metric) for c in compare(base, new, Limits(**limits)) if c.regressed}


def test_rules() -> None:
    base = result(stats(20, 40, 100), a=stats(20, 40, 50), gone=stats(1, 2, 3))
    assert flagged(base, base) == set()
    slower = result(stats(23, 40, 100), a=stats(20, 45, 50), new=stats(1, 2, 3))
    assert flagged(slower, base) == set()  # faster is never a regression
    assert flagged(base, slower) == {
        ("total", "p50"),
        ("phase:p", "p50"),
        ("request:a", "p95"),
        ("request:a", "p99"),
    }
    assert flagged(base, slower, tolerance=0.3) == set()
    assert flagged(base, slower, latency_floor_ms=5.0) == set()  # +3 ms, +5 ms: under the floor
    fewer = result(stats(20, 40, 85))
    assert ("total", "rps") in flagged(base, fewer)
    assert flagged(base, result(stats(20, 40, 95))) == set()
    assert flagged(base, result(stats(20, 40, 100, 0.0005))) == set()  # below the 0.1 pt floor
    assert ("total", "error_rate") in flagged(base, result(stats(20, 40, 100, 0.02)))
    rows = {(c.scope, c.where) for c in compare(base, slower)}
    assert ("request:gone", "base") in rows and ("request:new", "new") in rows
    assert parse_tolerance("10%") == parse_tolerance("0.1") == pytest.approx(0.1)
    with pytest.raises(ValueError):
        parse_tolerance("lots")


def scenario(url: str) -> dict[str, Any]:
    return {
        "name": "compare",
        "target": url,
        "requests": [
            {"name": "item", "path": "/api/inventory/items/1", "weight": 3},
            {"name": "stats", "path": "/api/inventory/stats", "weight": 1},
        ],
        "phases": [{"name": "steady", "executor": "constant-rate", "rate": 40, "duration": "3s"}],
    }


def start(data: dict[str, Any], directory: Path) -> subprocess.Popen[str]:
    directory.mkdir()
    path = write_scenario(data, directory)
    return subprocess.Popen(
        [
            *LOADCTL,
            "run",
            str(path),
            "--agents",
            "1",
            "--quiet",
            "--metrics-port",
            "0",
            "--out",
            str(directory / "out"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_compare_flags_a_slowed_target_and_passes_an_unchanged_one(tmp_path: Path) -> None:
    """Three runs at once (light load: 40 rps each): a baseline and a rerun against
    one target, and a run against a copy of it that answers 400 ms slower."""
    files = {}
    with running_target("--latency", "30ms") as fast, running_target("--latency", "430ms") as slow:
        procs = {
            label: start(scenario(url), tmp_path / label)
            for label, url in (("base", fast.url), ("same", fast.url), ("slow", slow.url))
        }
        for label, proc in procs.items():
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-2000:]
            files[label] = str(tmp_path / label / "out" / "result.json")
    # a busy test machine adds the odd tail spike: judge "unchanged" with room for it
    same = loadctl(
        "compare", files["base"], files["same"], "--tolerance", "50%", "--latency-floor", "100ms"
    )
    assert same.returncode == 0, same.stdout
    assert "no regression" in same.stdout
    for scope in ("total", "request:item", "request:stats", "phase:steady"):
        assert scope in same.stdout
    slow = loadctl(
        "compare", files["base"], files["slow"], "--tolerance", "50%", "--latency-floor", "100ms"
    )
    assert slow.returncode == 1, slow.stdout
    assert "regression" in slow.stdout and "total p50 +" in slow.stdout
    base_p50 = json.loads(Path(files["base"]).read_text())["totals"]["latency_ms"]["p50"]
    slow_p50 = json.loads(Path(files["slow"]).read_text())["totals"]["latency_ms"]["p50"]
    assert slow_p50 > base_p50 + 300
    bad = loadctl("compare", files["base"], files["slow"], "--tolerance", "many")
    assert bad.returncode == 2 and "--tolerance" in bad.stderr
