"""The files a run writes, `loadctl report` re-rendering them, and the HTML in Chromium."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from rich.console import Console

from loadctl.coordinator.reports.data import interval_rows
from loadctl.coordinator.reports.html import render_html
from loadctl.coordinator.reports.markdown import render_markdown
from loadctl.coordinator.result import cpu_warnings, latency_histogram
from loadctl.coordinator.summary import print_summary
from loadctl.protocol.hdr_log import load_interval_log
from loadctl.report_cmd import report_command

from cluster import ClusterRun, loadctl, run_scenario
from target_process import running_target

CHROMIUM = "/usr/bin/chromium"
FILES = ("result.json", "timeline.csv", "report.md", "report.html", "latency.hlog")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run() -> ClusterRun:
    with running_target("--latency", "10ms") as target:
        scenario = {
            "name": "reports",
            "target": target.url,
            "requests": [
                {"name": "item", "path": "/api/inventory/items/1", "weight": 3},
                {"name": "health", "path": "/health", "weight": 1},
            ],
            "phases": [
                {"name": "open", "executor": "constant-rate", "rate": 80, "duration": "2s"},
                {
                    "name": "users",
                    "executor": "constant-users",
                    "users": 4,
                    "think": "50ms",
                    "duration": "2s",
                },
            ],
            "thresholds": [
                "p(95) < 5s",
                # the users' sequence sends item (10 ms) and health (< 1 ms) alike: its
                # p50 lies between the two and may fall either side of 1 ms; p90 does not
                {"threshold": "p(90) < 1ms", "on": "phase:users"},
                {"threshold": "error_rate < 1%", "on": "request:item"},
            ],
        }
        result = run_scenario(scenario, agents=1, extra=("--metrics-port", "0"))
    assert result.code == 1, result.stderr[-2000:]
    return result


def test_files_and_their_numbers(run: ClusterRun) -> None:
    for name in FILES:
        assert (run.out_dir / name).stat().st_size > 0, name
    data = run.data
    assert [t["ok"] for t in data["thresholds"]] == [True, False, True]
    # the users phase's weights: its flow is a sequence, so they do not count
    assert any("phase users:" in note and "weights" in note for note in data["engine_notes"])
    with (run.out_dir / "timeline.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_name: dict[str, int] = {}
    for row in rows:
        by_name[row["name"]] = by_name.get(row["name"], 0) + int(row["requests"])
    assert by_name == {n: t["requests"] for n, t in data["requests"].items()}
    pairs = {(int(r["interval"]), r["name"]) for r in rows}
    assert len(pairs) == len(rows)  # one row per interval per request name
    assert any("+" in r["phases"] for r in rows) or all(r["phases"] for r in rows)
    assert all(float(r["p50_ms"]) >= 0 for r in rows if int(r["requests"]))
    log = load_interval_log(run.out_dir / "latency.hlog")
    assert log.start_time_s == pytest.approx(data["started_at"], abs=1e-3)
    assert sum(iv.histogram.count for iv in log.intervals) == data["totals"]["latency_ms"]["count"]
    merged = latency_histogram(data["totals"])
    assert all(iv.histogram.max <= merged.max for iv in log.intervals)
    total = HdrHistogram(1, 3_600_000_000_000, 3)  # HdrHistogram's own reader agrees
    reader = HistogramLogReader(str(run.out_dir / "latency.hlog"), total)
    while reader.add_next_interval_histogram() is not None:
        pass
    reader.close()
    assert total.get_total_count() == merged.count
    assert total.get_max_value() == pytest.approx(merged.max, rel=1e-3)
    assert total.get_mean_value() == pytest.approx(merged.mean, rel=1e-3)
    md = (run.out_dir / "report.md").read_text(encoding="utf-8")
    assert "## Thresholds" in md and "| ✗ | p(90) < 1ms | phase:users |" in md
    assert "| ✓ | p(95) < 5s | total |" in md
    (open_row,) = [ln for ln in md.splitlines() if ln.startswith("| open |")]
    (users_row,) = [ln for ln in md.splitlines() if ln.startswith("| users |")]
    assert "80.0 rps" in open_row and open_row.rstrip(" |").endswith("✓ ok")
    assert "4 users" in users_row and "✗ 1 threshold(s) failed" in users_row
    assert "## Requests" in md and "## Agents" in md and "## Settings" in md


def test_hot_agent_warning_in_every_report(run: ClusterRun) -> None:
    data = copy.deepcopy(run.data)
    agent = next(a for a in data["agents"] if a["planned"])
    agent["cpu_hot_intervals"], agent["max_cpu_percent"] = 2, 97.0
    data["warnings"] = cpu_warnings(data["agents"])
    words = "its latencies include the load generator's own delay"
    assert words in render_markdown(data)
    assert escape(words) in render_html(data)
    out = io.StringIO()
    print_summary(data, Console(file=out, width=200))
    assert words in out.getvalue()
    assert words not in (run.out_dir / "report.md").read_text(encoding="utf-8")


def test_interval_rows_recover_targets_and_users(run: ClusterRun) -> None:
    rows = interval_rows(run.data)
    assert rows[0].target_rps == 80
    assert any(r.active_users > 0 for r in rows)
    assert any(r.target_users == 4 for r in rows)
    assert sum(r.total.requests for r in rows) == run.data["totals"]["requests"]


def test_report_rerenders_the_same_files(run: ClusterRun, tmp_path: Path) -> None:
    copy_ = tmp_path / "result.json"
    shutil.copy(run.out_dir / "result.json", copy_)
    proc = loadctl("report", str(copy_), "--out", str(tmp_path / "again"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "p(90) < 1ms on phase:users: observed" in proc.stdout  # the summary, thresholds too
    for name in FILES[1:]:
        assert (tmp_path / "again" / name).read_bytes() == (run.out_dir / name).read_bytes(), name
    cli = CliRunner()
    done = cli.invoke(report_command, [str(copy_), "--quiet"])  # default: next to the file
    assert done.exit_code == 0 and (tmp_path / "report.html").exists()
    copy_.write_text('{"schema": "something/else"}')
    done = cli.invoke(report_command, [str(copy_)])
    assert done.exit_code == 2 and "not a loadctl result" in done.output
    done = cli.invoke(report_command, [str(tmp_path / "missing.json")])
    assert done.exit_code == 2 and "no such file" in done.output


def test_html_is_self_contained(run: ClusterRun) -> None:
    html = (run.out_dir / "report.html").read_text(encoding="utf-8")
    assert "<link" not in html and " src=" not in html and "url(" not in html
    assert "default-src 'none'" in html
    assert html.count('<svg class="chart"') == 6
    assert render_html(run.data) == html


# -- headless Chromium -------------------------------------------------------------------


def decode_png(data: bytes) -> np.ndarray[Any, Any]:
    """RGB(A) 8-bit, non-interlaced PNG -> array (height, width, channels): zlib and
    the five PNG filters, nothing else (Pillow is not a dependency)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind_byte = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind_byte == 0:
            cur = line
        elif kind_byte == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(-1, channels), axis=0).reshape(-1) & 255
        elif kind_byte == 2:  # Up
            cur = (line + prev) & 255
        else:  # Average or Paeth: each byte depends on the one to its left
            left = [0] * (stride + channels)
            up, ln = prev.tolist(), line.tolist()
            for x in range(stride):
                a, b = left[x], up[x]
                if kind_byte == 3:
                    pred = (a + b) >> 1
                else:
                    c = up[x - channels] if x >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                left[x + channels] = (ln[x] + pred) & 255
            cur = np.array(left[channels:], dtype=np.int64)
        out[y] = cur
        prev = cur
    return out.reshape(height, width, channels)


