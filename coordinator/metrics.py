"""`/metrics` for Prometheus while a run is on (prometheus_client, its own registry).

The coordinator's event loop folds each reported interval into a `MetricsState`
(`update`); the exporter's HTTP thread reads it through a custom collector, so
no prometheus_client metric object is ever touched from two threads.

Metrics (all prefixed `loadctl_`; `name` is the request name, "*" for all):

- requests_total{name, outcome}: counter of completed requests (and `dropped`
  arrivals) by outcome (2xx, 4xx, 5xx, timeout, connect_error, error, dropped).
- latency_seconds{name}: histogram with fixed BUCKETS of the latency from the
  intended start, fed from the merged interval histograms (exact counts).
- latency_interval_seconds{name, quantile}: gauges, p50/p95/p99 over the last
  reported interval (quantile "0.5", "0.95", "0.99").
- target_rps, achieved_rps: gauges, arrivals per second the plan asks for and
  completed requests per second, over the last reported interval.
- active_users, target_users: gauges, closed-model users running / wanted.
- dropped_total: counter of arrivals dropped at the agents (over max_in_flight).
- agents_alive, agents_planned: gauges, agents in the run alive / given a share.
- agent_cpu_percent{agent}, agent_rss_bytes{agent}: gauges per agent process
  (CPU 100 = one core; above 90 its latencies include its own delay).
- threshold_ok{threshold}: gauge, 1 holds, 0 fails (absent while pending).
- interval: gauge, index of the last reported interval.
- run_info{run_id, scenario, target}: gauge 1, which run this is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from loadctl.coordinator.result import interval_targets
from loadctl.coordinator.run import Coordinator
from loadctl.coordinator.stats import Totals
from loadctl.coordinator.thresholds import ThresholdMonitor
from loadctl.protocol.histogram import Histogram

log = logging.getLogger("loadctl.coordinator")

DEFAULT_PORT = 9646
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BOUNDS_NS = np.array([b * 1e9 for b in BUCKETS])
ALL = "*"


@dataclass
class _Buckets:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # cumulative
    sum_seconds: float = 0.0

    def add(self, h: Histogram) -> None:
        if h.count == 0:
            return
        values, counts = h.nonzero()
        cumulative = np.cumsum(counts.astype(np.float64))
        at = np.searchsorted(values, _BOUNDS_NS, side="right")
        for i, k in enumerate(at):
            self.counts[i] += int(cumulative[k - 1]) if k > 0 else 0
        self.counts[-1] += h.count
        self.sum_seconds += h.mean * h.count / 1e9


@dataclass
class Snapshot:
    """What one scrape reports; replaced whole on every update."""

    gauges: dict[str, float] = field(default_factory=dict)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    quantiles: dict[tuple[str, str], float] = field(default_factory=dict)
    agent_cpu: dict[str, float] = field(default_factory=dict)
    agent_rss: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


class MetricsState(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._requests: dict[tuple[str, str], int] = {}
        self._buckets: dict[str, _Buckets] = {}
        self._dropped = 0

    def update(self, run: Coordinator, index: int, monitor: ThresholdMonitor | None = None) -> None:
        record = run.timeline.intervals.get(index)
        by_name: dict[str, Totals] = {}
        users = 0
        if record is not None:
            for key in list(record.series):
                by_name.setdefault(key[1], Totals()).merge(record.view(key))
            users = sum(record.active_users.values())
        everything = Totals()
        for totals in by_name.values():
            everything.merge(totals)
        snap = Snapshot()
        for name, totals in [*by_name.items(), (ALL, everything)]:
            if name != ALL:
                for outcome, n in totals.outcomes.items():
                    self._requests[(name, outcome)] = self._requests.get((name, outcome), 0) + n
            self._buckets.setdefault(name, _Buckets()).add(totals.latency)
            if totals.latency.count:
                for q, v in zip(
                    ("0.5", "0.95", "0.99"),
                    totals.latency.percentiles((50.0, 95.0, 99.0)),
                    strict=True,
                ):
                    snap.quantiles[(name, q)] = v / 1e9
        self._dropped += everything.dropped
        t0 = index * run.interval
        arrivals, target_users = interval_targets(run.phases, t0, t0 + run.interval)
        planned = run.registry.planned()
        snap.gauges = {
            "target_rps": (arrivals or 0) / run.interval,
            "achieved_rps": everything.completed / run.interval,
            "active_users": float(users),
            "target_users": float(target_users or 0),
            "agents_alive": float(sum(1 for a in planned if a.alive)),
            "agents_planned": float(len(planned)),
            "interval": float(index),
        }
        snap.requests = dict(self._requests)
        snap.buckets = {n: list(b.counts) for n, b in self._buckets.items()}
        snap.sums = {n: b.sum_seconds for n, b in self._buckets.items()}
        snap.agent_cpu = {a.agent_id: a.cpu_percent for a in planned if a.alive}
        snap.agent_rss = {a.agent_id: float(a.rss_bytes) for a in planned if a.alive}
        if monitor is not None:
            snap.thresholds = {
                s.threshold.label: 1.0 if s.live_ok else 0.0
                for s in monitor.states
                if s.live_ok is not None
            }
        snap.info = {
            "run_id": run.run_id,
            "scenario": run.scenario.name,
            "target": run.scenario.target,
        }
        snap.gauges["dropped_total"] = float(self._dropped)
        with self._lock:
            self._snapshot = snap

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            s = self._snapshot
        requests = CounterMetricFamily(
            "loadctl_requests", "Completed requests by name and outcome", labels=["name", "outcome"]
        )
        for (name, outcome), n in sorted(s.requests.items()):
            requests.add_metric([name, outcome], n)
        yield requests
        hist = HistogramMetricFamily(
            "loadctl_latency_seconds",
            "Latency from the intended start (merged interval histograms)",
            labels=["name"],
        )
        for name, counts in sorted(s.buckets.items()):
            les = [f"{b:g}" for b in BUCKETS] + ["+Inf"]
            hist.add_metric([name], list(zip(les, counts, strict=True)), s.sums.get(name, 0.0))
        yield hist
        quantiles = GaugeMetricFamily(
            "loadctl_latency_interval_seconds",
            "Latency percentiles over the last reported interval",
            labels=["name", "quantile"],
        )
        for (name, q), v in sorted(s.quantiles.items()):
            quantiles.add_metric([name, q], v)
        yield quantiles
        helps = {
            "target_rps": "Arrivals per second the plan asks for (last interval)",
            "achieved_rps": "Completed requests per second (last interval)",
            "active_users": "Closed-model users running",
            "target_users": "Closed-model users the plan asks for",
            "agents_alive": "Agents in the run still alive",
            "agents_planned": "Agents given a share of the run",
            "interval": "Index of the last reported interval",
        }
        for key, text in helps.items():
            if key in s.gauges:
                yield GaugeMetricFamily(f"loadctl_{key}", text, value=s.gauges[key])
        dropped = CounterMetricFamily("loadctl_dropped", "Arrivals dropped at the agents")
        dropped.add_metric([], s.gauges.get("dropped_total", 0.0))
        yield dropped
        for metric, values, text in (
            ("loadctl_agent_cpu_percent", s.agent_cpu, "Agent process CPU (100 = one core)"),
            ("loadctl_agent_rss_bytes", s.agent_rss, "Agent process resident memory"),
        ):
            family = GaugeMetricFamily(metric, text, labels=["agent"])
            for agent, v in sorted(values.items()):
                family.add_metric([agent], v)
            yield family
        th = GaugeMetricFamily(
            "loadctl_threshold_ok",
            "1 while a threshold holds, 0 when it fails",
            labels=["threshold"],
        )
        for label, v in sorted(s.thresholds.items()):
            th.add_metric([label], v)
        yield th
        if s.info:
            info = GaugeMetricFamily(
                "loadctl_run_info", "The run being measured", labels=list(s.info)
            )
            info.add_metric(list(s.info.values()), 1.0)
            yield info


class MetricsServer:
    """The exporter: an HTTP server thread over a private CollectorRegistry."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(state)
        self._server: Any = None
        self.port = 0

    def start(self, host: str, port: int) -> bool:
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as error:
            log.warning(
                "cannot serve /metrics on %s:%d (%s): continuing without it "
                "(--metrics-port picks another port, 0 turns it off)",
                host,
                port,
                error.strerror or error,
            )
            return False
        self.port = int(self._server.server_address[1])
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
