"""`report.md`: the run in tables a reviewer can paste into a ticket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadctl.coordinator.reports.capacity import capacity_markdown
from loadctl.coordinator.reports.data import (
    errors_text,
    ms,
    pct,
    phase_status,
    phase_target,
    planned_agents,
    settings,
    thresholds_verdict,
    when,
)

_LAT = ("p50", "p90", "p95", "p99", "p99.9", "max")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _request_row(label: str, t: dict[str, Any]) -> list[Any]:
    lat = t.get("latency_ms", {})
    return [
        label,
        t.get("requests", 0),
        f"{t.get('rps', 0):.1f}",
        errors_text(t.get("outcomes", {})),
        pct(t.get("error_rate")),
        t.get("dropped", 0),
        *(ms(lat.get(k)) for k in _LAT),
    ]


def render_markdown(result: dict[str, Any]) -> str:
    scenario = result.get("scenario", {})
    status = result.get("status", "?") + (" (degraded)" if result.get("degraded") else "")
    agents = planned_agents(result)
    totals = result.get("totals", {})
    out = [
        f"# loadctl report: {scenario.get('name', 'scenario')}",
        "",
        f"Run `{result.get('run_id')}` against {scenario.get('target')}: **{status}**, "
        f"{len(agents)} agent(s), {result.get('duration', 0):.1f} s, "
        f"started {when(result.get('started_at'))}. **{thresholds_verdict(result)}.**",
        "",
        f"{totals.get('requests', 0)} requests at {totals.get('rps', 0):.1f} rps, "
        f"error rate {pct(totals.get('error_rate'))}, {totals.get('dropped', 0)} dropped; "
        f"latency p50 {ms(totals.get('latency_ms', {}).get('p50'))} ms, "
        f"p95 {ms(totals.get('latency_ms', {}).get('p95'))} ms, "
        f"p99 {ms(totals.get('latency_ms', {}).get('p99'))} ms "
        "(measured from each request's intended start).",
        "",
    ]
    warnings = list(result.get("warnings", []))
    if warnings:
        out += [f"> ⚠ {w}" for w in warnings] + [""]
    thresholds = result.get("thresholds", [])
    if thresholds:
        out += ["## Thresholds", ""]
        rows = []
        for t in thresholds:
            note = "aborted the run" if t.get("aborted") else ""
            if not note and t.get("first_failed_at") is not None:
                note = f"first failed live at {t['first_failed_at']:g} s"
            rows.append(
                ["✓" if t["ok"] else "✗", t["threshold"], t["on"], t["observed_text"], note]
            )
        out += _table(["", "threshold", "on", "observed", "note"], rows, right_from=99)
        out.append("")
    sections = capacity_markdown(result)  # capacity search, degradation, recovery
    out += [sections, ""] if sections else []
    out += ["## Phases", ""]
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
    out += _table(
        [
            "phase",
            "executor",
            "time s",
            "target",
            "measured rps",
            "requests",
            "error rate",
            "dropped",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "status",
        ],
        rows,
        right_from=3,
    )
    out += ["", "## Requests", ""]
    rows = [_request_row(n, t) for n, t in result.get("requests", {}).items()]
    rows.append(_request_row("**total**", totals))
    out += _table(
        [
            "request",
            "requests",
            "rps",
            "errors",
            "error rate",
            "dropped",
            *(f"{k} ms" for k in _LAT),
        ],
        rows,
    )
    out += ["", "## Agents", ""]
    rows = []
    for a in agents:
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
                "lost" if a.get("lost_at") else "ok" if a.get("complete") else "incomplete",
            ]
        )
    out += _table(
        [
            "agent",
            "host",
            "cores",
            "snapshots",
            "CPU mean",
            "CPU max",
            "RSS max",
            "hot intervals",
            "state",
        ],
        rows,
        right_from=2,
    )
    events = [e for e in result.get("events", []) if e.get("kind") != "plan-update"]
    notes = list(result.get("engine_notes", [])) + list(result.get("agent_errors", []))
    if events or notes:
        out += ["", "## Events and notes", ""]
        start = result.get("started_at") or 0
        for e in events:
            at = e.get("at", 0) - start
            out.append(
                f"- {at:+.1f} s {e['kind']} {e.get('agent', '')} {e.get('detail', '')}".rstrip()
            )
        out += [f"- {n}" for n in notes]
    out += ["", "## Settings", ""]
    out += _table(["setting", "value"], [[k, v] for k, v in settings(result)], right_from=99)
    out.append("")
    return "\n".join(out)


def write_markdown(result: dict[str, Any], path: Path) -> Path:
    path.write_text(render_markdown(result), encoding="utf-8")
    return path
