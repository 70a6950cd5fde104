"""Reading a result record (result.json) into the rows the reports show.

Everything here works from the result data alone, so `loadctl report` renders
the same files a run wrote. Rows of intervals merge series exactly: counters
add, and percentiles are read from the merged `latency_hdr` histograms, never
averaged. Files from before a field existed still render (older rows lack a
`total`, a series its `latency_hdr`): what cannot be recomputed is left out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadctl.coordinator.result import SCHEMA, latency_histogram
from loadctl.coordinator.stats import histogram_summary
from loadctl.protocol.histogram import Histogram, HistogramWireError
from loadctl.protocol.outcomes import ERROR_OUTCOMES

LAT_KEYS = ("p50", "p90", "p95", "p99", "p99.9", "max")
BELOW_TARGET = 0.99  # an open-model phase that sent less than this share of its target


class ResultError(Exception):
    """A result file that cannot be read; the message says which and why."""


def load_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ResultError(f"{path}: not a readable JSON result: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultError(f"{path}: not a loadctl result ({SCHEMA}): is it a result.json?")
    return data


@dataclass
class Merged:
    """Several series of one interval (or of a run) merged: counters add, and the
    histogram is decoded and merged only when more than one part needs it."""

    requests: int = 0
    arrivals: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # of the single part
    hdrs: list[str] = field(default_factory=list)
    unrecoverable: bool = False  # a part with latencies but no histogram
    parts: int = 0

    def add(self, stats: dict[str, Any]) -> None:
        self.requests += int(stats.get("requests", 0))
        self.arrivals += int(stats.get("arrivals", 0))
        for k, v in stats.get("outcomes", {}).items():
            self.outcomes[k] = self.outcomes.get(k, 0) + int(v)
        self.parts += 1
        if self.parts == 1:
            self.latency_ms = dict(stats.get("latency_ms", {}))
        if stats.get("latency_hdr"):
            self.hdrs.append(stats["latency_hdr"])
        elif stats.get("latency_ms", {}).get("count"):
            self.unrecoverable = True

    def histogram(self) -> Histogram | None:
        if self.unrecoverable:
            return None
        out = Histogram()
        try:
            for text in self.hdrs:
                out.merge(latency_histogram({"latency_hdr": text}))
        except HistogramWireError:
            return None
        return out

    def latency_stats(self) -> dict[str, float]:
        if self.parts == 1:
            return self.latency_ms
        h = self.histogram()
        return histogram_summary(h) if h is not None else {}

    @property
    def errors(self) -> int:
        return sum(self.outcomes.get(k, 0) for k in ERROR_OUTCOMES)

    @property
    def dropped(self) -> int:
        return self.outcomes.get("dropped", 0)

    @property
    def error_rate(self) -> float:
        attempted = self.requests + self.dropped
        return (self.errors + self.dropped) / attempted if attempted else 0.0


@dataclass
class IntervalRow:
    index: int
    t: float  # run time at the interval start
    length: float
    total: Merged
    by_name: dict[str, Merged]
    phases_by_name: dict[str, list[str]]
    target_rps: float | None
    active_users: int
    target_users: int | None
    cpu_percent: dict[str, float]
    rss_bytes: dict[str, int]
    latency_hdr: str  # the whole interval's, "" when unknown

    @property
    def rps(self) -> float:
        return self.total.requests / self.length if self.length > 0 else 0.0


def interval_rows(result: dict[str, Any]) -> list[IntervalRow]:
    rows = []
    interval = float(result.get("interval") or 1.0)
    for row in result.get("timeline", []):
        length = float(row.get("end", 0) - row.get("start", 0)) or interval
        by_name: dict[str, Merged] = {}
        phases: dict[str, list[str]] = {}
        total = Merged()
        for s in row.get("series", []):
            by_name.setdefault(s["name"], Merged()).add(s)
            phases.setdefault(s["name"], []).append(s["phase"])
        hdr = ""
        if "total" in row:
            total.add(row["total"])
            hdr = row["total"].get("latency_hdr", "")
        else:
            for s in row.get("series", []):
                total.add(s)
        rows.append(
            IntervalRow(
                index=int(row["interval"]),
                t=float(row.get("t", row["interval"] * interval)),
                length=length,
                total=total,
                by_name=by_name,
                phases_by_name=phases,
                target_rps=row.get("target_rps"),
                active_users=int(row.get("active_users", 0)),
                target_users=row.get("target_users"),
                cpu_percent=dict(row.get("cpu_percent", {})),
                rss_bytes=dict(row.get("rss_bytes", {})),
                latency_hdr=hdr,
            )
        )
    return rows


def phase_status(result: dict[str, Any], phase: dict[str, Any]) -> str:
    """✓ ok, or the first thing that went wrong in the phase."""
    failed = [
        t
        for t in result.get("thresholds", [])
        if t["on"] == f"phase:{phase['name']}" and not t["ok"]
    ]
    totals = phase.get("totals", {})
    if phase.get("duration", 0) <= 0 and not totals.get("requests"):
        return "— not run"
    if failed:
        return f"✗ {len(failed)} threshold(s) failed"
    target = phase.get("target_arrivals")
    if target and totals.get("arrivals", 0) < BELOW_TARGET * target:
        return f"⚠ {100 * totals.get('arrivals', 0) / target:.0f}% of target"
    if totals.get("dropped"):
        return f"⚠ {totals['dropped']} dropped"
    if totals.get("errors"):
        return f"⚠ {100 * totals.get('error_rate', 0):.2g}% errors"
    return "✓ ok"


def phase_target(phase: dict[str, Any]) -> str:
    if phase.get("target_rate") is not None:
        word = "avg " if phase.get("executor") == "ramping-rate" else ""
        return f"{word}{phase['target_rate']:.1f} rps"
    if phase.get("peak_users") is not None:
        return f"{phase['peak_users']} users"
    return "-"


def thresholds_verdict(result: dict[str, Any]) -> str:
    thresholds = result.get("thresholds", [])
    if not thresholds:
        return "no thresholds"
    failed = sum(1 for t in thresholds if not t["ok"])
    return (
        f"{failed} of {len(thresholds)} thresholds failed"
        if failed
        else (f"all {len(thresholds)} thresholds held")
    )


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def errors_text(outcomes: dict[str, int]) -> str:
    parts = [f"{k} {outcomes[k]}" for k in ERROR_OUTCOMES if outcomes.get(k)]
    return ", ".join(parts) or "0"


def planned_agents(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in result.get("agents", []) if a.get("planned")]


def settings(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Run settings worth printing: (name, value)."""
    source = result.get("scenario", {}).get("source") or {}
    defaults = source.get("defaults") or {}
    out = [
        ("run id", str(result.get("run_id", "-"))),
        ("scenario", str(result.get("scenario", {}).get("name", "-"))),
        ("target", str(result.get("scenario", {}).get("target", "-"))),
        ("scale", f"{result.get('scenario', {}).get('scale', 1.0):g}"),
        ("started", when(result.get("started_at"))),
        ("duration", f"{result.get('duration', 0):.1f} s"),
        ("interval", f"{result.get('interval', 1):g} s"),
        ("agents", str(len(planned_agents(result)))),
        ("software", str(result.get("software", "-"))),
    ]
    for key in ("timeout", "max_in_flight", "engine", "connections"):
        if key in defaults:
            out.append((key, str(defaults[key])))
    skew = result.get("start_skew")
    if skew is not None:
        out.append(("start skew", f"{skew * 1000:.2f} ms"))
    return out
