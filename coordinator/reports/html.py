"""`report.html`: one self-contained file that renders offline.

Charts are inline SVG drawn in Python (`svg.py`); the page loads nothing (a
Content-Security-Policy forbids it) and its only script makes tables sortable
and marks the body `data-rendered` with the number of charts (and
`data-chart-boxes` with where they are), which tests check in headless
Chromium. Built from result.json data alone.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from loadctl.coordinator.reports import tables
from loadctl.coordinator.reports.capacity import capacity_html
from loadctl.coordinator.reports.data import (
    IntervalRow,
    interval_rows,
    ms,
    pct,
    planned_agents,
    thresholds_verdict,
    when,
)
from loadctl.coordinator.reports.svg import Axis, Band, Line, chart, wants_log_y
from loadctl.coordinator.result import CPU_WARN_PERCENT, latency_histogram
from loadctl.protocol.histogram import HistogramWireError
from loadctl.protocol.outcomes import ERROR_OUTCOMES

_MAX_SPECTRUM_LINES = 6

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;
  color:#0f172a;background:#f8fafc}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#475569}.ok{color:#15803d}.bad{color:#b91c1c}.warn{color:#b45309}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff}
.badge.ok{background:#16a34a}.badge.bad{background:#dc2626}.badge.warn{background:#d97706}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}.card span{color:#64748b;font-size:12px}
.warning{background:#fffbeb;border:1px solid #fcd34d;border-radius:6px;padding:8px 12px;
  margin:8px 0}
table{border-collapse:collapse;background:#fff;width:100%;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e2e8f0;padding:5px 8px;text-align:right;white-space:nowrap}
th{background:#f1f5f9;cursor:pointer;user-select:none}
th:first-child,td:first-child,td.l,th.l{text-align:left}
tr.total td{font-weight:600}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e2e8f0;border-radius:8px;
  margin:6px 0}
svg .grid{stroke:#e2e8f0}svg .axis{stroke:#94a3b8}svg .hline{stroke:#dc2626;stroke-dasharray:3 3}
svg .tick{font-size:11px;fill:#475569}svg .label{font-size:12px;fill:#334155}
svg .legend{font-size:12px;fill:#0f172a}svg .title{font-size:13px;font-weight:600;fill:#0f172a}
svg .band{font-size:11px;fill:#64748b}svg .nodata{font-size:16px;fill:#94a3b8}
pre{background:#fff;border:1px solid #e2e8f0;padding:10px;overflow:auto;font-size:12px}
footer{color:#94a3b8;margin:30px 0 10px;font-size:12px}
"""

_JS = """
(function(){
  function key(td){var t=td.getAttribute('data-v');if(t!==null)return parseFloat(t);
    var s=td.textContent.trim();var n=parseFloat(s.replace(/[^0-9.eE+-]/g,''));
    return isNaN(n)?s.toLowerCase():n;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,i){
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows)
          .filter(function(r){return !r.classList.contains('total');});
        var dir=th.getAttribute('data-dir')==='asc'?-1:1;
        th.setAttribute('data-dir',dir>0?'asc':'desc');
        rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
          return (x<y?-1:x>y?1:0)*dir;});
        var total=body.querySelector('tr.total');
        rows.forEach(function(r){body.insertBefore(r,total);});
      });
    });
  });
  var boxes=[];
  document.querySelectorAll('svg.chart').forEach(function(svg){
    var r=svg.getBoundingClientRect();
    boxes.push([r.left+window.scrollX,r.top+window.scrollY,r.width,r.height]
      .map(Math.round).join(','));
  });
  document.body.setAttribute('data-chart-boxes',boxes.join(';'));
  document.body.setAttribute('data-rendered',String(boxes.length));
})();
"""


def _table(table: tables.Table, left: int = 1, status: int | None = None) -> str:
    """The table as sortable HTML: the first `left` columns align left, column `status`
    (if any) is coloured by its mark, and the total row stays last when sorted."""

    def cells(row: list[Any], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=l' if i < left else ''}>{_html(c)}</{tag}>" for i, c in enumerate(row)
        )

    def marked(row: list[Any]) -> list[Any]:
        if status is None:
            return row
        copy = list(row)
        copy[status] = _status_cell(str(copy[status]))
        return copy

    out = [f'<table class="sortable"><thead><tr>{cells(table.header, "th")}</tr></thead><tbody>']
    out += [f"<tr>{cells(marked(r), 'td')}</tr>" for r in table.rows]
    if table.total is not None:
        out.append(f'<tr class="total">{cells(table.total, "td")}</tr>')
    out.append("</tbody></table>")
    return "".join(out)


