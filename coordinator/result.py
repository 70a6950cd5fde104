"""The result record (`result.json`): everything later reports are built from.

Schema `loadctl.result/1` (documented in the README): run, scenario, agents,
events, start skew, per-phase and per-name totals, the whole run's totals,
and the per-interval timeline per series. Each total carries its latency
histogram in HdrHistogram V2 form (`latency_hdr`, base64) so reports and
comparisons can recompute any percentile exactly.

Added for the reports (all optional for readers, so older files still render):
each timeline row has `total` (the interval over every series, with its
`latency_hdr`), `target_arrivals` / `target_rps` (open-model phases) and
`target_users` (closed-model phases), and each row's series carries its own
`latency_hdr` (the HdrHistogram interval log is rebuilt from these); each
agent has `cpu_mean_percent` and `cpu_hot_intervals` (intervals above
CPU_WARN_PERCENT); `warnings` says when an agent's CPU makes its latencies
suspect; `thresholds` holds each threshold's verdict (coordinator.thresholds).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadctl import __version__
from loadctl.coordinator.run import Coordinator
from loadctl.coordinator.stats import Totals
from loadctl.protocol.histogram import Histogram
from loadctl.protocol.outcomes import REPLY_OUTCOMES
from loadctl.protocol.scenario import Phase

SCHEMA = "loadctl.result/1"
CPU_WARN_PERCENT = 90.0  # above this an agent's own delay shows in its latencies


def _with_hdr(totals: Totals, seconds: float) -> dict[str, Any]:
    out = totals.summary(seconds)
    out["latency_hdr"] = totals.latency.to_hdr_v2().decode("ascii") if totals.latency.count else ""
    return out


def latency_histogram(stats: dict[str, Any]) -> Histogram:
    """The latency histogram of a total in a result file (empty if it has none).

    `latency_hdr` is HdrHistogram's V2 string ("HISTF..."); files written before
    it was fixed hold that string base64-encoded once more, read too."""
    text = stats.get("latency_hdr") or ""
    if not text:
        return Histogram()
    if text.startswith("SElTVE"):  # base64 of "HISTF"
        text = base64.b64decode(text).decode("ascii")
    return Histogram.from_hdr_v2(text)


def start_skew(run: Coordinator) -> float | None:
    starts = [
        a.started_at
        for a in run.registry.planned()
        if a.started_at is not None and a.joined_at is None
    ]
    return (max(starts) - min(starts)) if starts else None


def run_duration(run: Coordinator) -> float:
    return max((run.ended_at or run.start_at) - run.start_at, 1e-9) if run.start_at else 0.0


def measured_seconds(run: Coordinator) -> float:
    """The seconds a run's (and a request's) rates are computed over."""
    duration = run_duration(run)
    return min(duration, run.expected_end) if run.expected_end else duration


def interval_targets(
    phases: Iterable[Phase], t0: float, t1: float
) -> tuple[int | None, int | None]:
    """(arrivals due in [t0, t1) over open-model phases, users wanted mid-way over
    closed-model ones); None where no such phase is active."""
    arrivals: int | None = None
    users: int | None = None
    mid = (t0 + t1) / 2
    for p in phases:
        if p.rate is not None and p.start < t1 and p.end > t0 and p.duration > 0:
            a = min(max(t0 - p.start, 0.0), p.duration)
            b = min(max(t1 - p.start, 0.0), p.duration)
            due = p.rate.first_at_or_after(b) - p.rate.first_at_or_after(a)
            arrivals = (arrivals or 0) + due
        elif p.users is not None and p.start <= mid < p.end:
            users = (users or 0) + p.users.users_at(mid - p.start)
    return arrivals, users


def _agent_resources(run: Coordinator) -> dict[str, list[float]]:
    cpu: dict[str, list[float]] = {}
    for record in run.timeline.ordered():
        for agent, value in record.cpu_percent.items():
            cpu.setdefault(agent, []).append(value)
    return cpu


def cpu_warnings(agents: Iterable[dict[str, Any]]) -> list[str]:
    out = []
    for a in agents:
        hot = a.get("cpu_hot_intervals") or 0
        if hot:
            out.append(
                f"agent {a['id']} ran above {CPU_WARN_PERCENT:g}% CPU in {hot} interval(s) "
                f"(peak {a.get('max_cpu_percent', 0):.0f}%): its latencies include the load "
                "generator's own delay; add agents or lower the load per agent"
            )
    return out


def reply_warnings(totals: dict[str, Any], target: str) -> list[str]:
    """A run in which requests were sent and not one got an HTTP reply measured the
    network's refusals or silence, not the target: say so, with what to check."""
    outcomes: dict[str, int] = totals.get("outcomes") or {}
    if not totals.get("requests") or any(outcomes.get(c) for c in REPLY_OUTCOMES):
        return []
    failed = ", ".join(f"{name} {n}" for name, n in sorted(outcomes.items()) if n)
    tls = ""
    if target.startswith("https:"):  # a certificate the agents do not trust fails the same way
        tls = "; over https, also that the agents trust its certificate (defaults.tls: ca)"
    return [
        f"no request got a reply from {target} ({failed}): check that the target is up, "
        f"listens on that address and port, and that the agents' machines can reach it{tls}"
    ]


