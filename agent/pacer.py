"""Waiting until an arrival's intended time, on uvloop.

uvloop (libuv) keeps timers in whole milliseconds: `sleep(0.0003)` returns at
once and `sleep(0.0013)` may wake a millisecond late. A scheduler that simply
sleeps until each arrival either spins a core (sub-ms sleeps) or sends in
late batches (ms rounding). So we sleep in two stages:

* far from the next arrival, a timer sleep that aims `_EARLY` before it (the
  timer's rounding then lands us early, not late);
* within `_EARLY` of it, yield to the loop (`sleep(0)`) until it is due —
  a short spin that also lets replies be read meanwhile.

CPU therefore follows the load: at 10 RPS the loop spins at most ~1 ms per
100 ms arrival gap, and at thousands of RPS the gaps are below a millisecond
and the loop is busy sending anyway. Lateness is never hidden: latency is
measured from the intended time, and the send lag is recorded per request.
"""

from __future__ import annotations

import asyncio
import time

_EARLY = 0.0015  # seconds before the intended time at which we stop trusting timers


async def wait_until(deadline: float) -> None:
    """Return at (or just after) perf_counter() == deadline."""
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        if remaining > _EARLY:
            await asyncio.sleep(remaining - _EARLY)
        else:
            await asyncio.sleep(0)
