"""The files a run leaves behind, all rendered from the result record alone.

`write_reports(result, out_dir)` writes timeline.csv, report.md, report.html
and latency.hlog next to result.json; `loadctl report` calls it again on a
saved result.json and gets the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPORT_FILES = ("timeline.csv", "report.md", "report.html", "latency.hlog")


def write_reports(result: dict[str, Any], out_dir: Path) -> list[Path]:
    from loadctl.coordinator.reports.csv_report import write_timeline_csv
    from loadctl.coordinator.reports.hlog import write_hlog
    from loadctl.coordinator.reports.html import write_html
    from loadctl.coordinator.reports.markdown import write_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        write_timeline_csv(result, out_dir / "timeline.csv"),
        write_markdown(result, out_dir / "report.md"),
        write_html(result, out_dir / "report.html"),
    ]
    hlog = write_hlog(result, out_dir / "latency.hlog")
    if hlog is not None:
        written.append(hlog)
    return written
