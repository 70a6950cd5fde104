"""The live view: the terminal panel, the plain log lines off a terminal, --quiet."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from loadctl.coordinator.live import AgentRow, Frame, LiveView, LogView, PhaseSpan, log_line, render

from cluster import loadctl, write_scenario
from target_process import running_target


def frame(t: float = 3.0, cpu: float = 40.0, **changes: object) -> Frame:
    values: dict[str, object] = dict(
        run_id="abc123",
        target="http://127.0.0.1:8080",
        index=int(t) - 1,
        interval=1.0,
        t=t,
        started_at=time.time() - 2.0,  # the panel follows the wall clock: in "warm"
        expected_end=10.0,
        phases=(PhaseSpan("warm", 0.0, 4.0), PhaseSpan("steady", 4.0, 10.0)),
        target_rps=450.0,
        achieved_rps=449.0,
        target_users=None,
        active_users=0,
        last_ms=(12.3, 20.1, 31.0),
        run_ms=(12.1, 19.9, 33.2),
        requests=1347,
        errors_last={"5xx": 3},
        errors_run={"5xx": 7, "timeout": 1},
        dropped_last=0,
        dropped_run=2,
        agents=(AgentRow("local-0", True, cpu, 63_000_000), AgentRow("local-1", False, 0.0, 0)),
        thresholds=(
            ("p(95) < 500ms", True, "19.9ms"),
            ("rps >= 450", False, "449.0"),
            ("checks > 99%", None, "no data"),
        ),
        warnings=(),
    )
    values.update(changes)
    return Frame(**values)  # type: ignore[arg-type]


def test_terminal_panel_shows_the_run() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    console.print(render(frame(), "waiting"))
    text = out.getvalue()
    for expected in (
        "run abc123",
        "phase warm",
        "RPS 449.0 / target 450.0",
        "requests 1347",
        "dropped 2",
        "interval 2",
        "so far",
        "12.30",
        "20.10",
        "31.00",
        "33.20",
        "5xx 3",
        "5xx 7, timeout 1",
        "local-0 40% 63 MB",
        "local-1",
        "✓ p(95) < 500ms (19.9ms)",
        "✗ rps >= 450 (449.0)",
        "… checks > 99%",
    ):
        assert expected in text, (expected, text)
    assert re.search(r"\d+% +\d+ s left", text), text


def test_hot_agent_warning_in_panel_and_line() -> None:
    hot = frame(
        cpu=97.0,
        warnings=("agent local-0 at 97% CPU: its latencies include the generator's own delay",),
    )
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=160, color_system=None).print(render(hot, ""))
    assert "agent local-0 at 97% CPU: its latencies include the generator's own delay" in (
        out.getvalue()
    )
    assert "warning: agent local-0 at 97% CPU" in log_line(hot)


def test_log_line_and_cadence() -> None:
    line = log_line(frame())
    assert line.startswith("[   3.0s/10s] warm 75%")
    assert "rps 449.0/450" in line and "p50/p95/p99 12.3/20.1/31.0 ms (run 12.1/19.9/33.2)" in line
    assert "errors 3 (5xx 3)" in line and "agents 1/2" in line
    assert "thresholds 1/3 ok, failing: rps >= 450" in line
    stream = io.StringIO()
    view = LogView(stream, every=5.0)
    for t in range(1, 13):
        view.update(frame(float(t)))
    times = [line[1:].split("s/")[0].strip() for line in stream.getvalue().splitlines()]
    assert times == ["1.0", "6.0", "11.0"]


def test_live_view_starts_updates_and_stops() -> None:
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=140, color_system=None), agents=2)
    view.start()
    view.update(frame())
    view.stop()
    assert "RPS 449.0" in out.getvalue()


@pytest.mark.slow
def test_plain_log_lines_off_a_terminal(tmp_path: object) -> None:
    """Not a terminal (stderr is a pipe here): a plain line on the first interval and
    then every few seconds, with the rate, percentiles and thresholds."""
    with running_target("--latency", "10ms") as target:
        path = write_scenario(
            {
                "target": target.url,
                "requests": [{"name": "item", "path": "/api/inventory/items/1"}],
                "phases": [{"executor": "constant-rate", "rate": 50, "duration": "3s"}],
                "thresholds": ["p(99) < 5s"],
            },
            tmp_path,  # type: ignore[arg-type]
        )
        proc = loadctl(
            "run",
            str(path),
            "--agents",
            "1",
            "--metrics-port",
            "0",
            "--out",
            str(path.parent / "out"),
            timeout=90,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert lines, proc.stderr
    first = lines[0]
    assert re.match(r"\[ +1\.0s/3s\] constant-rate-1 \d+% \| rps \d+\.\d/50 \| p50/p95/p99 ", first)
    assert "thresholds 1/1 ok" in first
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log