def chromium(page: Path, profile: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,3000",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            page.as_uri(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(profile)},
    )


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")
def test_html_renders_in_headless_chromium(run: ClusterRun, tmp_path: Path) -> None:
    page = run.out_dir / "report.html"
    shot = tmp_path / "shot.png"
    browsers = [
        chromium(page, tmp_path / "p1", "--dump-dom"),
        chromium(page, tmp_path / "p2", f"--screenshot={shot}"),
    ]
    (dom, dom_log), (_, shot_log) = [b.communicate(timeout=90) for b in browsers]
    assert 'data-rendered="6"' in dom, dom_log[-3000:]
    assert shot.exists(), shot_log[-3000:]
    for log in (dom_log, shot_log):
        console = [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        assert not console, console  # no script error, no CSP violation (nothing fetched)
    image = decode_png(shot.read_bytes()).astype(np.int32)
    assert image.shape[:2] == (3000, 1400)
    boxes = dom.split('data-chart-boxes="', 1)[1].split('"', 1)[0].split(";")
    checked = 0
    for box in boxes:
        x, y, w, h = (int(v) for v in box.split(","))
        if y + h > image.shape[0]:
            continue
        area = image[y : y + h, x : x + w, :3]
        saturated = (area.max(axis=2) - area.min(axis=2)) > 80  # coloured lines, not grey
        assert saturated.sum() > 300, f"chart at {box} looks blank ({saturated.sum()} px)"
        checked += 1
    assert checked >= 4, boxes
    page_bg = image[5, 5, :3]
    assert (page_bg > 240).all()  # the page itself rendered (light background)
    assert json.loads((run.out_dir / "result.json").read_text())["schema"] == "loadctl.result/1"
