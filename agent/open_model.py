"""The open model: arrival-rate phases (constant, ramping, burst).

Arrival k of the phase is due at `curve.time_of(k)`; this agent sends the
arrivals its share owns, each at its intended time, whether or not earlier
ones have answered (that is what makes the model open). An arrival that
finds the agent's in-flight bound reached is counted as dropped, never
silently skipped. Ownership is re-checked after each wait, because a plan
update may have moved the item to another agent meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import TYPE_CHECKING

from loadctl.agent.pacer import wait_until
from loadctl.agent.requests import Mix

_LATE = 0.05  # seconds behind schedule after which each send yields to the loop once

if TYPE_CHECKING:
    from loadctl.agent.runner import PhaseState, Runner

_heap_frozen = False


def freeze_heap_once() -> None:
    """Once per process, when its first open-model phase starts (on the plan, before
    the first arrival): move every object allocated so far — the imports, the plan —
    to the collector's permanent generation. Otherwise the first full collection
    comes due in the first tens of milliseconds of a burst (its tasks and futures
    fill the young generations) and scans them all, sending nothing meanwhile:
    ~47,000 objects, 38 ms of CPU on our 2-core test machine, and 150–170 ms of
    stall per agent when that machine was loaded — the worst send lags of a
    5,000 RPS burst. `gc.freeze()` is O(1); frozen objects are still freed by
    reference counting, only cycles among them are never collected."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.freeze()


async def run_open_phase(runner: Runner, state: PhaseState) -> None:
    freeze_heap_once()
    phase = state.phase
    curve = phase.rate
    assert curve is not None
    mix = Mix(runner.scenario, phase)
    limit = phase.max_in_flight or runner.scenario.defaults.max_in_flight
    client = runner.shared_client()
    sender = runner.sender
    recorder = runner.recorder
    total = curve.count()

    def first_item_at(run_time: float) -> int:
        return min(total, curve.first_at_or_after(run_time - phase.start))

    cursor = runner.shares.cursor(first_item_at)
    k = cursor.next_owned(0)
    while True:
        if k is None:  # nothing of this phase is ours now; a plan update may change that
            if runner.run_time() >= state.stop_at or runner.aborted:
                return
            await asyncio.sleep(runner.interval / 4)
            k = cursor.next_owned(first_item_at(runner.run_time()))
            continue
        if k >= total:
            return
        due = phase.start + curve.time_of(k)
        if due >= state.stop_at:
            return
        intended = runner.t0 + due
        await wait_until(intended)
        if not runner.may_send():  # the dead-man switch, checked at every send
            runner.abort()
            return
        if intended < time.perf_counter() - _LATE:  # behind schedule: let replies in
            await asyncio.sleep(0)
        owner_check = cursor.next_owned(k)
        if owner_check != k:  # the share changed while we waited
            k = owner_check
            continue
        spec = mix.pick(k)
        series = recorder.arrival(phase.name, spec.name, int(due // runner.interval))
        if sender.in_flight >= limit:
            series.count("dropped")
        else:
            sender.start(
                client, phase.name, spec.name, runner.requests[spec.name], intended, spec.timeout
            )
        k = cursor.next_owned(k + 1)
