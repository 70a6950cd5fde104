"""The closed model: concurrent users that loop over a flow with think time.

User u of a phase (u < the phase's user curve at time t) runs on the agent
whose share owns u: the same striping as arrivals, so user counts add up
exactly across agents and follow plan updates. A controller reconciles the
running users with the wanted set a few times per second: a ramp up starts
users; a ramp down or the phase end asks users to stop after their current
iteration, and cancels those still busy after the grace period.

Each user is a journey: its own variables, feeder row and (with `cookies`)
cookie jar. An iteration is the phase's `sequence` of requests, one request of
its `mix`, or one call of its Python flow. A user whose feeder has no row left
(without wrap) stops for good: the controller does not start it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from loadctl.agent.driven_users import DrivenUser, drivable
from loadctl.agent.engine_fast import FastClient
from loadctl.agent.feeders import NO_ROW, Feeder, load_feeders
from loadctl.agent.flows import FlowFunction, FlowUser, exception_series, load_flow
from loadctl.agent.http import Endpoint, HttpClient, Reply
from loadctl.agent.journey import ReplyView, Step, UserState, fixed_names, initial_vars
from loadctl.agent.requests import Mix, steps
from loadctl.protocol.journey import is_python_flow
from loadctl.protocol.scenario import Phase, ThinkTime

if TYPE_CHECKING:
    from loadctl.agent._lane import Lane
    from loadctl.agent.runner import PhaseState, Runner

log = logging.getLogger("loadctl.agent")

_RECONCILE = 0.1  # seconds between controller passes
# past an edge: uvloop's timers count whole milliseconds and may fire up to 1 ms early
_EDGE_SLACK = 0.001


def _next_pass(t: float, duration: float, to_stop: float) -> float:
    """Seconds to the controller's next pass: `_RECONCILE`, or less so that the users
    start when the phase does and stop when it ends (a pass 0.1 s late gave each user up
    to 0.1 s more of iterations than the phase asked for)."""
    wait = _RECONCILE
    for edge in (-t, duration - t, to_stop):  # the phase's start, its end, a plan's cut
        if edge > 0:
            wait = min(wait, edge + _EDGE_SLACK)
    return wait


def think_seconds(think: ThinkTime, rng: random.Random) -> float:
    if think.kind == "uniform":
        return rng.uniform(think.low, think.high)
    if think.kind == "exponential":
        return rng.expovariate(1.0 / think.low) if think.low > 0 else 0.0
    return think.low


class Journeys:
    """A run's journey material on this agent: steps, feeders and flows (loaded on
    first use, so a missing file fails the phase that needs it, not the agent)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.endpoint = Endpoint.parse(runner.scenario.target)
        self.steps: dict[str, Step] = steps(runner.scenario)
        self.vars = initial_vars(runner.scenario)
        self.fixed = fixed_names(runner.scenario, self.vars)  # see Step.per_user
        self._feeders: dict[str, Feeder] | None = None
        self._flows: dict[str, FlowFunction] = {}
        self.flow_names: dict[str, set[str]] = {}  # phase -> request names its flow used
        self._logged: set[tuple[str, ...]] = set()

    def feeder(self, name: str) -> Feeder:
        if self._feeders is None:
            self._feeders = load_feeders(self.runner.scenario, self.runner.plan, self.runner)
        return self._feeders[name]

    def flow(self, ref: str) -> FlowFunction:
        found = self._flows.get(ref)
        if found is None:
            found = self._flows[ref] = load_flow(self.runner.plan.files, ref)
        return found

    def once(self, *key: str) -> bool:
        """True the first time `key` is seen: for logging a problem once per run."""
        if key in self._logged or len(self._logged) > 1000:
            return False
        self._logged.add(key)
        return True


_KITS: weakref.WeakKeyDictionary[Runner, Journeys] = weakref.WeakKeyDictionary()


def journeys(runner: Runner) -> Journeys:
    kit = _KITS.get(runner)
    if kit is None:
        kit = _KITS[runner] = Journeys(runner)
    return kit


class _User:
    def __init__(self, index: int) -> None:
        self.index = index
        self.busy = False  # awaiting a reply: a Stop lets it finish (bounded by the drain)
        self.stopping = False
        self.stop_deadline = float("inf")  # perf_counter after which it is cancelled
        self.out_of_rows = False  # its feeder ran dry: do not start it again
        self.lane: Lane | None = None  # its compiled lane (driven_users.py), if it has one

    def stop(self, grace: float) -> None:
        """Finish the iteration (within `grace` seconds), then end."""
        self.stopping = True
        self.stop_deadline = time.perf_counter() + grace
        if self.lane is not None:
            self.lane.enabled = False  # the next request is then sent (or not) in Python


