"""`timeline.csv`: one row per interval per request name.

A request that ran in two phases within one interval (a phase boundary, or
parallel phases) gets one row with both phases named in `phases` and its
percentiles read from the merged histograms.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from loadctl.coordinator.reports.data import interval_rows
from loadctl.protocol.outcomes import ERROR_OUTCOMES

COLUMNS = (
    "interval",
    "t_s",
    "length_s",
    "name",
    "phases",
    "arrivals",
    "requests",
    "rps",
    "errors",
    *ERROR_OUTCOMES,
    "dropped",
    "error_rate",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "mean_ms",
)


def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_timeline_csv(result: dict[str, Any], path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for row in interval_rows(result):
            for name in sorted(row.by_name):
                m = row.by_name[name]
                lat = m.latency_stats()
                out.writerow(
                    [
                        row.index,
                        _num(row.t),
                        _num(row.length),
                        name,
                        "+".join(row.phases_by_name.get(name, [])),
                        m.arrivals,
                        m.requests,
                        _num(m.requests / row.length if row.length > 0 else 0.0),
                        m.errors,
                        *(m.outcomes.get(k, 0) for k in ERROR_OUTCOMES),
                        m.dropped,
                        _num(m.error_rate, 6),
                        *(_num(lat.get(k)) for k in ("p50", "p90", "p95", "p99", "p99.9", "max")),
                        _num(lat.get("mean")),
                    ]
                )
    return path
