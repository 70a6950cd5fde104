"""`report.md`: the run in tables a reviewer can paste into a ticket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadctl.coordinator.reports import tables
from loadctl.coordinator.reports.capacity import capacity_markdown
from loadctl.coordinator.reports.data import ms, pct, planned_agents, thresholds_verdict, when

# report.md is pasted into tickets: narrower headers where the full one is long.
_SHORT_HEADERS = {tables.HOT_INTERVALS: "hot intervals"}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(table: tables.Table, right_from: int = 1) -> list[str]:
    """The table in Markdown: columns from `right_from` on align right; the total row bold."""
    header = [_SHORT_HEADERS.get(h, h) for h in table.header]
    rows = list(table.rows)
    if table.total is not None:
        rows.append([f"**{table.total[0]}**", *table.total[1:]])
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


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
    if result.get("thresholds"):
        out += ["## Thresholds", ""]
        out += _table(tables.threshold_table(result), right_from=99)
        out.append("")
    sections = capacity_markdown(result)  # capacity search, degradation, recovery
    out += [sections, ""] if sections else []
    out += ["## Phases", ""]
    out += _table(tables.phase_table(result), right_from=3)
    out += ["", "## Requests", ""]
    out += _table(tables.request_table(result))
    out += ["", "## Agents", ""]
    out += _table(tables.agent_table(result), right_from=2)
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
    out += _table(tables.settings_table(result), right_from=99)
    out.append("")
    return "\n".join(out)


def write_markdown(result: dict[str, Any], path: Path) -> Path:
    path.write_text(render_markdown(result), encoding="utf-8")
    return path
