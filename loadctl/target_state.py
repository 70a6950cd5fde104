"""The demo target's state: settings, counters, the stall gate and the worker pool.

Nothing here knows about HTTP; `target_app` wires it to aiohttp.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from loadctl.agent.pacer import wait_until
from loadctl.target_spec import (
    MAX_SECONDS,
    TEN_MS,
    ZERO,
    Distribution,
    SpecError,
    parse_distribution,
)

# Distinct keys kept per counter map (paths, usernames, order items); beyond it
# new keys are lumped under OTHER so a fuzzing client cannot grow memory.
MAX_KEYS = 10_000
OTHER = "<other>"
MAX_WORKERS = 100_000

CONFIG_KEYS = ("latency", "error_rate", "stall_seconds", "workers", "service_time", "queue_limit")


@dataclass(frozen=True)
class TargetConfig:
    """What the target does to /api/* requests. Immutable; updates make a new one."""

    latency: Distribution = ZERO
    error_rate: float = 0.0
    workers: int | None = None  # None: no capacity model
    service_time: Distribution = TEN_MS
    queue_limit: int | None = None  # None: unbounded queue
    seed: int | None = None

    @property
    def capacity(self) -> float | None:
        """Requests per second the worker pool sustains, if the model is on."""
        if self.workers is None:
            return None
        mean = self.service_time.mean
        return math.inf if mean <= 0 else self.workers / mean

    def to_json(self) -> dict[str, Any]:
        cap = self.capacity
        return {
            "latency": self.latency.spec,
            "error_rate": self.error_rate,
            "workers": self.workers,
            "service_time": self.service_time.spec,
            "queue_limit": self.queue_limit,
            "capacity_rps": None if cap is None or math.isinf(cap) else round(cap, 3),
        }


def check_error_rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"error_rate {value!r} is not a number between 0 and 1")
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise SpecError(f"error_rate {value!r} is not between 0 and 1")
    return rate


def check_count(name: str, value: object, *, minimum: int) -> int | None:
    """A worker count or queue limit: an integer ≥ minimum, or None (off)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} {value!r} is not a whole number")
    if not minimum <= value <= MAX_WORKERS:
        raise SpecError(f"{name} {value!r} is not between {minimum} and {MAX_WORKERS}")
    return value


def check_stall(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"stall_seconds {value!r} is not a number")
    if not 0 <= value <= MAX_SECONDS:
        raise SpecError(f"stall_seconds {value!r} is not between 0 and {MAX_SECONDS:g}")
    return float(value)


def _spec(name: str, value: object) -> Distribution:
    if not isinstance(value, str):
        raise SpecError(f"{name} {value!r} is not a spec string such as '20ms'")
    try:
        return parse_distribution(value)
    except SpecError as exc:
        raise SpecError(f"{name}: {exc}") from None


def apply_update(
    config: TargetConfig, update: Mapping[str, object]
) -> tuple[TargetConfig, float | None]:
    """Validate a /_loadctl/config body; return the new config and the stall (if any).

    All fields are checked before anything changes. `workers` 0 or null turns the
    capacity model off; `queue_limit` null makes the queue unbounded.
    """
    unknown = sorted(set(update) - set(CONFIG_KEYS))
    if unknown:
        raise SpecError(
            f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}"
        )
    new = config
    stall: float | None = None
    if "latency" in update:
        new = replace(new, latency=_spec("latency", update["latency"]))
    if "service_time" in update:
        new = replace(new, service_time=_spec("service_time", update["service_time"]))
    if "error_rate" in update:
        new = replace(new, error_rate=check_error_rate(update["error_rate"]))
    if "workers" in update:
        workers = check_count("workers", update["workers"], minimum=0)
        new = replace(new, workers=workers or None)
    if "queue_limit" in update:
        new = replace(new, queue_limit=check_count("queue_limit", update["queue_limit"], minimum=0))
    if "stall_seconds" in update:
        stall = check_stall(update["stall_seconds"])
    return new, stall


def _bump(counts: dict[str, int], key: str) -> None:
    if key in counts:
        counts[key] += 1
    elif len(counts) < MAX_KEYS:
        counts[key] = 1
    else:
        counts[OTHER] = counts.get(OTHER, 0) + 1


class Counters:
    """What the target saw. Arrivals count when headers arrive; statuses when answered."""

    def __init__(self) -> None:
        self.in_flight = 0  # a gauge: reset leaves it alone
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.paths: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        self.routes: dict[tuple[str, int], int] = {}  # (route template, status), for /metrics
        self.unauthorized = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.logins: dict[str, int] = {}
        self.order_items: dict[str, int] = {}

    def arrived(self, path: str) -> None:
        now = time.time()
        if self.first_ts is None:
            self.first_ts = now
        self.last_ts = now
        self.total += 1
        _bump(self.paths, path)

    def answered(self, route: str, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        key = (route, status)
        self.routes[key] = self.routes.get(key, 0) + 1
        if status == 401:
            self.unauthorized += 1

    def login(self, username: str) -> None:
        _bump(self.logins, username)

    def order(self, item: str) -> None:
        _bump(self.order_items, item)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "paths": dict(self.paths),
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "unauthorized": self.unauthorized,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "logins": dict(self.logins),
            "order_items": dict(self.order_items),
        }


async def sleep_for(seconds: float) -> None:
    """Sleep at least `seconds`: never early, late by the wake-up (see sleep_until)."""
    if seconds > 0:
        await sleep_until(time.monotonic() + seconds)


async def sleep_until(deadline: float) -> None:
    """Sleep until time.monotonic() ≥ deadline; late only by the wake-up: tens of µs
    on a busy loop, 0.2–0.4 ms when an idle vCPU has to wake (our 2-core VM).

    uvloop's timers are whole milliseconds (a "20 ms" target would answer in 21), and
    topping them up by yielding to the loop spins: with the last 1.5 ms of every sleep
    spent yielding, ~15 % of the sleepers spun at any moment, and at 3,000 requests a
    second with 10 ms of latency the target ran short of CPU. So the wait goes to the
    agent's pacer, one timerfd per loop with ns resolution (`loadctl.agent.pacer`).
    time.monotonic and perf_counter are both CLOCK_MONOTONIC on Linux; elsewhere the
    pacer falls back to its own timer-then-yield wait.
    """
    remaining = deadline - time.monotonic()
    if remaining > 0:
        await wait_until(time.perf_counter() + remaining)


class Gate:
    """The stall: while closed, requests wait at arrival and before answering."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._until = 0.0  # time.monotonic() at which the current stall ends
        self._task: asyncio.Task[None] | None = None

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic()) if not self._open.is_set() else 0.0

    def stall(self, seconds: float) -> None:
        """Freeze for `seconds` from now (extends a running stall; 0 ends it)."""
        if seconds <= 0:
            self.release()
            return
        until = time.monotonic() + seconds
        if until <= self._until and not self._open.is_set():
            return
        self._until = until
        self._open.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._release_later())

    def release(self) -> None:
        self._until = 0.0
        self._open.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def _release_later(self) -> None:
        while (remaining := self._until - time.monotonic()) > 0:
            await asyncio.sleep(max(remaining, 0.001))
        self._open.set()

    async def wait(self) -> None:
        if not self._open.is_set():
            await self._open.wait()


class WorkerPool:
    """N workers serving FIFO, in virtual time, so capacity is exactly N ÷ mean service.

    Each request is booked at once onto the worker that frees up first: it starts
    at max(now, that worker's free time) and ends a service time later; the
    caller sleeps until then. Timer overshoot delays only that answer, never
    the next request's start, so the pool neither drifts nor loses capacity.
    Requests booked but not yet started are the queue; past `queue_limit`
    of them, `book` refuses (the caller answers 503 at once).
    """

    def __init__(self, workers: int, queue_limit: int | None) -> None:
        now = time.monotonic()
        self._free_at = [now] * workers  # a heap of the times each worker frees up
        self._starts: list[float] = []  # a heap of the start times of booked requests
        self.queue_limit = queue_limit

    @property
    def workers(self) -> int:
        return len(self._free_at)

    def waiting(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        starts = self._starts
        while starts and starts[0] <= now:
            heapq.heappop(starts)
        return len(starts)

    def resize(self, workers: int, queue_limit: int | None) -> None:
        """Change the pool size; work already booked keeps its times."""
        self.queue_limit = queue_limit
        now = time.monotonic()
        free = sorted(self._free_at)
        if workers < len(free):
            free = free[len(free) - workers :]  # keep the busiest: their bookings stand
        else:
            free.extend([now] * (workers - len(free)))
        heapq.heapify(free)
        self._free_at = free

    def book(self, service: float) -> float | None:
        """Book one request; return the monotonic time its service ends, or None if full."""
        now = time.monotonic()
        start = max(now, self._free_at[0])
        if start > now and self.queue_limit is not None and self.waiting(now) >= self.queue_limit:
            return None
        end = start + service
        heapq.heapreplace(self._free_at, end)
        if start > now:
            heapq.heappush(self._starts, start)
        return end
