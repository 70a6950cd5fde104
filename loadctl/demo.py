"""`loadctl demo`: a real distributed load test against the built-in target, no file needed.

It starts the demo target (a separate process, like a real service), then a
local cluster (coordinator here, agents as processes on an ipc socket), runs
a short suite — a ramp, a steady rate, a small burst, and concurrent users —
prints the summary, and checks the target's own request count against the
report: the counts must agree exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import click

from loadctl import exits
from loadctl.launcher import loadctl_command, process_group
from loadctl.protocol.scenario import Scenario

LISTENING = "loadctl target listening on "


def demo_scenario(target: str, seconds: float) -> dict[str, Any]:
    """About `seconds` of load in four phases (each at least 1 s)."""
    part = max(seconds / 5, 1.0)
    return {
        "name": "demo",
        "target": target,
        "defaults": {"timeout": "5s", "max_in_flight": 500},
        "requests": [
            {"name": "stats", "path": "/api/inventory/stats", "weight": 3},
            {"name": "item", "path": "/api/inventory/items/42", "weight": 6},
            {"name": "health", "path": "/health", "weight": 1},
        ],
        "phases": [
            {
                "name": "ramp",
                "executor": "ramping-rate",
                "start_rate": 50,
                "stages": [{"duration": part, "target": 300}],
            },
            {"name": "steady", "executor": "constant-rate", "rate": 300, "duration": part},
            {"name": "burst", "executor": "burst", "rate": 800, "duration": part / 2},
            {"name": "recovery", "executor": "constant-rate", "rate": 200, "duration": part / 2},
            {
                "name": "users",
                "executor": "constant-users",
                "users": 50,
                "think": "50ms",
                "flow": "mix",  # each iteration one request, by the weights above
                "duration": part,
            },
        ],
    }


def _start_target(group: Any) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        loadctl_command("target", "--port", "0", "--latency", "lognormal:5ms:0.5"),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    group.processes.append(process)
    assert process.stdout is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if line.startswith(LISTENING):
            return process, line[len(LISTENING) :].strip()
        if not line and process.poll() is not None:
            break
    exits.fail("the demo target did not start (see the lines above)", exits.RUN_FAILED)


def _counts(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_loadctl/counts", timeout=5) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data


@click.command("demo")
@click.option("--duration", default=20.0, show_default=True, help="Seconds of load.")
@click.option("--agents", default=2, show_default=True, help="Local agent processes.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None)
@click.option("--quiet", is_flag=True)
def demo_command(duration: float, agents: int, out_dir: Path | None, quiet: bool) -> None:
    """Start the demo target and a local cluster, run a short suite, print the summary."""
    from loadctl.run_cmd import run_local

    if duration < 2 or duration > 600:
        exits.fail("--duration takes 2 to 600 seconds")
    if agents < 1 or agents > 4 * (os.cpu_count() or 1):
        exits.fail("--agents takes 1 to 4 per core")
    with process_group() as group:
        _, url = _start_target(group)
        scenario = Scenario.from_dict(demo_scenario(url, duration))
        print(f"demo: target {url}, {agents} agents, {scenario.duration:.0f} s of load", flush=True)
        code = run_local(scenario, agents, out_dir, quiet)
        seen = _counts(url)["total"]
    if code not in (exits.OK, exits.THRESHOLD_FAILED):
        sys.exit(code)
    print(f"demo: the target served {seen} requests", flush=True)
    sys.exit(code)