class Markup(str):
    """Already-escaped HTML."""


def _html(value: Any) -> str:
    return value if isinstance(value, Markup) else escape(str(value))


def _status_cell(status: str) -> Markup:
    """A status coloured by its mark: ✓ ok, ✗ bad, anything else a warning."""
    cls = "ok" if status.startswith("✓") else "bad" if status.startswith("✗") else "warn"
    return Markup(f'<span class="{cls}">{escape(status)}</span>')


# -- charts ---------------------------------------------------------------------------------


def _bands(result: dict[str, Any]) -> list[Band]:
    return [
        Band(p.get("start", 0.0), p.get("end", 0.0), p["name"])
        for p in result.get("phases", [])
        if p.get("end", 0) > p.get("start", 0)
    ]


def _lat(row: IntervalRow, key: str) -> float | None:
    return row.total.latency_stats().get(key)


def charts(result: dict[str, Any], rows: list[IntervalRow]) -> list[str]:
    step = float(result.get("interval") or 1.0)
    bands = _bands(result)
    out = []
    rps = [
        Line("achieved rps", [(r.t, r.rps) for r in rows], step=True),
        Line(
            "target rps",
            [(r.t, r.target_rps) for r in rows],
            dashed=True,
            step=True,
            color="#64748b",
        ),
    ]
    out.append(
        chart(
            "rps",
            "Requests per second: achieved vs target",
            rps,
            y_label="req/s",
            bands=bands,
            step_width=step,
        )
    )
    lat_lines = [
        Line(k, [(r.t, _lat(r, k)) for r in rows], step=True) for k in ("p50", "p95", "p99", "max")
    ]
    log_y = wants_log_y(lat_lines)
    out.append(
        chart(
            "latency",
            "Latency per interval (from the intended start)",
            lat_lines,
            y_label="ms" + (" (log)" if log_y else ""),
            log_y=log_y,
            bands=bands,
            step_width=step,
        )
    )
    err_lines = []
    for k in ERROR_OUTCOMES:
        if any(r.total.outcomes.get(k) for r in rows):
            err_lines.append(
                Line(k, [(r.t, float(r.total.outcomes.get(k, 0))) for r in rows], step=True)
            )
    err_lines.append(
        Line(
            "dropped",
            [(r.t, float(r.total.dropped)) for r in rows],
            step=True,
            color="#0f172a",
            dashed=True,
        )
    )
    if not any(r.total.outcomes.get(k) for r in rows for k in ERROR_OUTCOMES):
        err_lines.insert(0, Line("errors", [(r.t, 0.0) for r in rows], step=True))
    out.append(
        chart(
            "errors",
            "Errors and dropped arrivals per interval",
            err_lines,
            y_label="count",
            bands=bands,
            step_width=step,
        )
    )
    users = [
        Line("active users", [(r.t, float(r.active_users)) for r in rows], step=True),
        Line(
            "target users",
            [(r.t, None if r.target_users is None else float(r.target_users)) for r in rows],
            dashed=True,
            step=True,
            color="#64748b",
        ),
    ]
    out.append(
        chart(
            "users",
            "Active users (closed-model phases)",
            users,
            y_label="users",
            bands=bands,
            step_width=step,
        )
    )
    agents = sorted({a for r in rows for a in r.cpu_percent})
    cpu = [Line(a, [(r.t, r.cpu_percent.get(a)) for r in rows], step=True) for a in agents]
    out.append(
        chart(
            "cpu",
            "Agent CPU (100% = one core)",
            cpu,
            y_label="% CPU",
            bands=bands,
            step_width=step,
            hlines=[(CPU_WARN_PERCENT, "latencies suspect above this")],
        )
    )
    out.append(spectrum(result))
    return out


def _spectrum_points(stats: dict[str, Any]) -> list[tuple[float, float | None]]:
    try:
        h = latency_histogram(stats)
    except HistogramWireError:
        return []
    if h.count == 0:
        return []
    top = min(math.log10(h.count), 6.0)
    xs = [i / 20 for i in range(int(top * 20) + 1)]
    ps = [100 * (1 - 10**-x) for x in xs]
    values = h.percentiles(ps)
    points: list[tuple[float, float | None]] = [
        (x, v / 1e6) for x, v in zip(xs, values, strict=True)
    ]
    points.append((top + 0.05, h.max / 1e6))
    return points


