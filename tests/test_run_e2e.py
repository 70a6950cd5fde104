"""A distributed run end to end: real coordinator, agent processes, target, sockets."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from cluster import (
    LOADCTL,
    constant,
    coordinator_argv,
    free_port,
    loadctl,
    run_scenario,
    write_scenario,
)
from target_process import running_target

pytestmark = pytest.mark.slow


def test_exact_counts_over_tcp_with_two_agents() -> None:
    """300 RPS × 5 s = 1,500: the target, the report and the schedule agree exactly."""
    with running_target() as target, tempfile.TemporaryDirectory() as tmp:
        path = write_scenario(constant(target.url, 300, 5), Path(tmp))
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out = Path(tmp) / "out"
        coordinator = subprocess.Popen(
            coordinator_argv(path, 2, endpoint, out),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        agents = [
            subprocess.Popen(
                [*LOADCTL, "agent", "--coordinator", endpoint],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            stdout, stderr = coordinator.communicate(timeout=60)
            agent_codes = [a.wait(20) for a in agents]
        finally:
            for p in [coordinator, *agents]:
                if p.poll() is None:
                    p.kill()
        assert coordinator.returncode == 0, stderr
        assert agent_codes == [0, 0]
        result = json.loads((out / "result.json").read_text())
        assert target.counts()["total"] == 1500
        assert result["totals"]["requests"] == 1500
        assert result["totals"]["arrivals"] == 1500
        assert result["phases"][0]["target_arrivals"] == 1500
        shares = [a["requests"] for a in result["agents"] if a["planned"]]
        assert len(shares) == 2 and sum(shares) == 1500
        assert all(abs(s - 750) <= 1 for s in shares), shares
        assert result["start_skew"] is not None and result["start_skew"] < 0.05
        assert "results: " in stdout


class PlainClient(threading.Thread):
    """Times GETs of a URL one after another on one kept-alive connection until
    stopped: a reference measured beside a run, on the same machine at the same time."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = urlsplit(url)
        self.stopping = threading.Event()
        self.ms: list[float] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.url.netloc, timeout=5)
        while not self.stopping.is_set():
            start = time.perf_counter()
            conn.request("GET", self.url.path)
            conn.getresponse().read()
            self.ms.append((time.perf_counter() - start) * 1e3)
        conn.close()

    def median(self) -> float:
        self.stopping.set()
        self.join(10)
        return statistics.median(self.ms)


def test_fixed_delay_target_p50() -> None:
    """A target that answers in 20 ms: the median latency is no less, and no more than
    a plain client measures at the same time plus 1 ms (the target's own time beyond
    its 20 ms, 1.5-2 ms on these VMs, grows when the machine is busy)."""
    with running_target("--latency", "20ms") as target:
        reference = PlainClient(target.url + "/api/inventory/items/7")
        reference.start()
        run = run_scenario(constant(target.url, 100, 4), agents=2)
        plain = reference.median()
    assert run.code == 0, run.stderr
    latency = run.data["totals"]["latency_ms"]
    assert 20.0 <= latency["p50"] <= plain + 1.0, (latency, plain)
    assert run.data["totals"]["requests"] == 400


def test_stall_shows_in_latency_not_necessarily_in_service_time() -> None:
    """A 1 s freeze at 200 RPS: latency from the intended start shows it (coordinated
    omission corrected), even for requests that were only scheduled during the stall."""
    with running_target() as target:
        import threading

        def stall() -> None:
            deadline = time.monotonic() + 60
            while target.counts()["total"] < 400 and time.monotonic() < deadline:
                time.sleep(0.05)  # two seconds into the run
            target.configure(stall_seconds=1.0)

        threading.Thread(target=stall, daemon=True).start()
        run = run_scenario(constant(target.url, 200, 5, max_in_flight=50), agents=2)
    assert run.code == 0, run.stderr
    totals = run.data["totals"]
    assert totals["latency_ms"]["p99"] >= 300, totals["latency_ms"]
    # Requests that found the in-flight bound full were dropped and counted, not lost.
    assert totals["requests"] + totals["dropped"] == 1000


def test_a_target_nobody_answers_is_measured_and_named_in_a_warning() -> None:
    """Nothing listens on the port: every request counts as a connect error, the run
    completes, and the summary and result.json say what to check."""
    target = f"http://127.0.0.1:{free_port()}"
    run = run_scenario(constant(target, 20, 1), agents=1)
    assert run.code == 0, run.stderr
    assert run.data["totals"]["requests"] == 20
    assert run.data["totals"]["outcomes"] == {"connect_error": 20}
    (warning,) = [w for w in run.data["warnings"] if "no request got a reply" in w]
    assert target in warning and "connect_error 20" in warning
    assert "no request got a reply" in run.stdout


def test_bad_scenario_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "target: http://127.0.0.1:1\nrequests:\n  - path: /a\nphases:\n"
        "  - executor: constant-rate\n    rate: 10\n    durration: 5s\n"
    )
    proc = loadctl("run", str(path), "--agents", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "bad.yaml:7" in lines[0] and "durration" in lines[0] and "duration" in lines[0]
    assert "Traceback" not in proc.stderr


def test_unreachable_coordinator_is_one_line_and_exit_3() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = loadctl("agent", "--coordinator", endpoint, "--connect-timeout", "2")
    assert proc.returncode == 3
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and endpoint in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def _tagged_processes(tag: str) -> set[int]:
    """Processes that inherited our tag: the demo and everything it started."""
    found = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("LOADCTL_TEST_TAG") == tag:
                found.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_demo_runs_to_the_end_and_leaves_nothing_behind() -> None:
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [*LOADCTL, "demo", "--duration", "4", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tempfile.mkdtemp(),
        env={**os.environ, "LOADCTL_TEST_TAG": tag},
    )
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    served = int(stdout.split("the target served ")[1].split()[0])
    assert served > 0
    deadline = time.monotonic() + 5
    while _tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tagged_processes(tag) == set()


def test_interrupted_run_writes_partial_result_and_exits_130() -> None:
    with running_target() as target, tempfile.TemporaryDirectory() as tmp:
        path = write_scenario(constant(target.url, 100, 30), Path(tmp))
        out = Path(tmp) / "out"
        proc = subprocess.Popen(
            [*LOADCTL, "run", str(path), "--agents", "2", "--out", str(out), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while target.counts()["total"] < 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # agents take a moment to start on a busy machine
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 130
        result = json.loads((out / "result.json").read_text())
        assert result["status"] == "interrupted"
        seen = target.counts()["total"]
        assert result["totals"]["requests"] == seen
        time.sleep(1.5)
        assert target.counts()["total"] == seen  # nothing sent after the stop
    assert sys.platform.startswith("linux")
