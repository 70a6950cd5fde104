"""`/metrics`: scraped over HTTP in the middle of a real run, values move."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadctl.coordinator.metrics import BUCKETS, _Buckets
from loadctl.protocol.histogram import Histogram

from cluster import LOADCTL, free_port, write_scenario
from target_process import running_target

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_buckets_come_from_the_merged_histogram() -> None:
    h = Histogram()
    for ms in (0.5, 3, 3, 20, 700, 45_000):
        h.record(int(ms * 1_000_000))
    b = _Buckets()
    b.add(h)
    b.add(h)
    expected = [
        2 * sum(1 for ms in (0.5, 3, 3, 20, 700, 45_000) if ms / 1000 <= le) for le in BUCKETS
    ]
    assert b.counts == [*expected, 12]
    assert b.sum_seconds == pytest.approx(2 * (0.0005 + 0.006 + 0.02 + 0.7 + 45), rel=1e-3)


@pytest.mark.slow
def test_metrics_scraped_mid_run(tmp_path: Path) -> None:
    port = free_port()
    with running_target("--latency", "10ms") as target:
        path = write_scenario(
            {
                "name": "metrics",
                "target": target.url,
                "requests": [
                    {"name": "item", "path": "/api/inventory/items/1", "weight": 3},
                    {"name": "health", "path": "/health", "weight": 1},
                ],
                "phases": [{"executor": "constant-rate", "rate": 80, "duration": "5s"}],
                "thresholds": ["p(50) < 5s", "p(50) < 1ms"],
            },
            tmp_path,
        )
        proc = subprocess.Popen(
            [
                *LOADCTL,
                "run",
                str(path),
                "--agents",
                "1",
                "--quiet",
                "--out",
                str(tmp_path / "o"),
                "--metrics-port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            seen: list[Samples] = []
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and len(seen) < 2:
                samples = scrape(port)
                if (
                    samples
                    and ("loadctl_interval", ()) in samples
                    and (
                        not seen
                        or value(samples, "loadctl_interval") > value(seen[-1], "loadctl_interval")
                    )
                ):
                    seen.append(samples)
                time.sleep(0.2)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1, stderr[-2000:]  # p(50) < 1ms fails
    assert len(seen) == 2, f"no two scrapes mid-run; stderr: {stderr[-2000:]}"
    first, second = seen
    assert value(second, "loadctl_interval") > value(first, "loadctl_interval")
    for name in ("item", "health"):
        a = value(first, "loadctl_requests_total", name=name, outcome="2xx")
        b = value(second, "loadctl_requests_total", name=name, outcome="2xx")
        assert 0 < a < b, (name, a, b)
        count = value(second, "loadctl_latency_seconds_count", name=name)
        inf = value(second, "loadctl_latency_seconds_bucket", name=name, le="+Inf")
        assert count == inf == b
        p50 = value(second, "loadctl_latency_interval_seconds", name=name, quantile="0.5")
        p99 = value(second, "loadctl_latency_interval_seconds", name=name, quantile="0.99")
        assert 0 < p50 <= p99 < 5
    assert value(second, "loadctl_latency_seconds_count", name="*") == sum(
        value(second, "loadctl_requests_total", name=n, outcome="2xx") for n in ("item", "health")
    )
    assert value(second, "loadctl_latency_interval_seconds", name="item", quantile="0.5") >= 0.010
    assert value(second, "loadctl_target_rps") == 80
    assert value(second, "loadctl_achieved_rps") > 0
    assert value(second, "loadctl_agents_alive") == value(second, "loadctl_agents_planned") == 1
    assert value(second, "loadctl_agent_cpu_percent", agent="local-0") >= 0
    assert value(second, "loadctl_agent_rss_bytes", agent="local-0") > 10e6
    assert value(second, "loadctl_dropped_total") == 0
    assert value(second, "loadctl_active_users") == 0
    assert value(second, "loadctl_threshold_ok", threshold="p(50) < 5s") == 1
    assert value(second, "loadctl_threshold_ok", threshold="p(50) < 1ms") == 0
    run_id = json.loads((tmp_path / "o" / "result.json").read_text())["run_id"]
    info = [k for k in second if k[0] == "loadctl_run_info"]
    assert info and ("run_id", run_id) in info[0][1]
    assert scrape(port) is None  # the exporter stops with the run
