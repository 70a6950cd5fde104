"""The capacity search, the degradation table and recovery times, as reports show them.

Everything renders from result.json data alone: `capacity_html` (the HTML
section, with inline-SVG charts of latency percentiles and error rate against
offered rate), `capacity_markdown` (Markdown: capacity, degradation and
recovery tables), `print_capacity` (the terminal) and `step_line` (one line
per step while the search runs). Each returns or prints nothing when the
result has nothing of its kind.
"""

from __future__ import annotations

from html import escape
from typing import Any

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from loadctl.coordinator.reports.svg import Line, chart, wants_log_y
from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.thresholds import LATENCY_METRICS, parse_expression

_STEP_HEADER = (
    "step",
    "kind",
    "offered rps",
    "achieved rps",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "error rate",
    "dropped",
    "send lag p99 ms",
    "agent CPU",
    "verdict",
)
_LEVEL_HEADER = (
    "level",
    "target rps",
    "offered rps",
    "achieved rps",
    "achieved ÷ offered",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "error rate",
    "dropped",
    "measured in",
)


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _rps(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _verdict(step: dict[str, Any]) -> str:
    v = step.get("verdict", "")
    if v == "slo":
        return "✗ " + ", ".join(step.get("failed_slos", []))
    if v == "generator":
        return "⚠ generator: " + "; ".join(step.get("generator_reasons", []))
    if v == "ok":
        return "✓ ok" + "".join(f" ({n})" for n in step.get("notes", []))
    return str(v)


def step_line(step: dict[str, Any]) -> str:
    """One step as the search reports it while it runs."""
    cpu = step.get("agent_cpu_max")
    head = (
        f"step {step['step']:>2} {step['kind']:<11} {step['rate']:>8g} rps: achieved "
        f"{_rps(step.get('achieved_rps'))}, p50/p95/p99 {_ms(step.get('p50_ms'))}/"
        f"{_ms(step.get('p95_ms'))}/{_ms(step.get('p99_ms'))} ms, errors "
        f"{_pct(step.get('error_rate'))}, dropped {step.get('dropped', 0)}, send lag p99 "
        f"{_ms(step.get('send_lag_p99_ms'))} ms, CPU {'-' if cpu is None else f'{cpu:.0f}%'}"
    )
    if step.get("verdict") == "slo":
        broken = [
            f"{s['slo']} (observed {s['observed_text']})" for s in step["slos"] if not s["ok"]
        ]
        return f"{head} → SLO broken: {', '.join(broken)}"
    if step.get("verdict") == "generator":
        return f"{head} → generator: {'; '.join(step.get('generator_reasons', []))}"
    notes = "".join(f" ({n})" for n in step.get("notes", []))
    return f"{head} → {step.get('verdict', '')}{notes}"


def _step_row(step: dict[str, Any]) -> list[str]:
    cpu = step.get("agent_cpu_max")
    return [
        str(step["step"]),
        step["kind"] + (f" ×{step['attempts']}" if step.get("attempts", 1) > 1 else ""),
        f"{step['rate']:g}",
        _rps(step.get("achieved_rps")),
        _ms(step.get("p50_ms")),
        _ms(step.get("p95_ms")),
        _ms(step.get("p99_ms")),
        _pct(step.get("error_rate")),
        str(step.get("dropped", "-")),
        _ms(step.get("send_lag_p99_ms")),
        "-" if cpu is None else f"{cpu:.0f}%",
        _verdict(step),
    ]


def _level_row(row: dict[str, Any]) -> list[str]:
    ratio = row.get("achieved_ratio")
    return [
        row["level"] + (f" ({100 * row['fraction']:.0f}%)" if row.get("fraction") else ""),
        f"{row['rate']:.1f}",
        _rps(row.get("offered_rps")),
        _rps(row.get("achieved_rps")),
        "-" if ratio is None else f"{100 * ratio:.1f}%",
        _ms(row.get("p50_ms")),
        _ms(row.get("p95_ms")),
        _ms(row.get("p99_ms")),
        _pct(row.get("error_rate")),
        str(row.get("dropped", "-")),
        str(row.get("source", "")),
    ]


def _facts(cap: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures, in order."""
    out = []
    best = cap.get("max_sustainable_rps")
    if best is not None:
        out.append(
            (
                "maximum sustainable rate",
                f"{best:g} rps" + (" (confirmed)" if cap.get("confirmed") else " (unconfirmed)"),
            )
        )
    elif cap.get("at_least_rps") is not None:
        out.append(("sustained at least", f"{cap['at_least_rps']:g} rps"))
    if cap.get("bounded_by"):
        observed = ", ".join(
            f"{v['slo']} (observed {v['observed_text']})" for v in cap["bounded_by_observed"]
        )
        out.append(("bounded by", f"{observed} at {cap['first_failing_rps']:g} rps"))
    knee = cap.get("knee")
    if knee:
        out.append(
            (
                "knee (p99 against offered rate)",
                f"{knee['offered_rps']:g} rps offered, p99 {_ms(knee['p99_ms'])} ms",
            )
        )
    gen = cap.get("generator_limit")
    if gen:
        out.append(("generator limit", f"{gen['message']} ({'; '.join(gen['reasons'])})"))
    if cap.get("expected_peak_rps"):
        out.append(("expected peak", f"{cap['expected_peak_rps']:g} rps"))
        out.append(("headroom", headroom_text(cap)))
    s = cap.get("settings", {})
    out.append(
        (
            "search",
            f"from {s.get('start_rps', 0):g} rps × {s.get('step_factor', 0):g}, precision "
            f"{100 * s.get('precision', 0):g}%, settle {s.get('settle_s', 0):g} s, window "
            f"{s.get('window_s', 0):g} s, {s.get('agents', 0)} agent(s); SLOs: "
            + ", ".join(cap.get("slos", [])),
        )
    )
    return out


def headroom_text(cap: dict[str, Any]) -> str:
    ok = cap.get("headroom_ok")
    value = cap.get("headroom")
    verdict = "PASS" if ok else "FAIL" if ok is False else "UNKNOWN"
    if value is None:
        return f"{verdict}: no rate held the SLOs"
    bound = "at least " if cap.get("headroom_is_lower_bound") else ""
    return f"{verdict}: headroom {bound}{value:.2f}× the expected peak"


def _steps(cap: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in cap.get("steps", []) if s.get("kind") != "cooldown"]


def _slo_lines(cap: dict[str, Any]) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """(latency bounds in ms, error-rate bounds in %) of the search's SLOs, for the charts."""
    latency, errors = [], []
    for label in cap.get("slos", []):
        try:
            t = parse_expression(label.split(" on ")[0])
        except ScenarioError:
            continue
        if t.metric in LATENCY_METRICS:
            latency.append((t.value, t.expression))
        elif t.metric == "error_rate":
            errors.append((100 * t.value, t.expression))
    return latency, errors


# -- HTML ----------------------------------------------------------------------------------


def _html_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(
        f"<th{' class=l' if i == 0 else ''}>{escape(h)}</th>" for i, h in enumerate(header)
    )
    last = len(header) - 1
    wrap = ' class=l style="white-space:normal;min-width:16em"'  # the verdict: may be long

    def cell(i: int, text: str) -> str:
        attrs = wrap if i == last else " class=l" if i in (0, 1) else ""
        return f"<td{attrs}>{escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def capacity_charts(cap: dict[str, Any]) -> list[str]:
    steps = sorted(_steps(cap), key=lambda s: s["rate"])
    latency_bounds, error_bounds = _slo_lines(cap)
    lat = [
        Line(k, [(s["rate"], s.get(f"{k}_ms")) for s in steps if s.get(f"{k}_ms") is not None])
        for k in ("p50", "p95", "p99")
    ]
    log_y = wants_log_y(lat)
    errors = [
        Line(
            "error rate %",
            [(s["rate"], 100 * s["error_rate"]) for s in steps if s.get("error_rate") is not None],
            color="#dc2626",
        )
    ]
    return [
        chart(
            "capacity-latency",
            "Latency percentiles against offered rate",
            lat,
            x_label="offered rate (req/s)",
            y_label="ms" + (" (log)" if log_y else ""),
            log_y=log_y,
            hlines=latency_bounds,
        ),
        chart(
            "capacity-errors",
            "Error rate against offered rate",
            errors,
            x_label="offered rate (req/s)",
            y_label="% of attempted",
            hlines=error_bounds,
        ),
    ]


def degradation_html(table: dict[str, Any] | None) -> str:
    if not table or not table.get("levels"):
        return ""
    return '<h2 id="degradation">Degradation</h2>' + _html_table(
        _LEVEL_HEADER, [_level_row(r) for r in table["levels"]]
    )


def capacity_html(result: dict[str, Any]) -> str:
    """The report's capacity section ("" when the run was no capacity search)."""
    cap = result.get("capacity")
    if not isinstance(cap, dict):
        return ""
    good = cap.get("status") == "found" and cap.get("headroom_ok") is not False
    facts = "".join(
        f"<tr><td class=l>{escape(k)}</td><td class=l>{escape(v)}</td></tr>" for k, v in _facts(cap)
    )
    out = [
        '<h2 id="capacity">Capacity</h2>',
        f'<p class="{"ok" if good else "bad"}"><b>{escape(cap.get("message", ""))}</b></p>',
        f"<table><tbody>{facts}</tbody></table>",
        *capacity_charts(cap),
        '<h2 id="capacity-steps">Capacity search steps</h2>',
        _html_table(_STEP_HEADER, [_step_row(s) for s in _steps(cap)]),
        degradation_html(result.get("degradation")),
    ]
    return "\n".join(out)


# -- Markdown ------------------------------------------------------------------------------


def _md_table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return lines


def _recovery_rows(recovery: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in recovery:
        if r.get("baseline_phase") is None:
            rows.append([r["phase"], "-", "-", "-", "-", r.get("note", "")])
            continue
        base = r["baseline"]
        rows.append(
            [
                r["phase"],
                f"{r['baseline_phase']}: p99 {_ms(base['p99_ms'])} ms, errors "
                f"{_pct(base['error_rate'])}",
                _ms(r["p99"]["peak"]),
                _after(r["p99"]),
                _after(r["error_rate"]),
                f"p99 ≤ {_ms(r['p99']['limit'])} ms, errors ≤ {_pct(r['error_rate']['limit'])}",
            ]
        )
    return rows


def _after(metric: dict[str, Any]) -> str:
    return f"{metric['seconds']:g} s" if metric.get("recovered") else "never (within the run)"


def capacity_markdown(result: dict[str, Any]) -> str:
    """Capacity, degradation and recovery sections ("" when the result has none)."""
    out: list[str] = []
    cap = result.get("capacity")
    if isinstance(cap, dict):
        out += ["## Capacity", "", f"**{cap.get('message', '')}**", ""]
        out += _md_table(("", ""), [[k, v] for k, v in _facts(cap)])
        out += ["", "### Steps", ""]
        out += _md_table(_STEP_HEADER, [_step_row(s) for s in _steps(cap)])
        out.append("")
    table = result.get("degradation")
    if isinstance(table, dict) and table.get("levels"):
        ref = table.get("reference_rps")
        basis = table.get("basis", "")
        out += ["## Degradation", ""]
        out += [f"Levels from the {basis}" + (f" ({ref:.1f} rps)." if ref else "."), ""]
        out += _md_table(_LEVEL_HEADER, [_level_row(r) for r in table["levels"]])
        out.append("")
    recovery = result.get("recovery")
    if recovery:
        out += ["## Recovery", ""]
        out += _md_table(
            (
                "disturbance",
                "baseline",
                "peak p99 ms",
                "p99 back after",
                "errors back after",
                "tolerance",
            ),
            _recovery_rows(recovery),
        )
        out.append("")
    return "\n".join(out).strip()


# -- terminal ------------------------------------------------------------------------------


_TERMINAL_HEADER = (
    "#",
    "kind",
    "offered",
    "achieved",
    "p50",
    "p95",
    "p99",
    "errors",
    "dropped",
    "lag p99",
    "CPU",
    "verdict",
)
_SHORT = {"ok": "ok", "slo": "SLO ✗", "generator": "generator ⚠"}


def _rich_table(title: str, header: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i in (0, 1) or i == len(header) - 1 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _terminal_row(step: dict[str, Any]) -> list[str]:
    row = _step_row(step)
    row[-1] = _SHORT.get(step.get("verdict", ""), step.get("verdict", ""))
    return row


def print_capacity(result: dict[str, Any], console: Console | None = None) -> None:
    """The search's steps, verdict, degradation table and headroom line."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: do not squeeze the tables to 80
            console = Console(width=132)
    cap = result.get("capacity")
    if not isinstance(cap, dict):
        return
    console.print(
        _rich_table(
            "Capacity search (rates in rps, latencies in ms, from the intended start)",
            _TERMINAL_HEADER,
            [_terminal_row(s) for s in _steps(cap)],
        )
    )
    for s in _steps(cap):
        if s.get("verdict") in ("slo", "generator"):
            console.print(f"  step {s['step']}: {_verdict(s)}", highlight=False, markup=False)
    table = result.get("degradation")
    if isinstance(table, dict) and table.get("levels"):
        console.print(
            _rich_table("Degradation", _LEVEL_HEADER, [_level_row(r) for r in table["levels"]])
        )
    for key, value in _facts(cap):
        console.print(f"{key}: {value}", highlight=False, markup=False)
    good = cap.get("status") == "found"
    console.print(
        f"[bold {'green' if good else 'red'}]capacity:[/] {rich_escape(cap.get('message', ''))}",
        highlight=False,
    )
