"""Heartbeats go only over quiet links: any frame says its sender is alive.

A real agent against a fake coordinator: before its plan it beats once a heartbeat
period; while it sends a snapshot every interval (shorter than the period) it sends
no heartbeat at all. The coordinator's socket: `quiet` names the agents sent
nothing within a period, the only ones its heartbeat goes to.
"""

from __future__ import annotations

import itertools
import time

import zmq.asyncio
from fake_coordinator import FakeCoordinator
from test_hostile import dealer, zmq_context
from test_liveness import procs

from loadctl.coordinator.server import Server
from loadctl.protocol.codec import decode
from loadctl.protocol.messages import Ack, Done, Heartbeat, Plan, Ready, Share, Snapshot
from loadctl.protocol.scenario import Scenario

from cluster import agent_argv, constant
from target_process import running_target

PERIOD = 1.5  # the heartbeat period our Welcome gives: longer than an interval (1 s)


def test_an_agent_sending_snapshots_sends_no_heartbeats() -> None:
    with running_target() as target, procs() as group, zmq_context() as ctx:
        wire = Scenario.from_dict(constant(target.url, 20, 6)).wire()
        fake = FakeCoordinator(ctx, "beat-run", heartbeat=PERIOD)
        agent = group.start("agent", agent_argv(fake.endpoint, "--id", "beats", "--deadman", "3"))
        frames: list[tuple[float, type]] = []  # (when, what) from the agent
        ready_at, planned = 0.0, False
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and agent.poll() is None:
                if ready_at and not planned and time.monotonic() - ready_at >= 2 * PERIOD + 0.6:
                    planned = True  # idle long enough for two heartbeats: now the run
                    fake.send(Plan("beat-run", wire, Share(0, (1,), 0), time.time() + 0.3, 1.0))
                got = fake.next()
                if got is None:
                    continue
                frames.append((got[0], type(got[1])))
                if isinstance(got[1], Ready):
                    ready_at = got[0]
                elif isinstance(got[1], Done):
                    break
        finally:
            fake.close()
        context = f"{frames}\n{group.report()}"
        snapshots = [t for t, kind in frames if kind is Snapshot]
        assert len(snapshots) >= 5, context
        beats = [t for t, kind in frames if kind is Heartbeat]
        idle = [t for t in beats if ready_at <= t < snapshots[0]]
        assert len(idle) >= 2, context  # a quiet agent beats once a period
        assert all(b - a >= PERIOD - 0.2 for a, b in itertools.pairwise(idle)), context
        busy = [t for t in beats if snapshots[0] < t < snapshots[-1]]
        assert busy == [], f"heartbeats between snapshots a second apart: {context}"


def test_the_coordinator_beats_only_to_agents_it_sent_nothing_lately() -> None:
    with zmq_context() as ctx:
        server = Server(zmq.asyncio.Context.shadow(ctx), "tcp://127.0.0.1:*")
        try:
            agents = {
                f"agent-{k}".encode(): dealer(ctx, server.endpoint, f"agent-{k}") for k in range(3)
            }
            for a in agents.values():
                a.send(b"hello")
            ids = []
            while len(ids) < 3:
                assert server.now.poll(5000), "an agent's frame did not arrive"
                ids.append(server.now.recv_multipart()[0])
            assert sorted(server.quiet(ids, 0.3)) == sorted(ids)  # never sent them anything
            server._send_now(ids[0], Ack("run", (1,)))
            assert sorted(server.quiet(ids, 0.3)) == sorted(ids[1:])
            first = agents[ids[0]]  # the frames arrive in any order
            assert first.poll(5000), "the Ack did not arrive"
            assert decode(first.recv()) == Ack("run", (1,))  # it went, and was timed
            time.sleep(0.35)
            assert sorted(server.quiet(ids, 0.3)) == sorted(ids)
        finally:
            server.close()
