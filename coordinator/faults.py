"""Per-fault impact: latency and errors before, during and after each fault window,
and the time to recover after it ends.

Windows are read off result.json's timeline, whose intervals carry their
latency histograms: the figures for a window are read from the exact merge of
its intervals' histograms, never from averaged percentiles. The recovery time
uses the same rule as after a burst (`recovery.recovery_after`), with the
seconds before the fault as the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadctl.coordinator.recovery import recovery_after
from loadctl.coordinator.result import latency_histogram
from loadctl.protocol.histogram import Histogram, HistogramWireError

_MS = 1e6
CONTEXT = 5.0  # seconds of "before" and "after" around each fault


def window_stats(result: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """Requests, error rate and p50/p95/p99 over the intervals inside [start, end)."""
    merged = Histogram()
    requests = attempted = bad = 0
    for row in result.get("timeline", []):
        t = float(row.get("t", 0.0))
        length = float(row.get("end", 0.0) - row.get("start", 0.0)) or float(result["interval"])
        if t < start - 1e-6 or t + length > end + 1e-6:
            continue
        for stats in row.get("series", []):
            dropped = int(stats.get("dropped") or 0)
            requests += int(stats.get("requests") or 0)
            attempted += int(stats.get("requests") or 0) + dropped
            bad += int(stats.get("errors") or 0) + dropped
            try:
                merged.merge(latency_histogram(stats))
            except (HistogramWireError, ValueError):
                continue
    out: dict[str, Any] = {
        "start": start,
        "end": end,
        "requests": requests,
        "error_rate": bad / attempted if attempted else None,
    }
    for p in (50.0, 95.0, 99.0):
        out[f"p{p:g}_ms"] = merged.percentile(p) / _MS if merged.count else None
    return out


def fault_impact(result: dict[str, Any], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per applied fault window, in time order."""
    out = []
    starts = sorted(float(r["at"]) for r in records)
    for record in sorted(records, key=lambda r: float(r["at"])):
        at, end = float(record["at"]), float(record["at"]) + float(record["duration"])
        later = [s for s in starts if s >= end - 1e-6]
        horizon = min(later) if later else None
        before = (max(0.0, at - CONTEXT), at)
        entry = dict(record)
        entry["before"] = window_stats(result, *before)
        entry["during"] = window_stats(result, at, end)
        entry["after"] = window_stats(result, end, end + CONTEXT)
        if at > 0:
            entry["recovery"] = recovery_after(result, end, before, horizon)
        out.append(entry)
    return out


def fault_lines(faults: Sequence[dict[str, Any]]) -> list[str]:
    """The summary's lines: one per fault."""
    lines = []
    for f in faults:

        def p99(w: dict[str, Any]) -> str:
            v = w.get("p99_ms")
            return "-" if v is None else f"{v:.1f} ms"

        def err(w: dict[str, Any]) -> str:
            v = w.get("error_rate")
            return "-" if v is None else f"{100 * v:.2g}%"

        rec = f.get("recovery") or {}
        back = (
            f"recovered {rec['seconds']:.0f} s after"
            if rec.get("ok")
            else "not recovered within the run"
            if rec
            else "no baseline"
        )
        problem = f" (error: {f['error']})" if f.get("error") else ""
        lines.append(
            f"fault {f['label']} at {f['at']:g}s for {f['duration']:g}s{problem}: p99 "
            f"{p99(f['before'])} → {p99(f['during'])} → {p99(f['after'])}, errors "
            f"{err(f['before'])} → {err(f['during'])} → {err(f['after'])}; {back}"
        )
    return lines
