"""The terminal summary of a result record (works from result.json alone)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_LAT_COLUMNS = ("p50", "p90", "p95", "p99", "p99.9", "max")
_ERROR_CLASSES = ("4xx", "5xx", "timeout", "connect_error", "error")


def _ms(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _errors(totals: dict[str, Any]) -> str:
    outcomes = totals.get("outcomes", {})
    parts = [f"{k} {outcomes[k]}" for k in _ERROR_CLASSES if outcomes.get(k)]
    return ", ".join(parts) or "0"


def _row(label: str, t: dict[str, Any]) -> list[str]:
    lat = t.get("latency_ms", {})
    return [
        label,
        str(t["requests"]),
        f"{t['rps']:.1f}",
        _errors(t),
        str(t["dropped"]),
        *(_ms(lat, c) for c in _LAT_COLUMNS),
        _ms(t.get("service_ms", {}), "p99"),
        _ms(t.get("send_lag_ms", {}), "p99"),
    ]


def _table(title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in (
        "",
        "requests",
        "rps",
        "errors",
        "dropped",
        *(f"{c} ms" for c in _LAT_COLUMNS),
        "service p99",
        "send lag p99",
    ):
        table.add_column(name, justify="left" if not name else "right")
    return table


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a CI log: wide enough that no column is cut
            console = Console(width=160)
    status = result["status"] + (" (degraded)" if result.get("degraded") else "")
    agents = [a for a in result["agents"] if a["planned"]]
    skew = result.get("start_skew")
    console.print(
        f"[bold]loadctl[/] run {result['run_id']}: {status}, "
        f"{len(agents)} agent(s), {result['duration']:.1f} s against "
        f"{result['scenario']['target']}"
        + (f", start skew {skew * 1000:.1f} ms" if skew is not None else "")
    )
    table = _table("Requests (latency from the intended start; service time from the send)")
    for name, totals in result["requests"].items():
        table.add_row(*_row(name, totals))
    table.add_row(*_row("total", result["totals"]), style="bold")
    console.print(table)
    if len(result["phases"]) > 1:
        phases = _table("Phases")
        for p in result["phases"]:
            phases.add_row(*_row(p["name"], p["totals"]))
        console.print(phases)
    for note in result.get("engine_notes", []):
        console.print(f"note: {note}")
    for event in result.get("events", []):
        if event["kind"] in ("lost", "joined", "incomplete", "interrupted", "aborted"):
            console.print(f"[yellow]{event['kind']}[/] {event['agent']} {event['detail']}")
    for error in result.get("agent_errors", []):
        console.print(f"[red]agent error[/] {error}")
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning[/] {warning}", highlight=False)
    from loadctl.coordinator.recovery import recovery_lines  # after bursts and fault windows

    for line in recovery_lines(result.get("recovery")):
        console.print(line, highlight=False, markup=False)
    from loadctl.coordinator.faults import fault_lines  # per chaos fault window

    for line in fault_lines(result.get("faults") or []):
        console.print(line, highlight=False, markup=False)
    print_thresholds(result, console)


def print_thresholds(result: dict[str, Any], console: Console) -> None:
    """Each threshold with ✓ or ✗ and the value observed over the run."""
    thresholds = result.get("thresholds") or []
    if not thresholds:
        return
    failed = sum(1 for t in thresholds if not t["ok"])
    console.print(
        "[bold]Thresholds[/]: "
        + (f"[red]{failed} of {len(thresholds)} failed[/]" if failed else "[green]all held[/]")
    )
    for t in thresholds:
        mark = "[green]✓[/]" if t["ok"] else "[red]✗[/]"
        on = "" if t["on"] == "total" else f" on {t['on']}"
        note = " [red](aborted the run)[/]" if t.get("aborted") else ""
        console.print(
            f"  {mark} {escape(t['threshold'])}{escape(on)}: observed {t['observed_text']}{note}",
            highlight=False,
        )
