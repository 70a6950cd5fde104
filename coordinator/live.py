"""What a run looks like while it runs: a live panel in a terminal, log lines elsewhere.

Every reported interval the coordinator's state is copied into a `Frame` of
plain values (`build_frame`, on the event loop). The terminal view (rich Live,
on stderr) renders the latest frame from its own refresh thread, so it only
ever reads that immutable copy; phase progress and time left follow the wall
clock between frames. Off a terminal, `LogView` prints one plain line every
few seconds instead. Both warn when an agent runs above CPU_WARN_PERCENT: its
latencies then include the generator's own delay.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from loadctl.coordinator.result import CPU_WARN_PERCENT, interval_targets
from loadctl.coordinator.run import Coordinator
from loadctl.coordinator.stats import Totals
from loadctl.coordinator.thresholds import Cumulative, ThresholdMonitor
from loadctl.protocol.outcomes import ERROR_OUTCOMES

_MS = 1e6
LOG_EVERY = 5.0  # seconds between plain log lines


@dataclass(frozen=True)
class PhaseSpan:
    name: str
    start: float
    end: float


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    alive: bool
    cpu_percent: float
    rss_bytes: int


@dataclass(frozen=True)
class Frame:
    run_id: str
    target: str
    index: int
    interval: float
    t: float  # run time at the end of the interval
    started_at: float  # coordinator clock of run time 0
    expected_end: float
    phases: tuple[PhaseSpan, ...]
    target_rps: float | None
    achieved_rps: float
    target_users: int | None
    active_users: int
    last_ms: tuple[float, float, float] | None  # p50, p95, p99 over the interval
    run_ms: tuple[float, float, float] | None  # ... over the run so far
    requests: int  # so far
    errors_last: dict[str, int]
    errors_run: dict[str, int]
    dropped_last: int
    dropped_run: int
    agents: tuple[AgentRow, ...]
    thresholds: tuple[tuple[str, bool | None, str], ...]  # label, ok (None: pending), value
    warnings: tuple[str, ...] = field(default=())

    def active_phases(self, t: float) -> list[PhaseSpan]:
        return [p for p in self.phases if p.start <= t < p.end]


def _quantiles(totals: Totals) -> tuple[float, float, float] | None:
    lat = totals.latency
    if lat.count == 0:
        return None
    p50, p95, p99 = lat.percentiles((50.0, 95.0, 99.0))
    return p50 / _MS, p95 / _MS, p99 / _MS


def _errors(totals: Totals) -> dict[str, int]:
    return {k: totals.outcomes[k] for k in ERROR_OUTCOMES if totals.outcomes.get(k)}


def hot_agents(cpu: dict[str, float]) -> list[str]:
    return [
        f"agent {a} at {v:.0f}% CPU: its latencies include the generator's own delay"
        for a, v in sorted(cpu.items())
        if v > CPU_WARN_PERCENT
    ]


def build_frame(
    run: Coordinator, cumulative: Cumulative, monitor: ThresholdMonitor | None, index: int
) -> Frame:
    record = run.timeline.intervals.get(index)
    last = Totals()
    cpu: dict[str, float] = {}
    users = 0
    if record is not None:
        for key in list(record.series):
            last.merge(record.view(key))
        cpu = dict(record.cpu_percent)
        users = sum(record.active_users.values())
    so_far = cumulative.select()
    t0 = index * run.interval
    arrivals, target_users = interval_targets(run.phases, t0, t0 + run.interval)
    thresholds: tuple[tuple[str, bool | None, str], ...] = ()
    if monitor is not None:
        thresholds = tuple(
            (s.threshold.label, s.live_ok, s.threshold.format(s.live)) for s in monitor.states
        )
    agents = tuple(
        AgentRow(a.agent_id, a.alive, a.cpu_percent, a.rss_bytes)
        for a in sorted(run.registry.planned(), key=lambda a: a.agent_id)
    )
    return Frame(
        run_id=run.run_id,
        target=run.scenario.target,
        index=index,
        interval=run.interval,
        t=t0 + run.interval,
        started_at=run.start_at,
        expected_end=run.expected_end,
        phases=tuple(PhaseSpan(p.name, p.start, p.end) for p in run.phases if p.duration > 0),
        target_rps=arrivals / run.interval if arrivals is not None else None,
        achieved_rps=last.completed / run.interval,
        target_users=target_users,
        active_users=users,
        last_ms=_quantiles(last),
        run_ms=_quantiles(so_far),
        requests=so_far.completed,
        errors_last=_errors(last),
        errors_run=_errors(so_far),
        dropped_last=last.dropped,
        dropped_run=so_far.dropped,
        agents=agents,
        thresholds=thresholds,
        warnings=tuple(hot_agents(cpu)),
    )


# -- plain lines ---------------------------------------------------------------------------


def _q(values: tuple[float, float, float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "-"


def _error_text(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    return f"{total} ({', '.join(f'{k} {v}' for k, v in errors.items())})" if total else "0"


def log_line(frame: Frame) -> str:
    phases = frame.active_phases(frame.t - frame.interval / 2)
    phase = (
        ", ".join(
            f"{p.name} {100 * min(1.0, (frame.t - p.start) / (p.end - p.start)):.0f}%"
            for p in phases
        )
        or "-"
    )
    target = f"/{frame.target_rps:.0f}" if frame.target_rps is not None else ""
    users = f"{frame.active_users}" + (
        f"/{frame.target_users}" if frame.target_users is not None else ""
    )
    alive = sum(1 for a in frame.agents if a.alive)
    cpu = max((a.cpu_percent for a in frame.agents if a.alive), default=0.0)
    parts = [
        f"[{frame.t:6.1f}s/{frame.expected_end:.0f}s] {phase}",
        f"rps {frame.achieved_rps:.1f}{target}",
        f"p50/p95/p99 {_q(frame.last_ms)} ms (run {_q(frame.run_ms)})",
        f"errors {_error_text(frame.errors_last)}",
        f"dropped {frame.dropped_last}",
        f"users {users}",
        f"agents {alive}/{len(frame.agents)} cpu≤{cpu:.0f}%",
    ]
    if frame.thresholds:
        failing = [label for label, ok, _ in frame.thresholds if ok is False]
        held = sum(1 for _, ok, _ in frame.thresholds if ok)
        parts.append(
            f"thresholds {held}/{len(frame.thresholds)} ok"
            + (f", failing: {'; '.join(failing)}" if failing else "")
        )
    line = " | ".join(parts)
    for warning in frame.warnings:
        line += f"\nwarning: {warning}"
    return line


class View(Protocol):
    def start(self) -> None: ...

    def update(self, frame: Frame) -> None: ...

    def stop(self) -> None: ...


class LogView:
    """One plain line on the first interval, then every `every` seconds."""

    def __init__(self, stream: IO[str] | None = None, every: float = LOG_EVERY) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self._last: float | None = None

    def start(self) -> None:
        pass

    def update(self, frame: Frame) -> None:
        if self._last is not None and frame.t - self._last < self.every - 1e-9:
            return
        self._last = frame.t
        print(log_line(frame), file=self.stream, flush=True)

    def stop(self) -> None:
        pass


# -- the terminal panel --------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def render(frame: Frame | None, waiting: str, now: float | None = None) -> RenderableType:
    if frame is None:
        return Text(waiting, style="dim")
    now = time.time() if now is None else now
    t = max(0.0, now - frame.started_at)
    head = Text.assemble(
        ("loadctl ", "bold"),
        f"run {frame.run_id} → {frame.target}   ",
        (f"{min(t, frame.expected_end):.0f} s", "bold"),
        f" of {frame.expected_end:.0f} s, {max(0.0, frame.expected_end - t):.0f} s left",
    )
    phases = Table.grid(padding=(0, 1))
    for p in frame.active_phases(min(t, frame.expected_end - 1e-6)) or frame.phases[-1:]:
        length = max(p.end - p.start, 1e-9)
        done = min(max(t - p.start, 0.0), length)
        phases.add_row(
            Text(f"phase {p.name}", style="cyan"),
            ProgressBar(total=length, completed=done, width=40),
            f"{100 * done / length:3.0f}%  {max(0.0, p.end - t):.0f} s left",
        )
    load = Table.grid(padding=(0, 3))
    target = f" / target {frame.target_rps:.1f}" if frame.target_rps is not None else ""
    users = f"users {frame.active_users}" + (
        f" / {frame.target_users}" if frame.target_users is not None else ""
    )
    load.add_row(
        Text.assemble(("RPS ", "bold"), f"{frame.achieved_rps:.1f}{target}"),
        users,
        f"requests {frame.requests}",
        Text(f"dropped {frame.dropped_run}", style="red" if frame.dropped_run else ""),
    )
    lat = Table(box=None, header_style="bold", padding=(0, 2))
    for column in ("latency ms", "p50", "p95", "p99", "errors"):
        lat.add_column(column, justify="left" if column == "latency ms" else "right")
    for label, values, errors in (
        (f"interval {frame.index}", frame.last_ms, frame.errors_last),
        ("so far", frame.run_ms, frame.errors_run),
    ):
        cells = [f"{v:.2f}" for v in values] if values else ["-"] * 3
        lat.add_row(label, *cells, _error_text(errors))
    agents = Text("agents  ", style="bold")
    for a in frame.agents:
        colour = "red" if not a.alive else "yellow" if a.cpu_percent > CPU_WARN_PERCENT else "green"
        agents.append("● ", style=colour)
        agents.append(f"{a.agent_id} {a.cpu_percent:.0f}% {_mb(a.rss_bytes)}   ")
    parts: list[RenderableType] = [head, phases, load, lat, agents]
    if frame.thresholds:
        th = Text("thresholds  ", style="bold")
        for label, ok, value in frame.thresholds:
            mark, style = ("…", "dim") if ok is None else ("✓", "green") if ok else ("✗", "red")
            th.append(f"{mark} {label} ({value})   ", style=style)
        parts.append(th)
    for warning in frame.warnings:
        parts.append(Text(f"⚠ {warning}", style="yellow"))
    return Group(*parts)


class _ThroughConsole:
    """A stream for logging handlers that prints above the live panel."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, text: str) -> int:
        self.console.print(text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


class LiveView:
    """rich Live on stderr, redrawn twice a second from the latest frame. While it
    runs, the `loadctl` log lines print above the panel instead of through it."""

    def __init__(self, console: Console | None = None, agents: int = 1) -> None:
        self.console = console or Console(stderr=True)
        self.frame: Frame | None = None
        self.waiting = f"waiting for {agents} agent(s)…"
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self.live = Live(
            console=self.console,
            get_renderable=lambda: render(self.frame, self.waiting),
            refresh_per_second=2,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def start(self) -> None:
        self.live.start()
        through = _ThroughConsole(self.console)
        self._handlers = [
            (h, h.setStream(through))
            for h in logging.getLogger("loadctl").handlers
            if type(h) is logging.StreamHandler and h.stream in (sys.stderr, self.console.file)
        ]

    def update(self, frame: Frame) -> None:
        self.frame = frame
        self.live.refresh()

    def stop(self) -> None:
        self.live.stop()
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []


def make_view(quiet: bool, agents: int = 1, stream: IO[str] | None = None) -> View | None:
    """The view for where stderr goes: a live panel on a terminal, lines elsewhere."""
    if quiet:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        return LiveView(Console(file=stream), agents)
    return LogView(stream)
