"""Chaos under load, end to end: the coordinator drives a real fault proxy on the
scenario's timeline, the result shows each fault's impact, and every fault is gone
afterwards — also when the run is interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from cluster import LOADCTL, run_scenario, write_scenario
from target_process import running_target
from test_chaos_proxy import running_chaos

pytestmark = pytest.mark.slow


def scenario(url: str, api: str, duration: float, chaos: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "target": url,
        "defaults": {"timeout": "3s"},
        "requests": [{"name": "item", "path": "/api/inventory/items/5"}],
        "phases": [{"executor": "constant-rate", "rate": 100, "duration": duration}],
        "chaos": [{**c, "api": api, "proxy": "target"} for c in chaos],
    }


def test_latency_fault_shows_during_its_window_and_is_removed() -> None:
    with running_target() as target:
        host, port = target.url.removeprefix("http://").rsplit(":", 1)
        with running_chaos("--listen", "127.0.0.1:0", "--upstream", f"{host}:{port}") as chaos:
            fault = {
                "at": "3s",
                "duration": "2s",
                "toxic": {"type": "latency", "attributes": {"latency": 200}},
            }
            run = run_scenario(scenario(chaos.url, chaos.api, 9, [fault]), agents=2)
            toxics = chaos.ok("GET", "/proxies/target/toxics")
    assert run.code == 0, run.stderr
    assert toxics == []
    [impact] = run.data["faults"]
    assert impact["applied_at"] is not None and impact["removed_at"] is not None
    assert impact["before"]["p50_ms"] < 100
    assert 195 <= impact["during"]["p50_ms"] <= 400, impact["during"]
    assert impact["after"]["p50_ms"] < 100, impact["after"]
    assert impact["recovery"]["ok"] is True
    assert run.data["totals"]["requests"] == 900
    kinds = [e["kind"] for e in run.data["events"]]
    assert "fault-applied" in kinds and "fault-removed" in kinds
    assert "fault " in run.stdout


def test_interrupted_run_still_removes_the_fault() -> None:
    with running_target() as target, tempfile.TemporaryDirectory() as tmp:
        host, port = target.url.removeprefix("http://").rsplit(":", 1)
        with running_chaos("--listen", "127.0.0.1:0", "--upstream", f"{host}:{port}") as chaos:
            fault = {"at": "1s", "duration": "60s", "toxic": "down"}
            path = write_scenario(scenario(chaos.url, chaos.api, 30, [fault]), Path(tmp))
            out = Path(tmp) / "out"
            proc = subprocess.Popen(
                [*LOADCTL, "run", str(path), "--agents", "1", "--out", str(out), "--quiet"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if chaos.ok("GET", "/proxies/target")["enabled"] is False:
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the outage was never applied")
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
            assert proc.returncode == 130
            assert chaos.ok("GET", "/proxies/target")["enabled"] is True
            result = json.loads((out / "result.json").read_text())
            assert result["status"] == "interrupted"
            assert result["faults"][0]["removed_at"] is not None


def test_unreachable_chaos_api_is_one_line_before_any_load(tmp_path: Path) -> None:
    with running_target() as target:
        data = scenario(
            target.url, "http://127.0.0.1:9", 2, [{"at": "1s", "duration": "1s", "toxic": "down"}]
        )
        run = run_scenario(data, agents=1)
        assert run.code == 3
        assert target.counts()["total"] == 0
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "chaos API" in errors[0], run.stderr
