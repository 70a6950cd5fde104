"""Run real local clusters from tests: `loadctl run` as a subprocess.

    result = run_scenario(scenario_dict, agents=2)
    assert result.code == 0
    assert result.data["totals"]["requests"] == 1500

Everything is real: the CLI, the coordinator, agent processes over an ipc
socket, the HTTP engine and the target the scenario names (a test starts it
with `running_target`). Each run is bounded by `timeout`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOADCTL = [sys.executable, "-m", "loadctl"]


@dataclass
class ClusterRun:
    code: int
    data: dict[str, Any]  # result.json, or {} if none was written
    stdout: str
    stderr: str
    out_dir: Path

    def series_total(self, phase: str | None = None, name: str | None = None) -> int:
        """Completed requests over the timeline, filtered by phase and name."""
        return sum(
            s["requests"]
            for row in self.data["timeline"]
            for s in row["series"]
            if (phase is None or s["phase"] == phase) and (name is None or s["name"] == name)
        )


def loadctl(
    *args: str, timeout: float = 120.0, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOADCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def write_scenario(scenario: dict[str, Any], directory: Path) -> Path:
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return path


def run_scenario(
    scenario: dict[str, Any], agents: int = 2, timeout: float = 120.0, extra: tuple[str, ...] = ()
) -> ClusterRun:
    directory = Path(tempfile.mkdtemp(prefix="loadctl-test-"))
    path = write_scenario(scenario, directory)
    out = directory / "out"
    proc = loadctl(
        "run",
        str(path),
        "--agents",
        str(agents),
        "--out",
        str(out),
        "--quiet",
        *extra,
        timeout=timeout,
    )
    result_file = out / "result.json"
    data = json.loads(result_file.read_text()) if result_file.exists() else {}
    return ClusterRun(proc.returncode, data, proc.stdout, proc.stderr, out)


def coordinator_argv(scenario: Path, agents: int, bind: str, out: Path, *extra: str) -> list[str]:
    """`loadctl coordinator` for `agents` agents at `bind`, results in `out`, quiet."""
    argv = [*LOADCTL, "coordinator", str(scenario), "--agents", str(agents), "--bind", bind]
    return [*argv, "--out", str(out), "--quiet", *extra]


def agent_argv(endpoint: str, *extra: str) -> list[str]:
    return [*LOADCTL, "agent", "--coordinator", endpoint, *extra]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def constant(target: str, rate: float, duration: float, **defaults: Any) -> dict[str, Any]:
    """A one-phase constant-rate scenario of one GET against `target`."""
    return {
        "target": target,
        "defaults": {"timeout": "5s", **defaults},
        "requests": [{"name": "item", "path": "/api/inventory/items/7"}],
        "phases": [{"executor": "constant-rate", "rate": rate, "duration": duration}],
    }