def build_result(run: Coordinator, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    duration = run_duration(run)
    measured = measured_seconds(run)
    timeline = []
    for record in run.timeline.ordered():
        series = []
        seconds = record.end - record.start
        row_total = Totals()
        for phase, name in sorted(record.series):
            totals = record.view((phase, name))
            row_total.merge(totals)
            series.append({"phase": phase, "name": name, **_with_hdr(totals, seconds)})
        t = record.index * run.interval
        target_arrivals, target_users = interval_targets(run.phases, t, t + run.interval)
        timeline.append(
            {
                "interval": record.index,
                "start": record.start,
                "end": record.end,
                "t": t,
                "agents": sorted(record.agents),
                "active_users": sum(record.active_users.values()),
                "target_arrivals": target_arrivals,
                "target_rps": (
                    target_arrivals / run.interval if target_arrivals is not None else None
                ),
                "target_users": target_users,
                "cpu_percent": record.cpu_percent,
                "rss_bytes": record.rss_bytes,
                "total": _with_hdr(row_total, seconds),
                "series": series,
            }
        )
    phases = []
    for p in run.phases:
        totals = run.timeline.phase_totals(p.name)
        target = p.rate.count() if p.rate is not None else None
        phases.append(
            {
                "name": p.name,
                "executor": p.executor,
                "start": p.start,
                "end": p.end,
                "duration": p.duration,
                "target_arrivals": target,
                "target_rate": (target / p.duration) if target is not None and p.duration else None,
                "peak_users": p.users.peak if p.users is not None else None,
                "disturbance": p.disturbance,
                "totals": _with_hdr(totals, p.duration),
                "requests": {
                    n: _with_hdr(t, p.duration)
                    for (ph, n), t in sorted(run.timeline.totals.items())
                    if ph == p.name
                },
            }
        )
    agents = []
    cpu = _agent_resources(run)
    for a in run.registry.by_id.values():
        samples = cpu.get(a.agent_id, [])
        agents.append(
            {
                "id": a.agent_id,
                "host": a.hello.host,
                "pid": a.hello.pid,
                "cores": a.hello.cores,
                "software": a.hello.software,
                "planned": a.planned,
                "clock_offset": a.clock_offset,
                "clock_rtt": a.clock_rtt,
                "started_at": a.started_at,
                "lost_at": a.lost_at,
                "joined_at": a.joined_at,
                "snapshots": len(a.seqs),
                "arrivals": a.arrivals,
                "requests": a.requests,
                "complete": a.complete(),
                "missing_snapshots": a.missing_seqs(),
                "max_cpu_percent": a.max_cpu_percent,
                "max_rss_bytes": a.max_rss_bytes,
                "cpu_mean_percent": sum(samples) / len(samples) if samples else None,
                "cpu_hot_intervals": sum(1 for v in samples if v > CPU_WARN_PERCENT),
            }
        )
    degraded = any(e.kind in ("lost", "joined", "incomplete") for e in run.events)
    whole_run = _with_hdr(run.timeline.run_totals(), measured)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "software": __version__,
        "run_id": run.run_id,
        "status": run.status,
        "degraded": degraded,
        "started_at": run.start_at,
        "ended_at": run.ended_at,
        "duration": duration,
        "interval": run.interval,
        "scenario": {
            "name": run.scenario.name,
            "target": run.scenario.target,
            "scale": run.scenario.scale,
            "source": run.scenario.source,
        },
        "engine_notes": sorted(run.engine_notes),
        "start_skew": start_skew(run),
        "agents": agents,
        "events": [vars(e) for e in run.events],
        "agent_errors": run.agent_errors,
        "rejected_frames": dict(run.server.rejected) if run.server else {},
        "phases": phases,
        "requests": {
            n: _with_hdr(t, measured) for n, t in sorted(run.timeline.name_totals().items())
        },
        "totals": whole_run,
        "warnings": cpu_warnings(agents) + reply_warnings(whole_run, run.scenario.target),
        "thresholds": [],
        "timeline": timeline,
    }
    from loadctl.coordinator.recovery import analyse  # recovery and degradation, from the data

    result.update(analyse(result))
    if run.chaos is not None:
        from loadctl.coordinator.faults import fault_impact

        result["faults"] = fault_impact(result, run.fault_records())
    if extra:
        result.update(extra)
    return result


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "result.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path
