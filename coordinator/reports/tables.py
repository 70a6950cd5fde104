"""The run's tables (thresholds, phases, requests, agents, settings) as rows of cells.

report.md and report.html show the same tables; what goes in them is decided
here once, from the result record alone, and each renderer only formats the
cells: escaping, alignment, markup for status cells and for the total row.
Cells are plain values (text or numbers) so a renderer can format them without
knowing which table they came from. A status cell starts with ✓, ✗ or ⚠ (or
"—" when there is nothing to judge); report.html colours it by that mark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadctl.coordinator.reports.data import (
    LAT_KEYS,
    errors_text,
    ms,
    pct,
    phase_status,
    phase_target,
    planned_agents,
    settings,
)
from loadctl.coordinator.result import CPU_WARN_PERCENT

Row = list[Any]

# The agents table's column: intervals an agent spent above the CPU warning level.
HOT_INTERVALS = f"intervals > {CPU_WARN_PERCENT:g}% CPU"


@dataclass(frozen=True, slots=True)
class Table:
    header: list[str]
    rows: list[Row]
    total: Row | None = None  # the whole run's row, shown last and never sorted


def threshold_table(result: dict[str, Any]) -> Table:
    """One row a threshold: its status mark first, and how it failed (live, or by aborting)."""
    rows = []
    for t in result.get("thresholds", []):
        note = "aborted the run" if t.get("aborted") else ""
        if not note and t.get("first_failed_at") is not None:
            note = f"first failed live at {t['first_failed_at']:g} s"
        rows.append(["✓" if t["ok"] else "✗", t["threshold"], t["on"], t["observed_text"], note])
    return Table(["", "threshold", "on", "observed", "note"], rows)


def phase_table(result: dict[str, Any]) -> Table:
    """One row a phase, its status last."""
    rows = []
    for p in result.get("phases", []):
        t = p.get("totals", {})
        lat = t.get("latency_ms", {})
        rows.append(
            [
                p["name"],
                p.get("executor", ""),
                f"{p.get('start', 0):g}–{p.get('end', 0):g}",
                phase_target(p),
                f"{t.get('rps', 0):.1f}",
                t.get("requests", 0),
                pct(t.get("error_rate")),
                t.get("dropped", 0),
                *(ms(lat.get(k)) for k in ("p50", "p95", "p99", "max")),
                phase_status(result, p),
            ]
        )
    header = ["phase", "executor", "time s", "target", "measured rps", "requests"]
    header += ["error rate", "dropped", "p50 ms", "p95 ms", "p99 ms", "max ms", "status"]
    return Table(header, rows)


def _request_row(label: str, t: dict[str, Any]) -> Row:
    lat = t.get("latency_ms", {})
    return [
        label,
        t.get("requests", 0),
        f"{t.get('rps', 0):.1f}",
        errors_text(t.get("outcomes", {})),
        pct(t.get("error_rate")),
        t.get("dropped", 0),
        *(ms(lat.get(k)) for k in LAT_KEYS),
    ]


def request_table(result: dict[str, Any]) -> Table:
    """One row a request name, and the run's totals as the total row."""
    header = ["request", "requests", "rps", "errors", "error rate", "dropped"]
    header += [f"{k} ms" for k in LAT_KEYS]
    rows = [_request_row(n, t) for n, t in result.get("requests", {}).items()]
    return Table(header, rows, total=_request_row("total", result.get("totals", {})))


def _agent_state(agent: dict[str, Any]) -> str:
    if agent.get("lost_at"):
        return "lost"
    return "ok" if agent.get("complete") else "incomplete"


def agent_table(result: dict[str, Any]) -> Table:
    """One row a planned agent: its machine, how hot it ran, and how it ended."""
    rows = []
    for a in planned_agents(result):
        mean = a.get("cpu_mean_percent")
        rows.append(
            [
                a["id"],
                a.get("host", ""),
                a.get("cores", ""),
                a.get("snapshots", 0),
                "-" if mean is None else f"{mean:.0f}%",
                f"{a.get('max_cpu_percent', 0):.0f}%",
                f"{a.get('max_rss_bytes', 0) / 1e6:.0f} MB",
                a.get("cpu_hot_intervals", 0),
                _agent_state(a),
            ]
        )
    header = ["agent", "host", "cores", "snapshots", "CPU mean", "CPU max", "RSS max"]
    header += [HOT_INTERVALS, "state"]
    return Table(header, rows)


def settings_table(result: dict[str, Any]) -> Table:
    return Table(["setting", "value"], [[k, v] for k, v in settings(result)])
