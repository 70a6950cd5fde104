"""Heartbeats go only over quiet links: any frame says its sender is alive.

A real agent against a fake coordinator (this test's ROUTER): before its plan it
beats once a heartbeat period; while it sends a snapshot every interval (shorter
than the period) it sends no heartbeat at all, and it still stops when we fall
silent. The coordinator's socket: `quiet` names the agents sent nothing within a
period, the only ones its heartbeat goes to.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import zmq
from test_hostile import dealer, zmq_context
from test_liveness import procs

from loadctl.coordinator.server import Server
from loadctl.protocol.codec import ProtocolError, decode, encode
from loadctl.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Ping,
    Plan,
    Pong,
    Ready,
    Share,
    Snapshot,
    Welcome,
)
from loadctl.protocol.scenario import Scenario

from cluster import agent_argv, constant
from target_process import running_target

PERIOD = 1.5  # the heartbeat period our Welcome gives: longer than an interval (1 s)


def test_an_agent_sending_snapshots_sends_no_heartbeats() -> None:
    with running_target() as target, procs() as group, zmq_context() as ctx:
        wire = Scenario.from_dict(constant(target.url, 20, 6)).wire()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
        agent = group.start("agent", agent_argv(endpoint, "--id", "beats", "--deadman", "3"))
        frames: list[tuple[float, str]] = []  # (when, what) from the agent
        identity, ready_at, planned, our_beat = b"", 0.0, False, 0.0
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and agent.poll() is None:
                now = time.monotonic()
                if identity and now - our_beat >= 0.5:  # we keep talking: no dead-man stop
                    our_beat = now
                    beat = Heartbeat("running", 0.0, 0, 0, time.time())
                    router.send_multipart([identity, encode(beat)])
                if ready_at and not planned and now - ready_at >= 2 * PERIOD + 0.6:
                    planned = True  # idle long enough for two heartbeats: now the run
                    plan = Plan("beat-run", wire, Share(0, (1,), 0), time.time() + 0.3, 1.0)
                    router.send_multipart([identity, encode(plan)])
                if frames and frames[-1][1] == "Done":
                    break
                if not router.poll(50):
                    continue
                identity, data = router.recv_multipart()
                try:
                    message = decode(data)
                except ProtocolError:
                    continue
                frames.append((time.monotonic(), type(message).__name__))
                reply: list[Any] = []
                if isinstance(message, Hello):
                    reply = [Welcome("beat-run", PERIOD, 3.0)]
                elif isinstance(message, Ping):
                    reply = [Pong(message.seq, message.sent, time.time())]
                elif isinstance(message, Ready):
                    ready_at = time.monotonic()
                elif isinstance(message, Snapshot):
                    reply = [Ack("beat-run", (message.seq,))]
                for m in reply:
                    router.send_multipart([identity, encode(m)])
        finally:
            router.close(0)
        context = f"{frames}\n{group.report()}"
        snapshots = [t for t, kind in frames if kind == "Snapshot"]
        assert len(snapshots) >= 5, context
        idle = [t for t, kind in frames if kind == "Heartbeat" and ready_at <= t < snapshots[0]]
        assert len(idle) >= 2, context  # a quiet agent beats once a period
        assert all(b - a >= PERIOD - 0.2 for a, b in itertools.pairwise(idle)), context
        busy = [t for t, kind in frames if kind == "Heartbeat" and snapshots[0] < t < snapshots[-1]]
        assert busy == [], f"heartbeats between snapshots a second apart: {context}"


def test_the_coordinator_beats_only_to_agents_it_sent_nothing_lately() -> None:
    with zmq_context() as ctx:
        import zmq.asyncio

        server = Server(zmq.asyncio.Context.shadow(ctx), "tcp://127.0.0.1:*")
        try:
            agents = [dealer(ctx, server.endpoint, f"agent-{k}") for k in range(3)]
            for a in agents:
                a.send(b"hello")
            ids = []
            while len(ids) < 3:
                assert server.now.poll(5000), "an agent's frame did not arrive"
                ids.append(server.now.recv_multipart()[0])
            assert sorted(server.quiet(ids, 0.3)) == sorted(ids)  # never sent them anything
            server._send_now(ids[0], Ack("run", (1,)))
            assert sorted(server.quiet(ids, 0.3)) == sorted(ids[1:])
            assert decode(agents[0].recv()) == Ack("run", (1,))  # it went, and was timed
            time.sleep(0.35)
            assert sorted(server.quiet(ids, 0.3)) == sorted(ids)
        finally:
            server.close()
