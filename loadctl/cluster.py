"""Running a coordinator to the end and turning its outcome into files and an exit code.

Shared by `loadctl coordinator`, `loadctl run` and `loadctl demo`: they differ
only in where the agents come from. Around the coordinator: thresholds checked
live (and able to end the run), the live view, `/metrics`, and at the end
result.json, the reports, the summary and the exit code (loadctl.exits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadctl import exits
from loadctl.coordinator.run import (
    Controller,
    Coordinator,
    CoordinatorFailure,
    CoordinatorOptions,
)
from loadctl.protocol.scenario import Scenario

if TYPE_CHECKING:  # imported on use: rich and prometheus_client cost CLI start-up time
    from loadctl.coordinator.live import View
    from loadctl.coordinator.metrics import MetricsServer, MetricsState
    from loadctl.coordinator.thresholds import ThresholdMonitor

DEFAULT_METRICS_PORT = 9646  # loadctl.coordinator.metrics.DEFAULT_PORT

log = logging.getLogger("loadctl.coordinator")


@dataclass
class Outcome:
    code: int
    result: dict[str, Any] | None
    out_dir: Path | None


def default_out_dir(run_id: str) -> Path:
    return Path("loadctl-results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"


def metrics_address(value: str, default_host: str) -> tuple[str, int]:
    """`--metrics-port` as PORT or HOST:PORT; raises ValueError with the fix."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = default_host
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"--metrics-port {value!r}: give a port (0 turns /metrics off) or HOST:PORT"
        )
    return host, int(port)


class RunWatch:
    """Every reported interval: the caller's controller, then the run-so-far totals,
    thresholds (which may end the run), /metrics and the live view, in that order.
    A failure in the view or the exporter is logged, never allowed to stop the run."""

    def __init__(
        self,
        inner: Controller | None,
        monitor: ThresholdMonitor,
        metrics: MetricsState | None,
        view: View | None,
    ) -> None:
        self.inner = inner
        self.monitor = monitor
        self.metrics = metrics
        self.view = view
        from loadctl.coordinator.thresholds import Cumulative

        self.cumulative = Cumulative()

    async def on_interval(self, run: Coordinator, index: int) -> None:
        if self.inner is not None:
            await self.inner.on_interval(run, index)
        self.cumulative.advance(run.timeline, index)
        if self.monitor:
            await self.monitor.on_interval(run, self.cumulative)
        try:
            from loadctl.coordinator.live import build_frame

            if self.metrics is not None:
                self.metrics.update(run, index, self.monitor)
            if self.view is not None:
                self.view.update(build_frame(run, self.cumulative, self.monitor, index))
        except Exception:
            log.exception("live view or /metrics update failed for interval %d", index)


def exit_code(status: str, thresholds_failed: bool) -> int:
    if status == "interrupted":
        return exits.INTERRUPTED
    if status == "failed":
        return exits.RUN_FAILED
    return exits.THRESHOLD_FAILED if thresholds_failed else exits.OK


def run_cluster(
    scenario: Scenario,
    options: CoordinatorOptions,
    out_dir: Path | None,
    quiet: bool = False,
    *,
    metrics_port: int = DEFAULT_METRICS_PORT,
    metrics_host: str = "127.0.0.1",
    view: View | None = None,
    extra_result: Callable[[Coordinator], dict[str, Any]] | None = None,
) -> Outcome:
    """Run to the end; write result.json and the reports; print the summary.

    metrics_port 0 serves no /metrics; `view` overrides the live view chosen
    for stderr (a terminal panel, plain lines elsewhere, nothing when quiet)."""
    import uvloop

    from loadctl.coordinator.live import make_view
    from loadctl.coordinator.metrics import MetricsServer, MetricsState
    from loadctl.coordinator.reports import write_reports
    from loadctl.coordinator.result import build_result, write_result
    from loadctl.coordinator.summary import print_summary
    from loadctl.coordinator.thresholds import ThresholdMonitor

    monitor = ThresholdMonitor(scenario.thresholds)
    metrics: MetricsState | None = None
    server: MetricsServer | None = None
    if metrics_port:
        metrics = MetricsState()
        server = MetricsServer(metrics)
        if not server.start(metrics_host, metrics_port):
            metrics = server = None
    if view is None:
        view = make_view(quiet, options.agents)
    watch = RunWatch(options.controller, monitor, metrics, view)
    options = dataclasses.replace(options, controller=watch)
    coordinator = Coordinator(scenario, options)
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print(
                "loadctl: interrupted: stopping the agents and saving what was measured "
                "(Ctrl-C again to quit at once)",
                file=sys.stderr,
                flush=True,
            )
            coordinator.interrupt()
        else:
            raise KeyboardInterrupt

    async def main() -> str | None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        loop.add_signal_handler(signal.SIGTERM, on_sigint)
        try:
            await coordinator.run()
        except CoordinatorFailure as error:
            return str(error)
        return None

    if view is not None:
        view.start()
    try:
        failure = uvloop.run(main())
    finally:
        if view is not None:
            view.stop()
        if server is not None:
            server.stop()
    if failure is not None:
        print(f"loadctl: error: {failure}", file=sys.stderr, flush=True)
        return Outcome(exits.RUN_FAILED, None, None)
    if not coordinator.start_at:  # interrupted before the run began
        return Outcome(exits.INTERRUPTED, None, None)
    extra = {"thresholds": monitor.evaluate_final(coordinator)}
    if extra_result is not None:  # a controller's own record (capacity search)
        extra.update(extra_result(coordinator))
    result = build_result(coordinator, extra)
    target_dir = out_dir or default_out_dir(coordinator.run_id)
    path = write_result(result, target_dir)
    try:
        write_reports(result, target_dir)
    except Exception:  # the result is safe; a report bug must not cost the exit code
        log.exception("writing the reports failed; result.json is complete")
    print_summary(result)
    print(f"results: {path} (reports: report.html, report.md, timeline.csv)", flush=True)
    return Outcome(exit_code(coordinator.status, monitor.failed), result, target_dir)
