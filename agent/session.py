"""One agent process's life: handshake, clock, plans, snapshots, dead-man switch.

The session is a small state machine driven by the messages it receives,
through a dispatch table from message class to handler. Its one hard rule is
the dead-man switch: when nothing has come from the coordinator for
`deadman` seconds, all load stops at once (phases and in-flight requests are
cancelled, target connections closed); unsent results stay in the outbox.
The agent then waits a bounded time for its coordinator to come back (to
hand over those results and rejoin), or exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil
import zmq.asyncio

from loadctl import __version__
from loadctl.agent.link import RESEND_AFTER, CoordinatorLink
from loadctl.agent.pacer import wait_until
from loadctl.agent.runner import Runner
from loadctl.protocol.clock import ClockEstimate, ClockSample, estimate
from loadctl.protocol.codec import VersionMismatch
from loadctl.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Done,
    Error,
    Heartbeat,
    Hello,
    Message,
    Ping,
    Plan,
    PlanUpdate,
    Pong,
    Ready,
    Series,
    Snapshot,
    Started,
    Stop,
    Welcome,
)

log = logging.getLogger("loadctl.agent")

EXIT_OK = 0
EXIT_FAILED = 3  # could not reach, or lost, the coordinator
EXIT_INTERRUPTED = 130
STOP_DRAIN = 2.0  # seconds in-flight requests may finish after a Stop
REJOIN = "rejoin"  # the Stop reason of a coordinator that had declared us lost


class AgentFailure(Exception):
    """A reason to stop that the user should read in one line."""


@dataclass
class AgentOptions:
    endpoint: str
    agent_id: str = ""
    connect_timeout: float = 15.0
    deadman: float = 2.0  # the coordinator's Welcome may lower it, never raise it
    orphan_timeout: float = 30.0  # after the dead-man switch: wait this long for the coordinator
    serve: bool = False  # serve run after run (reconnecting) instead of exiting after one
    security: Any = None  # loadctl.agent.security.ClientSecurity or None (plaintext)

    def resolved_id(self) -> str:
        return self.agent_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class AgentSession:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.agent_id = options.resolved_id()
        self.ctx = zmq.asyncio.Context()
        self.link = CoordinatorLink(self.ctx, options.endpoint, self.agent_id, options.security)
        self.deadman = options.deadman
        self.heartbeat = 0.5
        self.clock: ClockEstimate | None = None
        self.runner: Runner | None = None
        self.run_task: asyncio.Task[None] | None = None
        self.finished = False  # Bye received, or the run is over in one-run mode
        self.process = psutil.Process()
        self.process.cpu_percent(None)
        # Snapshots measure CPU over their interval, heartbeats over theirs: psutil keeps
        # the last reading per object, so each needs its own.
        self.snapshot_process = psutil.Process()
        self.snapshot_process.cpu_percent(None)
        self._pongs: asyncio.Queue[tuple[Pong, float]] = asyncio.Queue()
        self._handlers: dict[type[Any], Callable[[Any], Awaitable[None]]] = {
            Welcome: self._on_welcome,
            Pong: self._on_pong,
            Plan: self._on_plan,
            PlanUpdate: self._on_update,
            Ack: self._on_ack,
            Heartbeat: self._ignore,
            Stop: self._on_stop,
            Bye: self._on_bye,
            Error: self._on_error,
        }
        self._welcomed = asyncio.Event()
        self._run_id = ""
        self._rejoin = False  # the coordinator asked us to stop our share and say Ready again
        self._handshaking = False  # saying Hello .. Ready: a rejoin is what we are doing

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            if not self.options.serve:
                await self._handshake()
                await self._serve_until_done()
                return EXIT_OK
            while True:  # --reconnect: serve run after run, whatever happens to the coordinator
                try:
                    await self._handshake()
                    await self._serve_until_done()
                except AgentFailure as error:
                    log.warning("%s; reconnecting", error)
                self._reset_for_next_run()
        finally:
            if self.runner is not None:
                self.runner.abort()
                await self.runner.close()
            self.link.close()
            self.ctx.term()

    def _reset_for_next_run(self) -> None:
        self.finished = False
        self.runner = None
        self.run_task = None

    async def _handshake(self) -> None:
        """Hello until Welcome (bounded by --connect-timeout, or with backoff forever when
        serving), then measure the clock offset and say Ready."""
        self._handshaking = True
        try:
            await self._hello_until_ready()
        finally:
            self._handshaking = False

    async def _hello_until_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.options.connect_timeout
        backoff = 1.0
        next_note = started + 30.0
        hello = Hello(
            PROTOCOL_VERSION,
            self.agent_id,
            socket.gethostname(),
            os.cpu_count() or 1,
            1,
            os.getpid(),
            __version__,
        )
        self._welcomed.clear()
        while not self._welcomed.is_set():
            now = time.monotonic()
            if now > deadline and not self.options.serve:
                raise AgentFailure(
                    f"no answer from the coordinator at {self.options.endpoint} after "
                    f"{self.options.connect_timeout:g} s: check that it is running, the address "
                    "and port are right and reachable, and the keys match"
                )
            if self.options.serve and now >= next_note:  # once per attempt window
                log.info(
                    "waiting for a coordinator at %s (%.0f s so far)",
                    self.options.endpoint,
                    now - started,
                )
                next_note = now + 30.0
            await self.link.send(hello)
            await self._pump(backoff)
            if self.options.serve:
                backoff = min(backoff * 1.5, 5.0)
        samples = []
        for seq in range(5):
            await self.link.send(Ping(seq, time.time()))
            got = await self._wait_pong(seq, 2.0)
            if got is not None:
                pong, received = got
                samples.append(ClockSample(pong.sent, pong.coordinator_time, received))
        if not samples:
            raise AgentFailure("the coordinator answered Hello but not the clock pings")
        self.clock = estimate(samples)
        await self.link.send(Ready(self.clock.offset, self.clock.rtt))

    async def _wait_pong(self, seq: int, timeout: float) -> tuple[Pong, float] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while not self._pongs.empty():
                pong, received = self._pongs.get_nowait()
                if pong.seq == seq:
                    return pong, received
            await self._pump(min(0.2, max(deadline - time.monotonic(), 0.0)))
        return None

    async def _pump(self, timeout: float) -> None:
        """Receive and dispatch messages for up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            try:
                message = await self.link.receive(max(end - time.monotonic(), 0.0))
            except VersionMismatch as error:
                raise AgentFailure(f"the coordinator was refused: {error}") from None
            if message is None:
                return
            await self._dispatch(message)
            if time.monotonic() >= end:
                return

    async def _dispatch(self, message: Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            log.warning("ignored a %s from the coordinator", type(message).__name__)
            return
        try:
            await handler(message)
        except AgentFailure:
            raise
        except Exception as error:  # a message that makes no sense here must not kill us
            log.warning(
                "ignored a %s from the coordinator: %s: %s",
                type(message).__name__,
                type(error).__name__,
                error,
            )

    async def _serve_until_done(self) -> None:
        last_resend = 0.0
        while not self.finished:
            await self._pump(0.1)  # the dead-man check below runs at least 10 times a second
            now = time.monotonic()
            # Any frame tells the coordinator we are alive: a heartbeat only goes after a
            # heartbeat period of sending nothing else (a snapshot a second halves them).
            if now - self.link.last_sent >= self.heartbeat:
                await self.link.send(self._heartbeat())
            if now - last_resend >= self.heartbeat:
                last_resend = now
                await self.link.resend_due()
            if self.link.silence() > self.deadman:
                await self._dead_man()  # returns once the coordinator is back (or raises)
            elif self._rejoin and self._ready_to_rejoin():
                self._rejoin = False
                log.info("rejoining the run")
                self.runner = None
                self.run_task = None
                await self._handshake()  # Ready again: the coordinator gives a new share

    def _ready_to_rejoin(self) -> bool:
        """The old share has stopped and its results are handed over."""
        return (self.run_task is None or self.run_task.done()) and not self.link.outbox

    async def _dead_man(self) -> None:
        stopped = self.runner is not None and not self.runner.aborted
        if self.runner is not None:
            self.runner.abort()
            await self.runner.close()
        log.error(
            "no word from the coordinator for %.1f s: %s",
            self.link.silence(),
            "stopped all load" if stopped else "standing by",
        )
        if self.run_task is not None:  # let the aborted run cut its last interval
            await asyncio.wait([self.run_task], timeout=5.0)
        deadline = time.monotonic() + self.options.orphan_timeout
        while time.monotonic() < deadline:
            # Our heartbeats tell a coordinator that comes back that we are here; it
            # answers (a Stop asking us to rejoin), and then the results go over.
            await self.link.send(self._heartbeat())
            await self._pump(0.5)
            if self.link.silence() < 1.0:
                await self.link.resend_due(force=True)
                self._rejoin = not self.finished
                return
        raise AgentFailure(
            f"lost the coordinator at {self.options.endpoint} for "
            f"{self.options.orphan_timeout:g} s; stopped all load"
            + (f", {len(self.link.outbox)} snapshots unsent" if self.link.outbox else "")
        )

    def _heartbeat(self) -> Heartbeat:
        state = "running" if self.run_task and not self.run_task.done() else "ready"
        in_flight = self.runner.sender.in_flight if self.runner else 0
        return Heartbeat(
            state,
            self.process.cpu_percent(None),
            self.process.memory_info().rss,
            in_flight,
            time.time(),
        )

    # -- handlers -------------------------------------------------------------------------
    async def _ignore(self, message: Message) -> None:
        return None

    async def _on_welcome(self, message: Welcome) -> None:
        self.heartbeat = message.heartbeat
        self.deadman = min(self.options.deadman, message.deadman)
        self._welcomed.set()

    async def _on_pong(self, message: Pong) -> None:
        self._pongs.put_nowait((message, time.time()))

    async def _on_plan(self, plan: Plan) -> None:
        if self.run_task is not None and not self.run_task.done():
            log.warning("ignored a second plan while running")
            return
        if self.clock is None:
            log.warning("ignored a plan that came before the handshake")
            return
        if self._run_id != plan.run_id:  # seqs count per run; a rejoin keeps counting
            self._run_id = plan.run_id
            self.link.next_seq = 1
        log.info(
            "plan for run %s: share from %.2f s, position %d of %d",
            plan.run_id,
            plan.share.since,
            plan.share.index,
            len(plan.share.weights),
        )
        self.runner = Runner(plan, self.clock, self._sink)
        self.runner.may_send = lambda: self.link.silence() <= self.deadman
        self.runner.send_until = lambda: self.link.last_heard + self.deadman
        self.run_task = asyncio.get_running_loop().create_task(self._run_plan(self.runner))

    async def _announce_start(self, runner: Runner) -> None:
        """Report when the run really began here, on the coordinator's clock: the
        spread of these over the agents is the start skew the result shows."""
        await wait_until(runner.t0)
        clock = self.clock
        assert clock is not None
        actual = clock.to_coordinator(time.time())
        await self.link.send(Started(runner.plan.run_id, actual, clock.error_bound))

    async def _run_plan(self, runner: Runner) -> None:
        announce = asyncio.get_running_loop().create_task(self._announce_start(runner))
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must not leave load running or results unsent
            log.exception("the run failed on this agent")
            runner.abort()
            await self.link.send(Error("agent-run-failed", f"{type(error).__name__}: {error}"))
        announce.cancel()
        await self.link.send(
            Done(runner.plan.run_id, self.link.next_seq - 1, runner.engine_note or "")
        )
        # what is still unacked from before the last interval goes again now, rather
        # than after its back-off, which may be longer than the coordinator's drain
        await self.link.resend_due(sent_before=time.monotonic() - RESEND_AFTER)

    async def _sink(
        self,
        interval: int,
        start: float,
        end: float,
        series: tuple[Series, ...],
        histograms: list[Any],
    ) -> None:
        runner = self.runner
        assert runner is not None
        snapshot = Snapshot(
            run_id=runner.plan.run_id,
            agent_id=self.agent_id,
            seq=self.link.take_seq(),
            interval=interval,
            start=start,
            end=end,
            series=series,
            histograms=histograms,
            active_users=runner.users_at_cut,
            in_flight=runner.sender.in_flight,
            cpu_percent=self.snapshot_process.cpu_percent(None),
            rss_bytes=self.process.memory_info().rss,
        )
        await self.link.send_snapshot(snapshot)

    async def _on_update(self, update: PlanUpdate) -> None:
        if self.runner is not None and self.runner.plan.run_id == update.run_id:
            self.runner.apply(update)

    async def _on_ack(self, ack: Ack) -> None:
        self.link.acked(ack.seqs)

    async def _on_stop(self, stop: Stop) -> None:
        log.info("coordinator asked to stop: %s", stop.reason)
        if stop.reason == REJOIN:  # we were declared lost: stop at once, then rejoin
            if self._handshaking:
                # Asked again (once a second while we were lost) before our Hello: this
                # handshake is the rejoin; acting on it would rejoin a second time.
                return
            if self.runner is not None:
                self.runner.abort()
            self._rejoin = True
        elif self.runner is not None and self.runner.plan.run_id == stop.run_id:
            # _run_plan then drains, cuts the last interval and says Done
            self.runner.abort(drain=STOP_DRAIN)

    async def _on_bye(self, bye: Bye) -> None:
        self.finished = True

    async def _on_error(self, error: Error) -> None:
        if error.code in ("refused", "version"):
            raise AgentFailure(f"the coordinator refused this agent: {error.message}")
        log.warning("coordinator reported an error: %s: %s", error.code, error.message)
