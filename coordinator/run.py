"""One run, from the coordinator's side: admit agents, plan, watch, drain.

The coordinator is a single asyncio task around one ROUTER socket: its intake
(`intake.py`) takes messages off the socket and hands them to their handlers
through a dispatch table, then `_tick` runs the clock-driven duties
(heartbeats, liveness, start, end, drain) at most every 50 ms. Nothing on the
wire can raise out of the loop: the socket layer drops what does not decode,
and handlers drop what does not belong (unknown agent, other run).

Shares are positional: agent i of the plan has weight `weights[i]`. A lost
agent's weight becomes 0 and a joining agent appends a weight. New shares take
effect at a run time every agent hears of in advance (`SHARE_NOTICE`), and a
lost agent's share moves only once it has surely stopped (its dead-man delay
after it last heard us), so no arrival is sent twice. Losses found together
move in one reshare.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq.asyncio

from loadctl.coordinator.chaos import ChaosTimeline, FaultRecord, preflight
from loadctl.coordinator.feeders import ShareHistory, plan_files
from loadctl.coordinator.intake import Intake
from loadctl.coordinator.registry import AgentRecord, Registry
from loadctl.coordinator.server import Server
from loadctl.coordinator.timeline import Timeline
from loadctl.protocol.messages import (
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
    Share,
    Snapshot,
    Started,
    Stop,
    Welcome,
)
from loadctl.protocol.scenario import Phase, Scenario, parse_phases

log = logging.getLogger("loadctl.coordinator")

MAX_AGENTS = 4096  # a flood of Hellos cannot grow the registry without bound
SHARE_NOTICE = 0.3  # seconds between sending new shares and their taking effect
# beyond the agents' dead-man delay (and its 0.1 s check), before a lost share moves
DEADMAN_MARGIN = 0.2
LOSS_CHECK_EVERY = 0.2  # seconds between looks for silent agents (O(agents) each)
REJOIN = "rejoin"  # Stop reason: stop the old share, hand over results, say Ready again


class CoordinatorFailure(Exception):
    """The run could not happen or complete; the message says why, in one line."""


class Controller(Protocol):
    """Something that steers a run interval by interval (capacity search, chaos)."""

    async def on_interval(self, run: Coordinator, index: int) -> None: ...


@dataclass
class CoordinatorOptions:
    bind: str = "tcp://127.0.0.1:5555"
    agents: int = 1
    wait_timeout: float = 60.0
    heartbeat: float = 0.5
    lost_after: float = 2.0  # silence after which an agent is declared lost (≤ 3 s)
    deadman: float = 2.0  # agents stop their load after this much silence
    start_delay: float = 1.0
    drain_timeout: float = 10.0
    rebalance: bool = True
    security: Any = None  # coordinator.security.ServerSecurity, or None for plaintext
    controller: Controller | None = None
    on_interval: Callable[[Coordinator, int], None] | None = None  # live view hook
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass
class RunEvent:
    at: float  # coordinator clock
    kind: str  # lost | joined | rebalanced | interrupted | plan-update | incomplete
    agent: str = ""
    detail: str = ""


class Coordinator:
    def __init__(self, scenario: Scenario, options: CoordinatorOptions) -> None:
        self.scenario = scenario
        self.options = options
        self.run_id = options.run_id
        self.registry = Registry()
        self.timeline = Timeline()
        self.events: list[RunEvent] = []
        self.state = "waiting"  # waiting | running | draining | finished
        self.status = "completed"  # completed | interrupted | failed
        self.phases: tuple[Phase, ...] = scenario.phases
        self.updates: list[PlanUpdate] = []
        self.weights: list[int] = []
        self.order: list[str] = []  # agent ids by share position
        self.share_history = ShareHistory()  # every share sent: rows for mid-run joiners
        self.start_at = 0.0
        self.ended_at = 0.0
        self.engine_notes: set[str] = set(scenario.notes())
        self.agent_errors: list[str] = []
        self._interrupt = False
        self._last_beat = 0.0
        self._last_loss_check = 0.0
        self._drain_deadline = math.inf
        self._reported_interval = -1
        self.server: Server | None = None
        self.intake: Intake | None = None
        self.chaos: ChaosTimeline | None = None
        self._handlers: dict[
            type[Any], Callable[[AgentRecord | None, bytes, Any], Awaitable[None]]
        ] = {
            Hello: self._on_hello,
            Ping: self._on_ping,
            Ready: self._on_ready,
            Started: self._on_started,
            Heartbeat: self._on_heartbeat,
            Done: self._on_done,
            Error: self._on_error,
            Bye: self._on_bye,
        }

    # -- public ---------------------------------------------------------------------------
    @property
    def interval(self) -> float:
        return self.scenario.defaults.interval

    @property
    def endpoint(self) -> str:
        return self.server.endpoint if self.server else self.options.bind

    def interrupt(self) -> None:
        """Ctrl-C: stop the agents, drain what they measured, finish as interrupted."""
        self._interrupt = True

    def run_time(self) -> float:
        return time.time() - self.start_at if self.start_at else 0.0

    def current_interval(self) -> int:
        return max(0, math.floor(self.run_time() / self.interval))

    @property
    def expected_end(self) -> float:
        return max((p.end for p in self.phases), default=0.0)

    async def update_plan(
        self,
        at_interval: int,
        phases: list[dict[str, Any]] | None = None,
        end_interval: int | None = None,
    ) -> None:
        """Change the run from an interval boundary on (capacity steps, aborts)."""
        if phases is not None:
            names = [r.name for r in self.scenario.requests]
            new = parse_phases(phases, ("phases",), names, self.scenario.scale)
            cut = at_interval * self.interval
            self.phases = tuple(p for p in self.phases if p.start < cut)
            self._cut_phases(cut)  # running phases stop at the boundary; the new ones follow
            self.phases += new
        if end_interval is not None:
            self._cut_phases(end_interval * self.interval)
        update = PlanUpdate(
            self.run_id,
            at_interval,
            None,
            tuple(phases) if phases is not None else None,
            end_interval,
        )
        self.updates.append(update)
        self.events.append(RunEvent(time.time(), "plan-update", "", f"from interval {at_interval}"))
        for agent in self._planned_alive():
            await self._send(agent, update)

    def _cut_phases(self, at: float) -> None:
        from dataclasses import replace

        self.phases = tuple(
            replace(p, duration=max(0.0, min(p.duration, at - p.start))) if p.end > at else p
            for p in self.phases
        )

    async def run(self) -> None:
        ctx = zmq.asyncio.Context()
        # Decoding a snapshot makes hundreds of short-lived objects: with the default
        # threshold the young generation is collected several times per snapshot.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
        security = self.options.security
        if security is not None and hasattr(security, "start"):
            security.start(ctx)  # the ZAP authenticator must run before bind
        try:
            await self._check_chaos()
            self.server = Server(ctx, self.options.bind, security)
            log.info(
                "coordinator %s listening on %s, waiting for %d agent(s)",
                self.run_id,
                self.server.endpoint,
                self.options.agents,
            )
            self._wait_deadline = time.monotonic() + self.options.wait_timeout
            self.intake = Intake(
                self.server,
                self.registry,
                self.timeline,
                self.run_id,
                self._handlers,
                self._on_snapshots,
                self._unexpected,
            )
            last_tick = 0.0
            while self.state != "finished":
                await self.intake.round()  # see intake.py: acks, batches, backlog
                now = time.monotonic()
                if now - last_tick >= 0.05:  # a tick costs O(agents)
                    last_tick = now
                    await self._tick()
            for agent in self.registry.alive():
                await self._send(agent, Bye("run finished"))
            await asyncio.sleep(0.05)  # let the Byes leave before the socket closes
        finally:
            if self.chaos is not None:
                await self.chaos.close()  # every fault it added is removed, whatever happened
            if self.server is not None:
                self.server.close()
            if security is not None and hasattr(security, "stop"):
                security.stop()
            ctx.term()
            gc.set_threshold(*thresholds)

    # -- chaos ----------------------------------------------------------------------------
    async def _check_chaos(self) -> None:
        """Before any agent is waited for: every fault proxy named must answer."""
        problem = await preflight(self.scenario.chaos)
        if problem:
            raise CoordinatorFailure(problem)

    def _chaos_event(self, kind: str, record: FaultRecord) -> None:
        detail = record.window.label + (f": {record.error}" if record.error else "")
        self.events.append(RunEvent(time.time(), f"fault-{kind}", "", detail))

    def fault_records(self) -> list[dict[str, Any]]:
        """Each fault window as the result records it (times in run seconds)."""
        return [] if self.chaos is None else self.chaos.result_records(self.start_at)

    # -- clock-driven duties --------------------------------------------------------------
    async def _tick(self) -> None:
        now = time.monotonic()
        beat = self.options.heartbeat
        if now - self._last_beat >= beat / 2:
            # An agent that got anything from us (an Ack, say) within a heartbeat period
            # knows we are alive; the others get a heartbeat. Checked twice a period, so
            # an agent never waits more than 1.5 periods for word from us; during a run
            # that halves the heartbeats (a thousand agents: 1,000 a second, not 2,000).
            self._last_beat = now
            assert self.server is not None
            quiet = self.server.quiet([a.identity for a in self.registry.alive()], beat)
            if quiet:
                self.server.broadcast(quiet, Heartbeat(self.state, 0.0, 0, 0, time.time()))
        if self.state == "waiting":
            await self._tick_waiting(now)
        elif self.state in ("running", "draining"):
            await self._tick_running(now)

    async def _tick_waiting(self, now: float) -> None:
        if self._interrupt:
            self.status = "interrupted"
            self.state = "finished"
            return
        ready = self.registry.ready()
        if len(ready) >= self.options.agents:
            await self._start(ready[: self.options.agents])
        elif now > self._wait_deadline:
            names = ", ".join(a.agent_id for a in ready) or "none"
            raise CoordinatorFailure(
                f"waited {self.options.wait_timeout:g} s for {self.options.agents} agent(s) at "
                f"{self.endpoint}, {len(ready)} ready ({names}): start the missing ones with "
                f"`loadctl agent --coordinator {self.endpoint}` or lower --agents"
            )

    async def _tick_running(self, now: float) -> None:
        assert self.intake is not None
        if now - self._last_loss_check >= LOSS_CHECK_EVERY:
            self._last_loss_check = now
            lost_after = self.options.lost_after
            silence = self.intake.silence  # as far as what we have read can tell
            alive = self._planned_alive()
            silent = [a for a in alive if silence(a) > lost_after and not a.complete()]
            if silent:
                await self._lose(silent)
        if self._interrupt and self.state == "running":
            self.status = "interrupted"
            self.events.append(RunEvent(time.time(), "interrupted"))
            for agent in self._planned_alive():
                await self._send(agent, Stop(self.run_id, "interrupted by the user"))
            self._begin_drain()
        due = math.floor((self.run_time() - 0.5 * self.interval) / self.interval) - 1
        while self._reported_interval < due and self.state == "running":
            self._reported_interval += 1
            if self.options.controller is not None:
                await self.options.controller.on_interval(self, self._reported_interval)
            if self.options.on_interval is not None:
                self.options.on_interval(self, self._reported_interval)
        planned = self._planned_alive()
        if planned and all(a.complete() for a in planned):
            self._finish()
        elif not planned and self.registry.planned():
            self.status = "failed"
            self.agent_errors.append("every agent was lost")
            self._finish()
        elif (
            self.state == "running"
            and self.run_time() > self.expected_end + self.scenario.defaults.timeout + 2.0
        ):
            self._begin_drain()
        elif self.state == "draining" and now > self._drain_deadline and not self.intake.backlog:
            self._finish()

    def _begin_drain(self) -> None:
        if self.state == "running":
            self.state = "draining"
            self._drain_deadline = time.monotonic() + self.options.drain_timeout

    def _finish(self) -> None:
        self.state = "finished"
        self.ended_at = time.time()
        for agent in self.registry.planned():
            if not agent.complete():
                missing = agent.missing_seqs()
                detail = (
                    f"snapshots {missing[:10]} never arrived"
                    if missing
                    else "did not report the end of its run"
                )
                self.events.append(RunEvent(time.time(), "incomplete", agent.agent_id, detail))

    async def _start(self, agents: list[AgentRecord]) -> None:
        agents.sort(key=lambda a: a.agent_id)
        self.order = [a.agent_id for a in agents]
        self.weights = [1] * len(agents)
        self.share_history.add(0.0, self.weights)
        max_rtt = max(a.clock_rtt for a in agents)
        self.start_at = time.time() + max(self.options.start_delay, 3 * max_rtt)
        for i, agent in enumerate(agents):
            await self._plan(agent, Share(0.0, tuple(self.weights), i))
        if self.scenario.chaos:
            self.chaos = ChaosTimeline(
                self.scenario.chaos, self.start_at, on_event=self._chaos_event
            )
            self.chaos.start()
        self.state = "running"
        # What setup built (scenario, plans, registry) lives to the end of the run:
        # the collector need not walk it again at every full collection.
        gc.freeze()
        log.info("run %s starts with %d agent(s)", self.run_id, len(agents))

    async def _plan(self, agent: AgentRecord, share: Share) -> None:
        from loadctl.protocol.fields import ScenarioError

        agent.planned = True
        try:
            files, notes = plan_files(self.scenario, share, self.share_history)
        except ScenarioError as error:
            raise CoordinatorFailure(f"the scenario's data or flows: {error}") from None
        self.engine_notes.update(notes)  # the flows' sha256, shown in the summary and result
        await self._send(
            agent,
            Plan(self.run_id, self.scenario.wire(), share, self.start_at, self.interval, files),
        )

    async def _reshare(self, reason: str, agent_id: str, since: float) -> float:
        """New shares for every agent from run time `since` (no later than needed)."""
        since = max(since, self.run_time() + SHARE_NOTICE)
        if self.share_history.epochs:  # after every share sent: one before would replace it
            since = max(since, self.share_history.epochs[-1].since + 0.001)
        self.share_history.add(since, self.weights)
        for position, other_id in enumerate(self.order):
            other = self.registry.get(other_id)
            if other is not None and other.alive and other.planned:
                at = math.floor(since / self.interval)
                await self._send(
                    other, PlanUpdate(self.run_id, at, Share(since, tuple(self.weights), position))
                )
        self.events.append(
            RunEvent(
                time.time(), "rebalanced", agent_id, f"{reason}; new shares from {since:.2f} s"
            )
        )
        return since

    async def _lose(self, agents: list[AgentRecord]) -> None:
        """Agents gone silent (or said Bye): each is marked lost, and their shares move
        to the others in one reshare (a thousand agents lost at once must not cost a
        thousand rounds of a thousand plan updates)."""
        stopped_by = 0.0
        moved: list[str] = []
        for agent in agents:
            silence = agent.silence()
            agent.lost_at = time.time()
            self.events.append(
                RunEvent(agent.lost_at, "lost", agent.agent_id, f"silent for {silence:.1f} s")
            )
            log.warning("agent %s lost (silent for %.1f s)", agent.agent_id, silence)
            await self._send(agent, Stop(self.run_id, REJOIN))  # heard if the link is half up
            if self.options.rebalance and self.state == "running" and agent.agent_id in self.order:
                self.weights[self.order.index(agent.agent_id)] = 0
                moved.append(agent.agent_id)
                # The lost agent stops by itself `deadman` seconds after it last heard
                # us, which was no later than we last heard it: its share moves only
                # then, so no arrival is sent twice. It may have heard our last
                # heartbeat up to one heartbeat after we last heard it, hence the
                # heartbeat in the sum.
                last_heard = self.run_time() - silence
                stopped_by = max(
                    stopped_by, last_heard + self.options.heartbeat + self.options.deadman
                )
        if moved and any(self.weights):
            who = moved[0] if len(moved) == 1 else f"{moved[0]} and {len(moved) - 1} more"
            await self._reshare("agent lost", who, stopped_by + DEADMAN_MARGIN)

    async def _ask_rejoin(self, agent: AgentRecord) -> None:
        """A lost agent is back: it stops its old share, hands over its results and, if
        the run has time left, says Ready and rejoins with a new one (asked once a second)."""
        now = time.monotonic()
        if now - agent.rejoin_asked >= 1.0:
            agent.rejoin_asked = now
            await self._send(agent, Stop(self.run_id, REJOIN))

    async def _join(self, agent: AgentRecord) -> None:
        """An agent that arrives (or returns) mid-run gets a share from a moment on."""
        if agent.agent_id in self.order:
            self.weights[self.order.index(agent.agent_id)] = 1
        else:
            self.order.append(agent.agent_id)
            self.weights.append(1)
        agent.joined_at = time.time()
        agent.lost_at = None
        agent.done_seq = None  # it runs again: complete only after its next Done
        since = await self._reshare("agent joined", agent.agent_id, self.run_time())
        position = self.order.index(agent.agent_id)
        await self._plan(agent, Share(since, tuple(self.weights), position))
        for update in self.updates:
            await self._send(agent, update)
        self.events.append(RunEvent(time.time(), "joined", agent.agent_id, f"from {since:.2f} s"))

    def _planned_alive(self) -> list[AgentRecord]:
        return [a for a in self.registry.planned() if a.alive]

    async def _send(self, agent: AgentRecord, message: Message) -> None:
        assert self.server is not None
        await self.server.send(agent.identity, message)

    # -- handlers -------------------------------------------------------------------------
    async def _unexpected(self, identity: bytes, message: Message) -> None:
        assert self.server is not None
        self.server.reject("unexpected", identity, type(message).__name__)

    async def _on_hello(self, agent: AgentRecord | None, identity: bytes, hello: Hello) -> None:
        assert self.server is not None
        if identity.decode("utf-8", "replace") != hello.agent_id:
            self.server.reject("identity", identity, f"Hello claims to be {hello.agent_id!r}")
            return
        if agent is None:
            if len(self.registry) >= MAX_AGENTS:
                self.server.reject("hello-flood", identity, "too many agents")
                return
            agent = AgentRecord(hello.agent_id, identity, hello)
            self.registry.add(agent)
            log.info("agent %s (%s, pid %d) connected", hello.agent_id, hello.host, hello.pid)
        agent.saw()
        await self.server.send(
            identity, Welcome(self.run_id, self.options.heartbeat, self.options.deadman)
        )

    async def _on_ping(self, agent: AgentRecord | None, identity: bytes, ping: Ping) -> None:
        assert self.server is not None
        if agent is not None:
            await self.server.send(identity, Pong(ping.seq, ping.sent, time.time()))

    async def _on_ready(self, agent: AgentRecord | None, identity: bytes, ready: Ready) -> None:
        if agent is None:
            return
        agent.clock_offset, agent.clock_rtt = ready.clock_offset, ready.clock_rtt
        was_ready = agent.ready
        agent.ready = True
        if (
            self.state == "running"
            and (not was_ready or not agent.alive or agent.planned)
            and self.run_time() < self.expected_end - self.interval
        ):
            await self._join(agent)

    async def _on_started(
        self, agent: AgentRecord | None, identity: bytes, started: Started
    ) -> None:
        if agent is not None and started.run_id == self.run_id:
            agent.started_at = started.started_at

    async def _on_snapshots(
        self,
        batch: list[tuple[AgentRecord | None, bytes, Snapshot]],
        acked: Collection[int],
    ) -> None:
        """Snapshots received together: each checked and acked in turn (but those at
        the positions `acked`, acked on arrival), then merged together
        (`Timeline.add_many`; a malformed one is still dropped alone)."""
        assert self.server is not None
        accepted: list[tuple[AgentRecord, bytes, Snapshot]] = []
        for position, (agent, identity, snapshot) in enumerate(batch):
            if agent is None or snapshot.agent_id != agent.agent_id:
                self.server.reject("unknown-agent", identity, "snapshot from an unknown agent")
                continue
            if not agent.planned:  # only agents this run gave a share may add to its results
                self.server.reject(
                    "unplanned-agent", identity, "snapshot from an agent with no plan"
                )
                continue
            if position not in acked:
                await self.server.send(identity, Ack(snapshot.run_id, (snapshot.seq,)))
            if snapshot.run_id != self.run_id:
                self.server.reject("unknown-run", identity, f"snapshot for run {snapshot.run_id!r}")
                continue
            accepted.append((agent, identity, snapshot))
        results = self.timeline.add_many([snapshot for _, _, snapshot in accepted])
        for (agent, identity, snapshot), merged in zip(accepted, results, strict=True):
            if isinstance(merged, ValueError):
                self.server.reject("bad-snapshot", identity, str(merged))
                continue
            if not agent.alive:  # results of a lost agent are kept; its load must stop
                await self._ask_rejoin(agent)
            if not merged:  # a resend of what we have: the per-agent counts have it too
                continue
            self._count_snapshot(agent, snapshot)

    def _count_snapshot(self, agent: AgentRecord, snapshot: Snapshot) -> None:
        """The per-agent counts of a merged snapshot."""
        agent.seqs.add(snapshot.seq)
        agent.arrivals += sum(s.arrivals for s in snapshot.series)
        agent.requests += sum(
            n for s in snapshot.series for k, n in s.outcomes.items() if k != "dropped"
        )
        agent.note_resources(snapshot.cpu_percent, snapshot.rss_bytes)

    async def _on_heartbeat(
        self, agent: AgentRecord | None, identity: bytes, beat: Heartbeat
    ) -> None:
        if agent is not None:
            agent.note_resources(beat.cpu_percent, beat.rss_bytes)
            agent.in_flight = beat.in_flight
            agent.state = beat.state
            if not agent.alive and agent.planned and self.state in ("running", "draining"):
                await self._ask_rejoin(agent)

    async def _on_done(self, agent: AgentRecord | None, identity: bytes, done: Done) -> None:
        if agent is not None and done.run_id == self.run_id:
            agent.done_seq = done.last_seq
            if done.send_lag_note:
                self.engine_notes.add(done.send_lag_note)

    async def _on_error(self, agent: AgentRecord | None, identity: bytes, error: Error) -> None:
        name = agent.agent_id if agent else repr(identity[:40])
        self.agent_errors.append(f"{name}: {error.code}: {error.message}")
        log.error("agent %s reported %s: %s", name, error.code, error.message)

    async def _on_bye(self, agent: AgentRecord | None, identity: bytes, bye: Bye) -> None:
        if agent is not None and agent.alive:
            await self._lose([agent])
