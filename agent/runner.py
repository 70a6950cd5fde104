"""Executing one plan on one agent: phases, interval cuts, plan updates.

Times: the plan's start is on the coordinator's clock; the clock estimate
maps it to this machine's `perf_counter`, which every schedule, latency and
interval boundary then uses (uvloop's `loop.time()` is cached per loop
iteration in whole milliseconds — too coarse to time requests with).

Interval i covers run time [i·I, (i+1)·I). It is cut a little after its end
(`_CUT_DELAY`) so that arrivals due just before the boundary, which the pacer
sends a little after their time (a timerfd wake, see pacer.py), are still
counted in it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loadctl.agent.engines import choose_engine, make_client
from loadctl.agent.http import HttpClient
from loadctl.agent.open_model import run_open_phase
from loadctl.agent.recorder import Recorder
from loadctl.agent.requests import prepare
from loadctl.agent.sender import Sender
from loadctl.agent.shares import ShareBook
from loadctl.agent.users import run_user_phase
from loadctl.protocol.clock import ClockEstimate
from loadctl.protocol.messages import Plan, PlanUpdate, Series
from loadctl.protocol.scenario import Phase, Scenario, parse_phases
from loadctl.protocol.target_tls import CA_FILE_KEY, CERT_FILE_KEY, KEY_FILE_KEY, client_context

_CUT_DELAY = 0.05

# Called with (interval index, start, end on the coordinator clock, series, final).
# (interval, start, end, series, the table of their histograms)
SnapshotSink = Callable[[int, float, float, tuple[Series, ...], list[Any]], Awaitable[None]]


@dataclass
class PhaseState:
    phase: Phase
    stop_at: float  # run time at which this phase must stop (its end, or a plan update's cut)
    task: asyncio.Task[None] | None = None
    active_users: int = 0
    users: dict[int, asyncio.Task[None]] = field(default_factory=dict)


class Runner:
    def __init__(self, plan: Plan, clock: ClockEstimate, sink: SnapshotSink) -> None:
        self.plan = plan
        self.clock = clock
        self.sink = sink
        self.scenario = Scenario.from_wire(plan.scenario)
        self.interval = plan.interval
        self.shares = ShareBook(plan.share, plan.interval)
        self.recorder = Recorder()
        self.sender = Sender(self.recorder, self.scenario.defaults.timeout)
        self.requests = prepare(self.scenario)
        self.engine = choose_engine(self.scenario.defaults.engine)
        # Done carries a note on the engine; none since the fast engine does everything
        self.engine_note: str | None = None
        self._client: HttpClient | None = None
        # https targets: the scenario's certificate checks (None: the engines' default)
        self.tls_context = client_context(
            self.scenario.defaults.tls_verify,
            plan.files.get(CA_FILE_KEY),
            plan.files.get(CERT_FILE_KEY),
            plan.files.get(KEY_FILE_KEY),
        )
        self.phases: list[PhaseState] = []
        self.end_at = math.inf  # run time; a plan update may bring it forward
        self.aborted = False
        # The session's dead-man check; the schedulers ask it before every request, so a
        # process that was frozen or starved cannot send a backlog once it runs again.
        self.may_send: Callable[[], bool] = lambda: True
        # the same switch as a time: sending must stop then, unless heard from meanwhile
        # (the users' compiled lanes send up to it without asking; see driven_users.py)
        self.send_until: Callable[[], float] = lambda: math.inf
        self.abort_drain = 0.0
        self.changed = asyncio.Event()  # set on every plan update
        # perf_counter at run time zero
        self.t0 = time.perf_counter() + (plan.start_at - clock.to_coordinator(time.time()))
        # an agent that joins mid-run starts cutting at the current interval, not at 0
        self._next_cut = max(0, math.floor((time.perf_counter() - self.t0) / self.interval))
        self.recorder.index = self._next_cut
        self.users_at_cut = 0

    # -- clocks ---------------------------------------------------------------------------
    def run_time(self) -> float:
        return time.perf_counter() - self.t0

    def current_interval(self) -> int:
        return max(0, math.floor(self.run_time() / self.interval))

    def coordinator_time(self, run_time: float) -> float:
        return self.plan.start_at + run_time

    def started_at(self) -> float:
        return self.plan.start_at

    # -- clients ---------------------------------------------------------------------------
    def shared_client(self) -> HttpClient:
        if self._client is None:
            self._client = make_client(
                self.engine, self.scenario.defaults.connections, ssl_context=self.tls_context
            )
        return self._client

    def new_client(self, connections: int = 1, cookies: bool = False) -> HttpClient:
        """A client of its own (a user's); `cookies` gives it its own cookie jar."""
        return make_client(self.engine, connections, cookies=cookies, ssl_context=self.tls_context)

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> None:
        for phase in self.scenario.phases:
            self._add_phase(phase)
        ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            while not self.aborted:
                pending = [p.task for p in self.phases if p.task and not p.task.done()]
                if not pending:
                    break
                self.changed.clear()
                waiter = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait([*pending, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            for p in self.phases:  # surface a bug in a phase loop instead of hiding it
                if p.task and p.task.done() and not p.task.cancelled() and p.task.exception():
                    raise p.task.exception()  # type: ignore[misc]
            in_flight_grace = self.abort_drain if self.aborted else self.scenario.defaults.timeout
            # after a Stop, users finish the request they are in (see users.py)
            phase_tasks = [p.task for p in self.phases if p.task and not p.task.done()]
            if phase_tasks:
                await asyncio.wait(phase_tasks, timeout=in_flight_grace + 0.5)
            await self.sender.drain(in_flight_grace + 0.5)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        await self._cut(final=True)  # after an abort too: what was measured is kept
        await self.close()

    def _add_phase(self, phase: Phase) -> None:
        state = PhaseState(phase, min(phase.end, self.end_at))
        runner = run_open_phase if phase.is_open else run_user_phase
        state.task = asyncio.get_running_loop().create_task(runner(self, state))
        self.phases.append(state)

    def apply(self, update: PlanUpdate) -> None:
        boundary = update.at_interval * self.interval
        if update.share is not None:
            self.shares.add(update.share)
        if update.phases is not None:
            names = [r.name for r in self.scenario.requests]
            new = parse_phases(list(update.phases), ("phases",), names, self.scenario.scale)
            for p in self.phases:
                p.stop_at = min(p.stop_at, max(boundary, p.phase.start))
            for phase in new:
                self._add_phase(phase)
        if update.end_interval is not None:
            self.end_at = min(self.end_at, update.end_interval * self.interval)
            for p in self.phases:
                p.stop_at = min(p.stop_at, self.end_at)
        self.changed.set()

    def abort(self, drain: float = 0.0) -> None:
        """Stop sending now. In-flight requests may finish for `drain` seconds (a Stop
        from the coordinator); the dead-man switch passes 0 and cuts them off at once.
        Either way they are recorded, so the target's count and ours agree."""
        self.aborted = True
        self.abort_drain = drain
        for lane in self.recorder.lanes:
            lane.enabled = False
        for p in self.phases:
            if p.task:
                p.task.cancel()  # a users phase then stops its users (see users.py)
            if drain <= 0:
                for t in p.users.values():
                    t.cancel()
        if drain <= 0:
            self.sender.cancel_all()
        self.changed.set()

    async def close(self) -> None:
        clients = [self._client] if self._client else []
        self._client = None
        for c in clients:
            await c.close()

    @property
    def active_users(self) -> int:
        return sum(p.active_users for p in self.phases)

    # -- intervals -------------------------------------------------------------------------
    async def _tick(self) -> None:
        from loadctl.agent.pacer import wait_until

        while True:
            boundary = self.t0 + (self._next_cut + 1) * self.interval
            await wait_until(boundary)
            self.users_at_cut = self.active_users  # the gauge reads the boundary's value
            await wait_until(boundary + _CUT_DELAY)
            await self._cut(final=False)

    async def _cut(self, final: bool) -> None:
        if final:
            self.users_at_cut = self.active_users
        index = self._next_cut  # the final cut takes whatever the pending interval holds
        self._next_cut = index + 1
        start = self.coordinator_time(index * self.interval)
        await self.sink(index, start, start + self.interval, *self.recorder.cut())

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "engine_note": self.engine_note}
