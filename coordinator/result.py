"""The result record (`result.json`): everything later reports are built from.

Schema `loadctl.result/1` (documented in the README): run, scenario, agents,
events, start skew, per-phase and per-name totals, the whole run's totals,
and the per-interval timeline per series. Each total carries its latency
histogram in HdrHistogram V2 form (`latency_hdr`, base64) so reports and
comparisons can recompute any percentile exactly.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from loadctl.coordinator.run import Coordinator
from loadctl.coordinator.stats import Totals

from loadctl import __version__

SCHEMA = "loadctl.result/1"


def _with_hdr(totals: Totals, seconds: float) -> dict[str, Any]:
    out = totals.summary(seconds)
    out["latency_hdr"] = (
        base64.b64encode(totals.latency.to_hdr_v2()).decode() if totals.latency.count else ""
    )
    return out


def start_skew(run: Coordinator) -> float | None:
    starts = [
        a.started_at
        for a in run.registry.planned()
        if a.started_at is not None and a.joined_at is None
    ]
    return (max(starts) - min(starts)) if starts else None


def build_result(run: Coordinator, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    duration = max((run.ended_at or run.start_at) - run.start_at, 1e-9) if run.start_at else 0.0
    measured = min(duration, run.expected_end) if run.expected_end else duration
    timeline = []
    for record in run.timeline.ordered():
        series = []
        for phase, name in sorted(record.series):
            stats = record.view((phase, name)).summary(record.end - record.start)
            series.append({"phase": phase, "name": name, **stats})
        timeline.append(
            {
                "interval": record.index,
                "start": record.start,
                "end": record.end,
                "t": record.index * run.interval,
                "agents": sorted(record.agents),
                "active_users": sum(record.active_users.values()),
                "cpu_percent": record.cpu_percent,
                "rss_bytes": record.rss_bytes,
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
    for a in run.registry.by_id.values():
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
                "complete": a.complete(),
                "missing_snapshots": a.missing_seqs(),
                "max_cpu_percent": a.max_cpu_percent,
                "max_rss_bytes": a.max_rss_bytes,
            }
        )
    degraded = any(e.kind in ("lost", "joined", "incomplete") for e in run.events)
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
        "totals": _with_hdr(run.timeline.run_totals(), measured),
        "timeline": timeline,
    }
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
