"""`latency.hlog`: the run's latency as an HdrHistogram interval log.

One line per interval (all requests), built from each timeline row's
`latency_hdr`, so HdrHistogram's tools (HistogramLogAnalyzer, hdr-plot,
HistogramLogProcessor) can read the run; values are ns, maxima shown in ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadctl.coordinator.reports.data import interval_rows
from loadctl.protocol.hdr_log import write_interval_log
from loadctl.protocol.histogram import Histogram


def hlog_intervals(result: dict[str, Any]) -> list[tuple[float, float, Histogram]]:
    out = []
    for row in interval_rows(result):
        h = row.total.histogram()
        if h is None or h.count == 0:
            continue
        out.append((row.t, row.length, h))
    return out


def write_hlog(result: dict[str, Any], path: Path) -> Path | None:
    """None (and no file) when the result holds no interval histograms."""
    intervals = hlog_intervals(result)
    if not intervals:
        return None
    write_interval_log(path, float(result.get("started_at") or 0.0), intervals)
    return path
