"""The pacer: waits that land on their deadline without spinning, on uvloop and
on the stdlib loop; many waiters at once; cancellation; one timerfd per loop.

Bounds on lateness are generous: the machines these run on are small and
shared, and a woken process may wait for a core."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from loadctl.agent import pacer, timer_fd
from loadctl.agent.pacer import wait_until

T = TypeVar("T")
LINUX = sys.platform.startswith("linux")
LATE = 0.002  # a wake this much after its deadline counts as late (shared machines)


def run(loop_kind: str, main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    if loop_kind == "uvloop":
        return uvloop.run(wrapped())
    return asyncio.run(wrapped())


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[pacer.TIMERFD, pacer.SLEEP])
def method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = str(request.param)
    if name == pacer.TIMERFD and timer_fd.unavailable():
        pytest.skip(f"no timerfd: {timer_fd.unavailable()}")
    monkeypatch.setattr(pacer, "_method", name)  # loops created from now on use it
    yield name


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_the_timerfd_is_what_linux_uses(loop_kind: str) -> None:
    assert timer_fd.unavailable() is None
    assert time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)"
    if os.environ.get("LOADCTL_PACER"):
        pytest.skip("LOADCTL_PACER chooses the method")
    assert pacer._method == pacer.TIMERFD

    async def main() -> tuple[str, bool]:
        await wait_until(time.perf_counter() + 0.002)
        found = pacer._pacers[asyncio.get_running_loop()]
        assert found is not None
        return pacer.method(), found.timer.closed

    assert run(loop_kind, main) == (pacer.TIMERFD, False)


def test_waits_land_on_their_deadline(loop_kind: str, method: str) -> None:
    async def main() -> list[float]:
        assert pacer.method() == method
        lags = []
        for k in range(100):
            deadline = time.perf_counter() + 0.0005 + (k % 7) * 0.0007  # 0.5 – 4.7 ms ahead
            await wait_until(deadline)
            lags.append(time.perf_counter() - deadline)
        return lags

    lags = run(loop_kind, main)
    assert min(lags) >= -pacer._DUE  # never early
    assert statistics.median(lags) < LATE / 2
    assert sum(lag < LATE for lag in lags) >= 90, sorted(lags)[-10:]


def test_a_deadline_already_due_returns_without_waiting(method: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ran: list[int] = []
        loop.call_soon(ran.append, 1)
        await wait_until(time.perf_counter() - 1)
        await wait_until(time.perf_counter())
        assert ran == []  # the loop never ran: no yield
        assert loop not in pacer._pacers  # nor a timerfd made

    uvloop.run(main())


def test_concurrent_waiters_wake_in_deadline_order(loop_kind: str, method: str) -> None:
    rng = random.Random(7)

    async def main() -> tuple[list[tuple[float, int, float]], float]:
        loop = asyncio.get_running_loop()
        woken: list[tuple[float, int, float]] = []

        async def waiter(i: int, deadline: float) -> None:
            await wait_until(deadline)
            woken.append((deadline, i, time.perf_counter()))

        # 300 waiters over 60 ms, some on the same deadline, from 100 ms on: a busy CI
        # machine once took over 20 ms to start them, and most had nothing left to wait
        base = time.perf_counter() + 0.1
        deadlines = [base + rng.randrange(0, 60_000, 250) * 1e-6 for _ in range(300)]
        tasks = [loop.create_task(waiter(i, d)) for i, d in enumerate(deadlines)]
        await asyncio.sleep(0)  # every waiter has now asked for its deadline
        asked = time.perf_counter()
        await asyncio.gather(*tasks)
        if method == pacer.TIMERFD:
            found = pacer._pacers[loop]
            assert found is not None and found.waiting == 0
        return woken, asked

    woken, asked = run(loop_kind, main)
    assert len(woken) == 300
    # Those whose deadline had passed when they asked (a slow start on a busy
    # machine) returned at once; the others wake in deadline order, equal
    # deadlines in the order they were asked for, and on time. (The fallback's
    # waiters each sleep on their own timer, which may reorder them, and spin
    # together in the last 1.5 ms, which makes them late when they are many.)
    waited = [w for w in woken if w[0] > asked]
    assert len(waited) > 200
    lags = [at - d for d, _, at in woken]
    assert min(lags) >= -pacer._DUE
    if method == pacer.TIMERFD:
        assert waited == sorted(waited, key=lambda w: (w[0], w[1]))
        assert statistics.median(lags) < LATE


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_cancelled_waiters_leave_nothing_behind(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        # deadlines far enough ahead that a busy machine cannot reach them first
        first = loop.create_task(wait_until(now + 0.3))
        middle = loop.create_task(wait_until(now + 0.4))
        last = loop.create_task(wait_until(now + 0.5))
        await asyncio.sleep(0.005)
        found = pacer._pacers[loop]
        assert found is not None and found.waiting == 3 and found._armed == now + 0.3
        first.cancel()  # the earliest: the timer is re-armed for the next one
        middle.cancel()  # one inside the heap
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(asyncio.CancelledError):
            await middle
        assert found.waiting == 1 and found._armed == now + 0.5
        await last
        assert time.perf_counter() >= now + 0.5 - pacer._DUE
        assert found.waiting == 0

        # the last waiter cancelled: the timer is disarmed, no wake comes for it
        lone = loop.create_task(wait_until(time.perf_counter() + 0.2))
        await asyncio.sleep(0.002)
        lone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lone
        assert found.waiting == 0 and found._armed == float("inf")
        await asyncio.sleep(0.25)
        assert found.timer.drain() == 0

        # cancelled after its deadline was reached but before it ran: no harm done
        deadline = time.perf_counter() + 0.05
        late = loop.create_task(wait_until(deadline))
        for _ in range(100):  # until it waits: it must not find its deadline passed already
            if found.waiting:
                break
            await asyncio.sleep(0)
        assert found.waiting == 1
        while found.waiting:
            time.sleep(max(0.0, deadline - time.perf_counter()) + 0.0005)  # block the loop...
            found._expired()  # ...past the deadline, and resolve the entry as an expiry would
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert found.waiting == 0
        await wait_until(time.perf_counter() + 0.002)  # still works

    run(loop_kind, main)


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_each_loop_has_its_own_timerfd_closed_with_it(loop_kind: str) -> None:
    timers: list[Any] = []

    async def main() -> None:
        await wait_until(time.perf_counter() + 0.001)
        found = pacer._pacers[asyncio.get_running_loop()]
        assert found is not None
        timers.append(found.timer)

    run(loop_kind, main)
    run(loop_kind, main)
    assert timers[0] is not timers[1]
    gc.collect()  # the loops are gone, and their timerfds with them
    assert all(t.closed for t in timers)

    # a closed loop that is still referenced: its timerfd is closed at the next
    # wait on another loop
    kept = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        kept.run_until_complete(main())
    finally:
        kept.close()
    assert not timers[2].closed
    run(loop_kind, main)
    assert timers[2].closed
    assert kept not in pacer._pacers


def test_no_spinning_between_arrivals(method: str) -> None:
    """2,000 arrivals a second for half a second: the timerfd sleeps between them,
    the fallback spins (its CPU is measured, not bounded)."""

    async def main() -> float:
        start = time.perf_counter() + 0.01
        cpu = time.process_time()
        for k in range(1000):
            await wait_until(start + k * 0.0005)
        return (time.process_time() - cpu) / (time.perf_counter() - start)

    share = uvloop.run(main())
    print(f"pacer {method}: {100 * share:.0f} % of a core at 2,000 waits/s")
    if method == pacer.TIMERFD:
        assert share < 0.5


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_timer_fd_expires_once_at_an_absolute_time() -> None:
    timer = timer_fd.TimerFd()
    try:
        assert timer.drain() == 0  # not armed: nothing to read
        timer.arm(time.perf_counter() - 1)  # in the past: expires at once
        assert timer.drain() == 1
        deadline = time.perf_counter() + 0.005
        timer.arm(deadline)
        assert timer.drain() == 0
        os.set_blocking(timer.fd, True)
        assert timer.drain() == 1  # a blocking read returns at the expiry...
        assert time.perf_counter() >= deadline  # ...never before it
        os.set_blocking(timer.fd, False)
        timer.arm(time.perf_counter() + 0.002)
        timer.disarm()
        time.sleep(0.004)
        assert timer.drain() == 0
    finally:
        timer.close()
        timer.close()  # twice is harmless
    assert timer.closed
