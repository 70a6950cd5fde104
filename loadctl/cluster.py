"""Running a coordinator to the end and turning its outcome into files and an exit code.

Shared by `loadctl coordinator`, `loadctl run` and `loadctl demo`: they differ
only in where the agents come from.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadctl import exits
from loadctl.coordinator.run import Coordinator, CoordinatorFailure, CoordinatorOptions
from loadctl.protocol.scenario import Scenario

log = logging.getLogger("loadctl.coordinator")


@dataclass
class Outcome:
    code: int
    result: dict[str, Any] | None
    out_dir: Path | None


def default_out_dir(run_id: str) -> Path:
    return Path("loadctl-results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"


def progress_line(run: Coordinator, index: int) -> None:
    record = run.timeline.intervals.get(index)
    if record is None:
        return
    totals = None
    for key in record.series:
        t = record.view(key)
        if totals is None:
            totals = t
        else:
            totals.merge(t)
    if totals is None:
        return
    lat = totals.latency
    p99 = lat.percentile(99) / 1e6 if lat.count else 0.0
    p50 = lat.percentile(50) / 1e6 if lat.count else 0.0
    users = sum(record.active_users.values())
    print(
        f"[{(index + 1) * run.interval:6.1f}s] {totals.completed / run.interval:8.1f} rps  "
        f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {totals.errors}  "
        f"dropped {totals.dropped}  users {users}  agents {len(record.agents)}",
        file=sys.stderr,
        flush=True,
    )


def run_cluster(
    scenario: Scenario, options: CoordinatorOptions, out_dir: Path | None, quiet: bool = False
) -> Outcome:
    import uvloop

    from loadctl.coordinator.result import build_result, write_result
    from loadctl.coordinator.summary import print_summary

    if not quiet and options.on_interval is None:
        options.on_interval = progress_line
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

    failure = uvloop.run(main())
    if failure is not None:
        print(f"loadctl: error: {failure}", file=sys.stderr, flush=True)
        return Outcome(exits.RUN_FAILED, None, None)
    if not coordinator.start_at:  # interrupted before the run began
        return Outcome(exits.INTERRUPTED, None, None)
    result = build_result(coordinator)
    target_dir = out_dir or default_out_dir(coordinator.run_id)
    path = write_result(result, target_dir)
    print_summary(result)
    print(f"results: {path}", flush=True)
    if coordinator.status == "interrupted":
        return Outcome(exits.INTERRUPTED, result, target_dir)
    if coordinator.status == "failed":
        return Outcome(exits.RUN_FAILED, result, target_dir)
    return Outcome(exits.OK, result, target_dir)