async def run_user_phase(runner: Runner, state: PhaseState) -> None:
    phase = state.phase
    curve = phase.users
    assert curve is not None
    kit = journeys(runner)
    if phase.data is not None:
        kit.feeder(phase.data)  # load (and fail) now rather than in each user
    if is_python_flow(phase.flow):
        kit.flow(phase.flow)
    mix = None if is_python_flow(phase.flow) else Mix(runner.scenario, phase)
    users: dict[int, tuple[_User, asyncio.Task[None]]] = {}
    finished: set[int] = set()
    loop = asyncio.get_running_loop()
    # the hot path: users run by callbacks when the phase needs no awaiting per request
    own = phase.connections == "per-user" or phase.cookies
    driven = drivable(phase, mix, runner.engine)

    def start_user(u: int) -> None:
        user = _User(u)
        if driven:
            client = runner.new_client(1, cookies=phase.cookies) if own else runner.shared_client()
            assert mix is not None and isinstance(client, FastClient)
            me = _user_state(runner, kit, phase, u)
            pause = functools.partial(think_seconds, phase.think, me.rng)
            judge = functools.partial(_evaluate, runner, kit, phase, jar=_jar_of(client))
            feeder = kit.feeder(phase.data) if phase.data is not None else None
            driver = DrivenUser(
                runner, phase, mix, kit.steps, client, user, pause, me, judge, own, feeder,
                kit.fixed,
            )  # fmt: skip
            task = loop.create_task(driver.run())
        else:
            task = loop.create_task(_user_loop(runner, state, mix, user))
        users[u] = (user, task)
        state.users[u] = task

    try:
        while not runner.aborted:
            now = runner.run_time()
            t = now - phase.start
            ending = now >= state.stop_at or t >= phase.duration
            wanted: set[int] = set()
            if not ending and t >= 0:
                share = runner.shares.current(now)
                if share is not None:
                    stripe = runner.shares.stripe(share)
                    wanted = {u for u in range(curve.users_at(t)) if stripe.owner(u) == share.index}
            for u in wanted - users.keys() - finished:
                start_user(u)
            for u, (user, task) in list(users.items()):
                if task.done():
                    del users[u]
                    state.users.pop(u, None)
                    if user.out_of_rows:
                        finished.add(u)
                    continue
                if u not in wanted and not user.stopping:
                    user.stop(phase.grace)
                if user.stopping and time.perf_counter() >= user.stop_deadline:
                    task.cancel()
            state.active_users = sum(
                1 for user, _ in users.values() if not user.stopping and not user.out_of_rows
            )
            if ending and not users:
                return
            await asyncio.sleep(_next_pass(t, phase.duration, state.stop_at - now))
    finally:
        state.active_users = 0
        # A Stop with a drain lets the users awaiting a reply finish it (they then see
        # the abort and end); those thinking, or still busy when the drain ends, are
        # cancelled: a request cut off is recorded as cancelled.
        busy = [task for user, task in users.values() if user.busy and not task.done()]
        for user, task in users.values():
            if not user.busy:
                task.cancel()
        if busy and runner.aborted and runner.abort_drain > 0:
            await asyncio.wait(busy, timeout=runner.abort_drain)
        for task in busy:
            task.cancel()


async def _user_loop(runner: Runner, state: PhaseState, mix: Mix | None, user: _User) -> None:
    phase = state.phase
    kit = journeys(runner)
    me = _user_state(runner, kit, phase, user.index)
    rng = me.rng
    feeder = kit.feeder(phase.data) if phase.data is not None else None
    per_user_row = feeder is not None and feeder.source.per_user
    if feeder is not None and per_user_row:
        me.row = feeder.for_user(phase.name, user.index)
        if me.row is NO_ROW:
            user.out_of_rows = True
            return
    own = phase.connections == "per-user" or phase.cookies
    client: HttpClient = (
        runner.new_client(1, cookies=phase.cookies) if own else runner.shared_client()
    )

    jar = _jar_of(client)
    flow_user = None
    if is_python_flow(phase.flow):
        names = kit.flow_names.setdefault(phase.name, set())
        flow_user = FlowUser(runner, phase, client, me, names, kit.steps, kit.endpoint, jar)
    try:
        while not user.stopping and not runner.aborted:
            if feeder is not None and not per_user_row:
                me.row = feeder.next_row(rng)
                if me.row is NO_ROW:
                    user.out_of_rows = True
                    return
            if flow_user is not None:
                await _flow_iteration(runner, kit, phase, flow_user)
                waited = False  # a flow may never await: yield below
            else:
                assert mix is not None
                waited = await _steps_iteration(runner, kit, phase, mix, client, me, jar, user)
            me.iteration += 1
            if not waited:  # an iteration that never waited must not starve the loop
                await asyncio.sleep(0)
    finally:
        if own:
            await client.close()


