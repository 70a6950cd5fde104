"""SLO thresholds: syntax and validation, verdicts, exit codes and abort_on_fail.

The end-to-end runs use the demo target with a fixed 20 ms latency, so a
median below 250 ms holds and a median below 5 ms cannot.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from loadctl.coordinator.stats import Totals
from loadctl.coordinator.thresholds import observe
from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.scenario import Scenario
from loadctl.protocol.thresholds import parse_expression, parse_thresholds
from loadctl.scenario_file import ScenarioFileError, parse_scenario_text

from cluster import LOADCTL, loadctl, write_scenario
from target_process import running_target

REQUESTS = ["item", "health"]
PHASES = ["warm", "steady"]


# -- syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("p(95) < 500ms", "p", "<", 500.0),
        ("p(99)<1s", "p", "<", 1000.0),
        ("p(99.9) <= 250us", "p", "<=", 0.25),
        ("med < 20", "p", "<", 20.0),
        ("avg < 1.5s", "mean", "<", 1500.0),
        ("max < 2s", "max", "<", 2000.0),
        ("error_rate < 1%", "error_rate", "<", 0.01),
        ("error_rate <= 0.05", "error_rate", "<=", 0.05),
        ("rps >= 450", "rps", ">=", 450.0),
        ("dropped == 0", "dropped", "==", 0.0),
        ("checks > 99%", "checks", ">", 0.99),
        ("requests != 0", "requests", "!=", 0.0),
    ],
)
def test_expressions(text: str, metric: str, op: str, value: float) -> None:
    t = parse_expression(text)
    assert (t.metric, t.op) == (metric, op)
    assert t.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("p95 < 500ms", "write a percentile as p(95)"),
        ("p(95) = 500ms", "use '=='"),
        ("p(0) < 1s", "above 0"),
        ("p(95) < 1%", "not a duration"),
        ("error_rate < 500ms", "not a rate"),
        ("error_rate < 150%", "between 0% and 100%"),
        ("latency < 5s", "unknown metric"),
        ("rps >= lots", "not a number"),
        ("rps >=", "no value"),
        ("whatever", "cannot read"),
    ],
)
def test_bad_expressions(text: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_expression(text, ("thresholds", 0))
    assert words in str(info.value), str(info.value)
    assert str(info.value).startswith("thresholds[0]")


def test_mapping_form_and_scope() -> None:
    (t,) = parse_thresholds(
        [
            {
                "threshold": "p(99) < 1s",
                "on": "request:item",
                "abort_on_fail": True,
                "delay_abort_eval": "10s",
            }
        ],
        ("thresholds",),
        REQUESTS,
        PHASES,
    )
    assert (t.scope, t.name, t.abort_on_fail, t.delay_abort_eval) == ("request", "item", True, 10.0)
    assert t.label == "p(99) < 1s on request:item"
    (p,) = parse_thresholds(
        [{"threshold": "rps >= 10", "on": "phase:steady"}], (), REQUESTS, PHASES
    )
    assert (p.scope, p.name) == ("phase", "steady")


@pytest.mark.parametrize(
    ("entry", "words", "where"),
    [
        (
            {"threshold": "rps > 1", "on": "request:nope"},
            "no request named 'nope'",
            "thresholds[0].on",
        ),
        ({"threshold": "rps > 1", "on": "phase:nope"}, "no phase named 'nope'", "thresholds[0].on"),
        ({"threshold": "rps > 1", "on": "everything"}, "request:NAME", "thresholds[0].on"),
        (
            {"threshold": "rps > 1", "abort_on_fial": True},
            "did you mean 'abort_on_fail'",
            "thresholds[0].abort_on_fial",
        ),
        ({"on": "total"}, "missing required key 'threshold'", "thresholds[0].threshold"),
        (42, "expected a threshold expression", "thresholds[0]"),
    ],
)
def test_bad_entries(entry: Any, words: str, where: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_thresholds([entry], ("thresholds",), REQUESTS, PHASES)
    assert words in info.value.message
    assert info.value.where() == where


YAML = """\
target: http://127.0.0.1:9
requests:
  - {name: item, path: /item}
phases:
  - {name: steady, executor: constant-rate, rate: 10, duration: 1s}
thresholds:
  - p(95) < 500ms
  - threshold: rps >= 9
    on: phase:steady
  - threshold: error_rate < 1%
    on: request:itme
