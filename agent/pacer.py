"""Waiting until an arrival's intended time, on uvloop, without spinning.

uvloop (libuv) keeps timers in whole milliseconds: `sleep(0.0003)` returns at
once and `sleep(0.0013)` may wake a millisecond late. A scheduler that simply
sleeps until each arrival either spins a core (sub-ms sleeps) or sends in
late batches (ms rounding). So the loop's timers are not used for pacing at
all. Instead, on Linux, each event loop gets one timerfd (`timer_fd.TimerFd`,
CLOCK_MONOTONIC, armed at the absolute deadline) that it watches with
`add_reader`: the kernel timer has ns resolution, and its fd becoming
readable ends the loop's epoll wait at once, whatever millisecond timeout
libuv gave it. The loop keeps serving replies (and its own timers) meanwhile.

* Waiters (the open-model phases, the interval ticker, the start announcer)
  may wait at the same time: each puts (deadline, seq, future) on the loop's
  heap, and the timerfd is armed for the earliest deadline only. When it
  expires, every entry due by then is resolved, in deadline order (then in
  the order they came), and the timer is re-armed for the next one.
* A deadline already due (within `_DUE` of now) returns at once, without a
  syscall or a pass through the loop: a timerfd wake costs more than that.
* A cancelled waiter takes its entry off the heap (re-arming if it was the
  earliest), so nothing of it stays behind.
* The timerfd lives as long as its loop: its reader goes with the loop's
  handles on `close()`, and the fd is closed when the loop is garbage
  collected, or earlier, as soon as a wait on another loop finds it closed
  (tests run many loops in one process).

CPU therefore follows the load, not the wall clock: one epoll wake per
deadline (none when the loop is already late), so at 10 RPS the pacer costs
about 12 wakes a second (the arrivals, and two for each interval cut), and at
thousands of RPS it never spins between arrivals 0.4 ms apart. The price of
not spinning is the wake itself: 20–60 µs after the deadline when the process
was busy (the syscalls and a loop pass), more after a long sleep, when an idle
(virtual) CPU has to wake up — a median of 0.2–0.35 ms at 10 RPS on our 2-core
VM, where the fallback's spin lands within 10 µs — and more again whenever
the process has to wait for a core: there the tail is the kernel's (a bare
blocking read of a timerfd has the same p99), not the loop's.

Where a timerfd cannot be had — not Linux, `perf_counter` not on
CLOCK_MONOTONIC, or a loop without `add_reader` — `wait_until` falls back to
two stages: a timer sleep that aims `_EARLY` before the deadline (the timer's
rounding then lands us early, not late), then yielding to the loop
(`sleep(0)`) until it is due — a spin of up to `_EARLY` per arrival, which
also lets replies be read meanwhile. Its waiters each sleep on their own
timer, so they may wake out of deadline order within a millisecond.
`LOADCTL_PACER=sleep` forces that fallback (to compare the two).

Lateness is never hidden: latency is measured from the intended time, and the
send lag is recorded per request.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
import weakref

from loadctl.agent.timer_fd import TimerFd, unavailable

_DUE = 20e-6  # a deadline this close counts as due: a timerfd round trip takes longer
_EARLY = 0.0015  # fallback: seconds before the deadline at which we stop trusting timers

TIMERFD = "timerfd"
SLEEP = "sleep"


def _default_method() -> str:
    if os.environ.get("LOADCTL_PACER") == SLEEP:
        return SLEEP
    return SLEEP if unavailable() else TIMERFD


_method = _default_method()  # the method new loops get; tests may change it

_Entry = tuple[float, int, "asyncio.Future[None]"]


class _TimerfdPacer:
    """The waiters of one event loop, woken by the loop's timerfd."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = TimerFd()
        self._loop = weakref.ref(loop)
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._armed = float("inf")  # the deadline the timer is set for (inf: none)
        try:
            loop.add_reader(self.timer.fd, self._expired)
        except BaseException:
            self.timer.close()
            raise

    @property
    def waiting(self) -> int:
        return len(self._heap)

    async def wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        future: asyncio.Future[None] = loop.create_future()
        entry = (deadline, next(self._seq), future)
        heapq.heappush(self._heap, entry)
        if deadline < self._armed:
            self._arm(deadline)
        try:
            await future
        except BaseException:  # cancelled: take the entry off the heap
            self._forget(entry)
            raise

    def _arm(self, deadline: float) -> None:
        self._armed = deadline
        if not self.timer.closed:
            self.timer.arm(deadline)

    def _forget(self, entry: _Entry) -> None:
        heap = self._heap
        if heap and heap[0] is entry:
            heapq.heappop(heap)
            if heap:
                self._arm(heap[0][0])
            else:  # nothing left to wake for
                self._armed = float("inf")
                if not self.timer.closed:
                    self.timer.disarm()
            return
        try:
            heap.remove(entry)  # waiters are few: a linear removal is fine
        except ValueError:  # already resolved by `_expired`
            return
        heapq.heapify(heap)

    def _expired(self) -> None:
        self.timer.drain()  # the fd stays readable until read
        self._armed = float("inf")
        heap = self._heap
        due = time.perf_counter() + _DUE
        while heap and heap[0][0] <= due:
            future = heapq.heappop(heap)[2]
            if not future.done():  # a cancelled one is also taken off by its waiter
                future.set_result(None)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed() and not self.timer.closed:
            loop.remove_reader(self.timer.fd)
        self.timer.close()
        self._heap.clear()


# One pacer per loop; None for a loop that uses the fallback.
_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TimerfdPacer | None] = (
    weakref.WeakKeyDictionary()
)


def _pacer_for(loop: asyncio.AbstractEventLoop) -> _TimerfdPacer | None:
    try:
        return _pacers[loop]
    except KeyError:
        pass
    for other, pacer in list(_pacers.items()):  # release the timerfds of closed loops
        if other.is_closed():
            del _pacers[other]
            if pacer is not None:
                pacer.close()
    made: _TimerfdPacer | None = None
    if _method == TIMERFD:
        try:
            made = _TimerfdPacer(loop)
        except (OSError, NotImplementedError):  # e.g. a loop without add_reader
            made = None
        else:
            weakref.finalize(loop, made.timer.close)
    _pacers[loop] = made
    return made


def method(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """How `wait_until` waits on `loop` (default: the running loop, else new loops)."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _method
    return TIMERFD if _pacer_for(loop) is not None else SLEEP


async def wait_until(deadline: float) -> None:
    """Return when perf_counter() reaches `deadline`: never more than `_DUE` before
    it, and after it by as little as the machine allows."""
    if deadline - time.perf_counter() <= _DUE:
        return
    loop = asyncio.get_running_loop()
    pacer = _pacer_for(loop)
    if pacer is not None:
        await pacer.wait(loop, deadline)
    else:
        await _sleep_until(deadline)


async def _sleep_until(deadline: float) -> None:
    """The fallback: a timer sleep to `_EARLY` before the deadline, then yields."""
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        if remaining > _EARLY:
            await asyncio.sleep(remaining - _EARLY)
        else:
            await asyncio.sleep(0)