def spectrum(result: dict[str, Any]) -> str:
    lines = [Line("all requests", _spectrum_points(result.get("totals", {})), width=3)]
    requests = result.get("requests", {})
    if len(requests) > 1:
        for name, stats in list(requests.items())[:_MAX_SPECTRUM_LINES]:
            lines.append(Line(name, _spectrum_points(stats), width=1.5))
    top = max((x for line in lines for x, _ in line.points), default=3.0)
    labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
    ticks = [(float(i), labels[i]) for i in range(min(len(labels), math.floor(top) + 1))]
    log_y = wants_log_y(lines)
    return chart(
        "spectrum",
        "Latency by percentile, whole run",
        lines,
        x_label="percentile",
        y_label="ms" + (" (log)" if log_y else ""),
        log_y=log_y,
        x_axis=Axis(0.0, max(top, 1.0), False, ticks),
    )


# -- the page -------------------------------------------------------------------------------


def _cards(result: dict[str, Any]) -> str:
    t = result.get("totals", {})
    lat = t.get("latency_ms", {})
    cards = [
        ("requests", str(t.get("requests", 0))),
        ("rps", f"{t.get('rps', 0):.1f}"),
        ("error rate", pct(t.get("error_rate"))),
        ("dropped", str(t.get("dropped", 0))),
        ("p50 ms", ms(lat.get("p50"))),
        ("p95 ms", ms(lat.get("p95"))),
        ("p99 ms", ms(lat.get("p99"))),
        ("max ms", ms(lat.get("max"))),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in cards
        )
        + "</div>"
    )


def render_html(result: dict[str, Any]) -> str:
    rows = interval_rows(result)
    scenario = result.get("scenario", {})
    thresholds = result.get("thresholds", [])
    failed = any(not t["ok"] for t in thresholds)
    status = result.get("status", "?")
    badge = "bad" if failed or status == "failed" else "warn" if status != "completed" else "ok"
    verdict = thresholds_verdict(result)
    title = f"loadctl report: {scenario.get('name', 'scenario')}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<div class="sub">run <code>{escape(str(result.get("run_id")))}</code> against '
        f"{escape(str(scenario.get('target')))} · "
        f"started {escape(when(result.get('started_at')))} · "
        f"{result.get('duration', 0):.1f} s · {len(planned_agents(result))} agent(s)</div>",
        f'<p><span class="badge {badge}">{escape(status)}'
        f"{' (degraded)' if result.get('degraded') else ''}</span> "
        f'<span class="{"bad" if failed else "ok"}">{escape(verdict)}</span></p>',
        _cards(result),
    ]
    body += [f'<div class="warning">⚠ {escape(w)}</div>' for w in result.get("warnings", [])]
    if thresholds:
        body.append('<h2 id="thresholds">Thresholds</h2>')
        body.append(_table(tables.threshold_table(result), left=5, status=0))
    body.append(capacity_html(result))  # the capacity search's section, if it was one
    body.append('<h2 id="charts">Over time</h2>')
    body += charts(result, rows)
    body.append('<h2 id="phases">Phases</h2>')
    body.append(_table(tables.phase_table(result), left=2, status=-1))
    body.append('<h2 id="requests">Requests</h2>')
    body.append(_table(tables.request_table(result)))
    body.append('<h2 id="agents">Agents</h2>')
    body.append(_table(tables.agent_table(result), left=2))
    events = [e for e in result.get("events", []) if e.get("kind") != "plan-update"]
    notes = list(result.get("engine_notes", [])) + list(result.get("agent_errors", []))
    if events or notes:
        body.append('<h2 id="events">Events and notes</h2><ul>')
        start = result.get("started_at") or 0
        for e in events:
            body.append(
                f"<li>{e.get('at', 0) - start:+.1f} s <b>{escape(e['kind'])}</b> "
                f"{escape(e.get('agent', ''))} {escape(e.get('detail', ''))}</li>"
            )
        body += [f"<li>{escape(n)}</li>" for n in notes]
        body.append("</ul>")
    body.append('<h2 id="settings">Run settings</h2>')
    body.append(_table(tables.settings_table(result), left=2))
    source = scenario.get("source")
    if source:
        body.append(
            "<details><summary>Scenario as run</summary><pre>"
            + escape(json.dumps(source, indent=2, default=str))
            + "</pre></details>"
        )
    body.append(
        f"<footer>loadctl {escape(str(result.get('software', '')))} · schema "
        f"{escape(str(result.get('schema', '')))} · latencies are measured from each "
        "request's intended start (coordinated omission corrected)</footer>"
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + f"\n</main><script>{_JS}</script></body></html>\n"
    )


def write_html(result: dict[str, Any], path: Path) -> Path:
    path.write_text(render_html(result), encoding="utf-8")
    return path