"""


def test_yaml_errors_name_the_line_and_on_is_not_a_boolean() -> None:
    with pytest.raises(ScenarioFileError) as info:
        parse_scenario_text(YAML, "s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml:11: thresholds[2].on: no request named 'itme'"), message
    scenario = parse_scenario_text(YAML.replace("itme", "item"), "s.yaml")
    assert [t.on for t in scenario.thresholds] == ["total", "phase:steady", "request:item"]
    # YAML reads a bare `on:` as true; the source shipped to agents must say "on" again
    assert all(True not in t for t in scenario.source["thresholds"] if isinstance(t, dict))
    again = Scenario.from_wire(json.loads(json.dumps(scenario.wire())))
    assert again.thresholds == scenario.thresholds


def test_a_bad_threshold_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(YAML.replace("p(95) < 500ms", "p(95) < fast"), encoding="utf-8")
    proc = loadctl("run", str(path), "--agents", "1", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"loadctl: error: {path}:7: thresholds[0]: threshold ")
    assert "'fast' is not a duration" in proc.stderr and "Traceback" not in proc.stderr


def test_observe_and_verdicts() -> None:
    totals = Totals()
    for ms in (10, 20, 30, 40):
        totals.latency.record(ms * 1_000_000)
    totals.outcomes = {"2xx": 3, "5xx": 1}
    totals.checks_passed, totals.checks_failed = 99, 1

    def value(text: str, seconds: float = 2.0) -> float | None:
        return observe(parse_expression(text), totals, seconds)

    assert value("p(50) < 1s") == pytest.approx(20.0, rel=1e-3)
    assert value("max < 1s") == pytest.approx(40.0, rel=1e-3)
    assert value("rps > 1") == 2.0
    assert value("rps > 1", 0.0) is None
    assert value("error_rate < 1%") == 0.25
    assert value("checks > 99%") == 0.99
    assert value("errors == 0") == 1.0
    assert parse_expression("error_rate < 30%").holds(0.25)
    assert not parse_expression("checks > 99%").holds(0.99)
    assert observe(parse_expression("p(99) < 1s"), Totals(), 1.0) is None


# -- real runs ------------------------------------------------------------------------------


def scenario(url: str, thresholds: list[Any], seconds: float = 3.0) -> dict[str, Any]:
    return {
        "name": "thresholds",
        "target": url,
        "requests": [{"name": "item", "path": "/api/inventory/items/1"}],
        "phases": [
            {"name": "steady", "executor": "constant-rate", "rate": 60, "duration": f"{seconds}s"}
        ],
        "thresholds": thresholds,
    }


def start(data: dict[str, Any], *extra: str) -> tuple[subprocess.Popen[str], Path]:
    directory = Path(tempfile.mkdtemp(prefix="loadctl-thresholds-"))
    path = write_scenario(data, directory)
    out = directory / "out"
    proc = subprocess.Popen(
        [
            *LOADCTL,
            "run",
            str(path),
            "--agents",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--metrics-port",
            "0",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def finish(proc: subprocess.Popen[str], out: Path) -> tuple[int, dict[str, Any], str, str]:
    stdout, stderr = proc.communicate(timeout=90)
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    return proc.returncode, result, stdout, stderr


Outcome = tuple[int, dict[str, Any], str, str]  # exit code, result.json, stdout, stderr
HELD = [
    "p(50) < 250ms",
    "error_rate < 1%",
    {"threshold": "rps >= 50", "on": "phase:steady"},
    {"threshold": "p(99) < 5s", "on": "request:item"},
    "dropped == 0",
]
FAILED = ["p(50) < 250ms", "p(50) < 5ms"]
ABORTED = [
    "p(50) < 250ms",
    {"threshold": "p(50) < 5ms", "abort_on_fail": True, "delay_abort_eval": "2s"},
]


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Outcome], int]:
    """Three runs at once (60 rps each, 1 agent): thresholds that hold, one that fails,
    and one that aborts a 30 s run; the last has a target of its own to count on."""
    with running_target("--latency", "20ms") as shared, running_target("--latency", "20ms") as own:
        started = {
            "held": start(scenario(shared.url, HELD)),
            "failed": start(scenario(shared.url, FAILED)),
            "aborted": start(scenario(own.url, ABORTED, 30.0)),
        }
        done = {label: finish(*run) for label, run in started.items()}
        served = int(own.counts()["total"])
    return done, served


@pytest.mark.slow
def test_exit_codes_follow_the_thresholds(runs: tuple[dict[str, Outcome], int]) -> None:
    (code_ok, ok, out_ok, err_ok), (code_bad, bad, out_bad, _) = runs[0]["held"], runs[0]["failed"]
    assert code_ok == 0, err_ok[-2000:]
    assert [t["ok"] for t in ok["thresholds"]] == [True] * 5
    assert ok["thresholds"][2]["observed"] == pytest.approx(60.0)
    assert "Thresholds: all held" in out_ok and "✓ p(50) < 250ms: observed" in out_ok
    assert "[   1.0s" not in err_ok  # --quiet: no live lines
    assert code_bad == 1
    first, second = bad["thresholds"]
    assert first["ok"] and not second["ok"]
    assert second["observed"] >= 20.0 and second["observed_text"].endswith("ms")
    assert second["first_failed_at"] is not None
    assert "✗ p(50) < 5ms: observed" in out_bad and "1 of 2 failed" in out_bad
    assert bad["totals"]["requests"] == 180  # a failed threshold does not stop the run


@pytest.mark.slow
def test_abort_on_fail_ends_the_run_within_two_intervals(
    runs: tuple[dict[str, Outcome], int],
) -> None:
    (code, result, stdout, stderr), served = runs[0]["aborted"], runs[1]
    assert code == 1, stderr[-2000:]
    held, aborted = result["thresholds"]
    assert held["ok"] and not aborted["ok"] and aborted["aborted"]
    assert aborted["aborted_at"] >= 2.0  # not before delay_abort_eval
    interval = result["interval"]
    loaded = [row for row in result["timeline"] if row["total"]["arrivals"]]
    last_end = max(row["t"] for row in loaded) + interval
    assert last_end <= aborted["aborted_at"] + 2 * interval + 1e-6, (last_end, aborted)
    assert result["totals"]["requests"] == served < 60 * (aborted["aborted_at"] + 2 * interval) + 1
    assert any(e["kind"] == "aborted" for e in result["events"])
    assert "aborted the run" in stdout
