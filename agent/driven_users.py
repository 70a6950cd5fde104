"""Users driven by callbacks: the closed model's hot path on the fast engine.

Why: a user written as a coroutine pays, per request, a future, a task
wake-up and the resumption of a chain of frames (user loop -> iteration ->
sender -> client); on this project's VMs that was about two thirds of the
agent's own CPU per request, and it kept loadctl at ~1.7x wrk's CPU per
request where a bare uvloop Protocol client runs at ~1.15x. A `DrivenUser`
instead hands each request to `FastClient.send_soon` with a bound method as
its callback; the connection calls it from its parser callback, the user
records the outcome and writes its next request in the same call. No task
runs between two requests of a user.

Only what needs no awaiting per request runs this way (`drivable`): the steps of
a users phase, templated or not, with their checks, extractions, `once`,
`abort_on_fail`, data rows and cookies, but no Python flow, on the fast engine
(its shared pool, or with `connections: per-user` or `cookies` a client of the
user's own, closed at its end). Anything else runs as the coroutine users of `users.py`,
which measure the same things in the same way; a step's reply (with its headers
and body when a check or extraction reads them) is judged by the same function
(`judge`), and `once` and `abort_on_fail` move through the iteration as
`_steps_iteration` does. A feeder's rows are taken as `_user_loop` takes them (its
calls never wait): a `unique-per-user` row when the user starts, any other mode's
next row when an iteration starts; a user whose feeder has no row left ends.

A user that sends the same requests again and again (one, a sequence, or a mix:
static, or templated only with what stays the user's, such as `${user_id}`, and
then rendered once when the user starts), with no think time, no data rows and
nothing to judge in its replies but their status and latency (the commonest heavy
load), goes one step further: its `Lane` (agent/_lane.c) lets its connection record
each reply and write the next request in C, with no Python call at all, until the
interval ends, the dead-man switch's time comes, the user stops or the run aborts
(`Lane.enabled`, cleared by `_User.stop` and `Runner.abort`), another request
waits for a connection, or a reply is not one the lane takes; that reply then comes
back here (`replied`), as every reply did before, after `lane_detached` has put the
user where the lane left it. The recorder takes what the lane recorded when it cuts
the interval (`Recorder.absorb`).

Each user still has a task (the controller in `users.py` starts, stops and
cancels tasks): it starts the chain and waits until the user is done. A
cancelled task cancels the request in flight, which is recorded as cancelled,
as the coroutine users do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from loadctl.agent.engine_fast import Exchange, FastClient
from loadctl.agent.fast_conn import LANE, Prepared
from loadctl.agent.feeders import NO_ROW, Feeder
from loadctl.agent.http import Reply, SendError, outcome_of_class
from loadctl.agent.journey import Step, UserState, render
from loadctl.agent.recorder import SeriesBuffer
from loadctl.agent.requests import Mix
from loadctl.protocol.journey import is_python_flow
from loadctl.protocol.scenario import Phase

if TYPE_CHECKING:
    from loadctl.agent._lane import Lane
    from loadctl.agent.runner import Runner
    from loadctl.agent.users import _User

_EDGE = 1e-9  # seconds: an arrival this close to an interval's end is placed by the runner
_LANE_CYCLE_MAX = 4096  # a mix with a longer period of picks runs in Python


# judge(step, user state, reply or None if it failed, when it was sent): whether the
# step failed, its checks counted (users._evaluate)
Judge = Callable[[Step, UserState, Reply | None, float], bool]


def drivable(phase: Phase, mix: Mix | None, engine: str) -> bool:
    """Whether the users of `phase` can run as `DrivenUser`s on `engine`."""
    if mix is None or is_python_flow(phase.flow):
        return False
    return engine == "fast"


class DrivenUser(Exchange):
    """One user of a `drivable` phase: a request, its outcome, the think time, the
    next request, each step started by the previous one's callback.

    The series buffers of the recorder's current interval are kept at hand
    (`buffers`, dropped when the recorder is cut) and an arrival before the end
    of that interval (`boundary`) is counted in place: what `Recorder.arrival`
    and `Runner.current_interval` would do, without their calls."""

    def __init__(
        self,
        runner: Runner,
        phase: Phase,
        mix: Mix,
        steps: dict[str, Step],
        client: FastClient,
        user: _User,
        pause: Callable[[], float],
        me: UserState,
        judge: Judge,
        own_client: bool = False,
        feeder: Feeder | None = None,
        fixed: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        # a feeder's rows: the user's own, taken when it starts, or one per iteration
        per_user = feeder is not None and feeder.source.per_user
        self.user_rows = feeder if per_user else None
        self.iteration_rows = None if per_user else feeder
        self.row_iteration = -1  # the iteration `me.row` was taken for
        self.own_client = own_client  # the user's own connection: closed at its end
        self.runner = runner
        self.recorder = runner.recorder
        self.sender = runner.sender
        self.phase = phase
        self.fast_client = client
        self.user = user
        think = phase.think
        self.pause = None if think.kind == "constant" and think.low <= 0 else pause
        self.sequence = phase.flow == "sequence"
        self.mix = mix
        self.only = mix.specs[0].name if len(mix.specs) == 1 else ""  # no choice to make
        self.steps = steps
        self.ready: dict[str, Prepared] = {  # the others are built for each request
            s.name: client.prepare(steps[s.name].static)
            for s in mix.specs
            if not steps[s.name].templated
        }
        for s in mix.specs:  # templated with names that stay the user's: rendered once
            if steps[s.name].per_user(fixed):
                # one that cannot be sent fails as each request is built, as before
                with contextlib.suppress(SendError):
                    self.ready[s.name] = client.prepare(steps[s.name].build(me), keep=False)
        self.heads: dict[str, Prepared] = {  # their static forms, for the header block
            s.name: client.prepare(steps[s.name].static)
            for s in mix.specs
            if steps[s.name].path_only
        }
        self.timeouts = {s.name: s.timeout or runner.sender.default_timeout for s in mix.specs}
        self.once = {s.name for s in mix.specs if s.once}
        self.judged = {s.name: s for s in mix.specs if s.once or steps[s.name].evaluates}
        self.me = me  # templates read it, extractions and `once` write it
        self.judge = judge
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.position = 0  # the next request's place in the sequence
        self.name = ""  # the request in flight
        self.reply: Reply | None = None  # its whole reply, when it wanted the body
        self.sent = 0.0
        self.waiting = False  # a request is in flight and its callback is due
        self.timer: asyncio.Handle | None = None
        self.in_step = False
        self.buffers: dict[str, SeriesBuffer] = {}
        self.cut = -1  # the recorder's interval `buffers` and `boundary` belong to
        self.boundary = 0.0
        self.lane_names: list[str] = []  # the lane's cycle of requests
        self.lane = user.lane = self._make_lane(feeder)

    def _make_lane(self, feeder: Feeder | None) -> Lane | None:
        """The user's compiled lane (agent/_lane.c), if it can have one: requests
        ready for all of the user's life (`ready`) to one server, with nothing to judge
        in their replies but status and latency checks, no think time and no data rows. Its cycle
        is the sequence's steps, or one period of the mix's picks (`_lane_pos` says
        where the user is in it)."""
        if LANE is None or feeder is not None or self.pause is not None:
            return None
        checks = {}
        for name in self.judged:
            table = self.steps[name].lane_checks
            if table is None:
                return None  # it extracts, reads the body, or goes on only if it passed
            checks[name] = table
        mix = self.mix
        if self.sequence:
            names = [s.name for s in mix.specs]
        elif mix.period <= _LANE_CYCLE_MAX:
            names = [mix.pick(k).name for k in range(mix.period)]
        else:
            return None
        prepared = [self.ready.get(name) for name in names]
        pool = prepared[0].pool if prepared[0] is not None else None
        cycle = []
        for name, ready in zip(names, prepared, strict=True):
            if ready is None or ready.reads or ready.is_head:
                return None  # templated, or its reply is read (checks, redirects, cookies)
            if ready.big_body:
                return None  # not one write
            if ready.pool is not pool:
                return None  # another server: another connection
            cycle.append((ready.wire, self.timeouts[name], name))
        self.lane_names = names
        lane = LANE.Lane(self, cycle, self.fast_client.waiters, self.phase.name, checks)
        return cast("Lane", lane)  # LANE is a module found at run time: its names are Any

    def _lane_pos(self) -> int:
        """Where the request just sent is in the lane's cycle."""
        if self.sequence:
            return self.position
        return (self.user.index + self.me.iteration) % len(self.lane_names)

    def lane_detached(self, sent: float, deadline: float, advanced: int) -> None:
        """The lane gives the request in flight back (agent/_lane.c): when it was sent,
        its deadline, and how many requests the lane moved on by since it took over
        (each one step of the sequence, or one iteration of the mix)."""
        self.sent = sent
        self.deadline = deadline
        if not advanced:
            return
        if self.sequence:
            steps = len(self.lane_names)
            iterations, self.position = divmod(self.position + advanced, steps)
            self.me.iteration += iterations
        else:
            self.me.iteration += advanced
        self.name = self.lane_names[self._lane_pos()]

    async def run(self) -> None:
        lane = self.lane
        if lane is not None:
            self.recorder.lanes.add(lane)
        try:
            if self.user_rows is not None:
                self.me.row = self.user_rows.for_user(self.phase.name, self.user.index)
                if self.me.row is NO_ROW:
                    self.user.out_of_rows = True
                    return
            self.step()
            await self.finished
        finally:
            self.halt()
            if lane is not None:
                self.recorder.lanes.discard(lane)
                self.recorder.absorb(lane)
            if self.own_client:
                await self.fast_client.close()

    def step(self) -> None:
        """Send the next request, or end the user."""
        self.timer = None
        runner = self.runner
        if runner.aborted or (self.position == 0 and self.user.stopping):
            self._finish()
            return
        rows = self.iteration_rows
        if (
            rows is not None
            and self.me.iteration != self.row_iteration
            and not self._next_row(rows)
        ):
            self._finish()
            return
        if self.only:
            name = self.only
        elif self.sequence:
            name = self.mix.specs[self.position].name
        else:
            name = self.mix.pick(self.user.index + self.me.iteration).name
        if self.once and name in self.me.done:  # a `once` step that succeeded: skip it
            self._advance()
            self.timer = self.loop.call_soon(self.step)  # an iteration may send nothing
            return
        if not runner.may_send():  # the dead-man switch, checked at every send
            runner.abort()
            self._finish()
            return
        now = time.perf_counter()
        if self.recorder.index != self.cut:
            self._new_interval()
        buffer = self.buffers.get(name) or self._buffer(name)
        if now < self.boundary:
            buffer.arrivals += 1
        else:
            self.recorder.arrival(self.phase.name, name, runner.current_interval())
        self.name = name
        self.sent = now
        self.waiting = True
        self.user.busy = True
        self.sender.in_flight += 1
        self.in_step = True
        try:
            prepared = self.ready.get(name)
            if prepared is None:
                prepared = self._build(name)
            self.fast_client.send_soon(prepared, self.timeouts[name], self)
            lane = self.lane
            if lane is not None and not self.ended and self.task is None:
                # on a connection, replied to by its callback: the lane sends the
                # next ones until the interval ends (or the dead-man switch's time)
                lane.pos = self._lane_pos()
                lane.sent = now
                lane.until = min(self.boundary, runner.send_until())
                lane.enabled = True
                self.conn.lane = lane
        except SendError as error:  # it could not be made (a header rendered invalid)
            self.failed(error)
        finally:
            self.in_step = False

    def _next_row(self, rows: Feeder) -> bool:
        """An iteration starts: its row; False if the feeder has none left (the user
        ends, and is not started again)."""
        self.row_iteration = self.me.iteration
        self.me.row = rows.next_row(self.me.rng)
        if self.me.row is NO_ROW:
            self.user.out_of_rows = True
            return False
        return True

    def _build(self, name: str) -> Prepared:
        """A templated request, rendered for this user now."""
        step = self.steps[name]
        if step.path_only:  # the step's static form, with this user's path
            return self.heads[name].with_path(render(step.path, self.me, encode=True))
        return self.fast_client.prepare(step.build(self.me), keep=False)

    def failed(self, error: SendError) -> None:
        self.replied(0, 0, error.outcome)

    def replied_with(self, reply: Reply) -> None:
        self.reply = reply  # for the checks and extractions that read headers or body
        self.replied(reply.status, reply.bytes_in)

    def replied(self, status: int, nbytes: int, outcome: str = "") -> None:
        """Record the request (a reply, or a failure's `outcome`), then think or send
        the next one."""
        end = time.perf_counter()
        whole, self.reply = self.reply, None
        if not self.waiting:
            return  # cancelled meanwhile
        answered = not outcome  # else a failure: no reply to judge
        if answered:
            outcome = outcome_of_class(status)
        self.waiting = False
        self.sender.in_flight -= 1
        self.user.busy = False
        if self.recorder.index != self.cut:
            self._new_interval()
        name = self.name
        buffer = self.buffers.get(name) or self._buffer(name)
        buffer.completed(outcome, self.sent, self.sent, end, nbytes)
        if self.runner.aborted:
            self._finish()
            return
        spec = self.judged.get(name)
        if spec is None:
            self._advance()
        else:
            reply = (whole or Reply(status, nbytes)) if answered else None
            failed = self.judge(self.steps[name], self.me, reply, self.sent)
            if spec.once and not failed:
                self.me.done.add(name)  # done once it succeeded: a failed login is tried again
            self._advance(failed and spec.abort_on_fail)
        pause = 0.0 if self.pause is None else self.pause()
        if pause > 0:
            self.timer = self.loop.call_later(pause, self.step)
        elif self.in_step:  # ended within send_soon: do not recurse
            self.timer = self.loop.call_soon(self.step)
        else:
            self.step()

    def _advance(self, end_iteration: bool = False) -> None:
        """On to the next step of the iteration, or to the next iteration."""
        if self.sequence and not end_iteration:
            self.position += 1
            if self.position < len(self.mix.specs):
                return
        self.position = 0
        self.me.iteration += 1

    def halt(self) -> None:
        """Stop now: the request in flight is cancelled and recorded as such."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.waiting:
            return
        lane = self.lane
        if lane is not None:
            lane.enabled = False
            if not self.ended and self.task is None and self.conn.lane is lane:
                self.conn.detach_lane()  # `sent` and `name`: the request in flight's
        self.waiting = False
        self.cancel()
        self.sender.in_flight -= 1
        self.user.busy = False
        self.recorder.series(self.phase.name, self.name).completed(
            "cancelled", self.sent, self.sent, time.perf_counter(), 0
        )

    def _new_interval(self) -> None:
        runner = self.runner
        self.cut = self.recorder.index
        self.buffers = {}
        self.boundary = runner.t0 + (self.cut + 1) * runner.interval - _EDGE

    def _buffer(self, name: str) -> SeriesBuffer:
        buffer = self.buffers[name] = self.recorder.series(self.phase.name, name)
        return buffer

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)