def _jar_of(client: HttpClient) -> Callable[[], Iterable[Any] | None]:
    """The client's cookie jar when a check or extraction asks (None: it keeps none)."""

    def jar() -> Iterable[Any] | None:
        found: Iterable[Any] | None = getattr(client, "cookie_jar", None)
        return found

    return jar


def _user_state(runner: Runner, kit: Journeys, phase: Phase, index: int) -> UserState:
    """User `index`'s state as it starts: the scenario's variables, its own random
    numbers (the same on every run of the same plan)."""
    rng = random.Random(hash((runner.plan.run_id, phase.name, index)))
    return UserState(index, vars=dict(kit.vars), rng=rng)


async def _steps_iteration(
    runner: Runner,
    kit: Journeys,
    phase: Phase,
    mix: Mix,
    client: HttpClient,
    me: UserState,
    jar: Callable[[], Iterable[Any] | None],
    user: _User,
) -> bool:
    """One pass over the phase's steps; True if it waited for a reply.

    The request is awaited here, in the user's task: a task per request (and the
    shield that kept it alive through a stop) cost a third of the agent's CPU per
    request. A stop is therefore cooperative (`_User.busy`, `run_user_phase`)."""
    waited = False
    iteration = me.iteration
    specs = mix.specs if phase.flow == "sequence" else [mix.pick(me.user_id + iteration)]
    for spec in specs:
        if spec.once and spec.name in me.done:
            continue
        step = kit.steps[spec.name]
        request = step.build(me)
        if not runner.may_send():  # the dead-man switch, checked at every send
            runner.abort()
            return waited
        runner.recorder.arrival(phase.name, spec.name, runner.current_interval())
        sent = time.perf_counter()
        user.busy = True
        try:
            reply = await runner.sender.send(
                client, phase.name, spec.name, request, sent, spec.timeout
            )
        finally:
            user.busy = False
        # a reply came over the network; a failure may have been raised at once
        waited = waited or reply is not None
        if runner.aborted:
            return waited
        failed = False
        if step.evaluates or spec.once:
            failed = _evaluate(runner, kit, phase, step, me, reply, sent, jar)
            if spec.once and not failed:
                me.done.add(spec.name)  # done once it succeeded: a failed login is tried again
        pause = think_seconds(phase.think, me.rng)
        if pause > 0:
            await asyncio.sleep(pause)
            waited = True
        if failed and spec.abort_on_fail:
            return waited
    return waited


def _evaluate(
    runner: Runner,
    kit: Journeys,
    phase: Phase,
    step: Step,
    me: UserState,
    reply: Reply | None,
    sent: float,
    jar: Callable[[], Iterable[Any] | None],
) -> bool:
    """Extractions and checks of one reply, counted; True if the step failed."""
    view = ReplyView(reply, time.perf_counter() - sent)
    verdict = None
    if step.evaluates:
        verdict = step.evaluate(view, me, jar())
        buffer = runner.recorder.series(phase.name, step.name)
        buffer.checks_passed += verdict.passed
        buffer.checks_failed += verdict.failed
        for label in verdict.failures:
            if kit.once("check", phase.name, step.name, label):
                log.warning(
                    "check failed: phase %s, request %s: %s (status %s; logged once)",
                    phase.name,
                    step.name,
                    label,
                    view.status or "no reply",
                )
    return step.failed(view, verdict)


async def _flow_iteration(runner: Runner, kit: Journeys, phase: Phase, user: FlowUser) -> None:
    function = kit.flow(phase.flow)
    try:
        await function(user)
    except asyncio.CancelledError:
        raise
    except (Exception, SystemExit) as error:  # a flow's bug ends its iteration, not the agent
        name = exception_series(error)
        runner.recorder.arrival(phase.name, name, runner.current_interval())
        now = time.perf_counter()
        runner.recorder.series(phase.name, name).completed("error", now, now, now, 0)
        if kit.once("flow", phase.name, name):
            log.warning(
                "flow %s raised %s in phase %s (counted as %s; logged once per type)",
                phase.flow,
                type(error).__name__,
                phase.name,
                name,
                exc_info=error,
            )
