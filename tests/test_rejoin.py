"""A lost agent rejoins once, however often it was asked.

The coordinator asks a lost agent to rejoin (Stop "rejoin") once a second for as
long as it hears from it and has not had its Ready. An ask sent just before the
agent's Hello reaches it during its handshake: that handshake is the rejoin, so the
agent must not rejoin a second time (at the end of the plan it then gets). A real
agent against a fake coordinator (this test's ROUTER) that asks at the worst time.
"""

from __future__ import annotations

import time
from typing import Any

import zmq
from test_hostile import zmq_context
from test_liveness import procs

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
    Stop,
    Welcome,
)
from loadctl.protocol.scenario import Scenario

from cluster import agent_argv, constant
from target_process import running_target

RUN = "rejoin-run"


def test_an_ask_to_rejoin_during_the_rejoin_handshake_is_not_a_second_rejoin() -> None:
    with running_target() as target, procs() as group, zmq_context() as ctx:
        long = Scenario.from_dict(constant(target.url, 20, 30)).wire()
        short = Scenario.from_dict(constant(target.url, 20, 2)).wire()  # the rejoined run
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
        agent = group.start("agent", agent_argv(endpoint, "--id", "back", "--deadman", "3"))
        hellos: list[float] = []
        readies = 0
        identity, our_beat, asked_at = b"", 0.0, 0.0
        deadline = time.monotonic() + 25
        try:
            while time.monotonic() < deadline and agent.poll() is None:
                now = time.monotonic()
                if identity and now - our_beat >= 0.5:  # we keep talking: no dead-man stop
                    our_beat = now
                    beat = Heartbeat("running", 0.0, 0, 0, time.time())
                    router.send_multipart([identity, encode(beat)])
                if readies == 1 and not asked_at and now - hellos[0] >= 2.5:
                    asked_at = now  # the run is going: we "lose" the agent
                    router.send_multipart([identity, encode(Stop(RUN, "rejoin"))])
                if readies == 2 and now - hellos[-1] >= 5.0:
                    break  # the short run is over: a second rejoin would show by now
                if not router.poll(50):
                    continue
                identity, data = router.recv_multipart()
                try:
                    message = decode(data)
                except ProtocolError:
                    continue
                reply: list[Any] = []
                if isinstance(message, Hello):
                    hellos.append(time.monotonic())
                    if len(hellos) == 2:  # its rejoin: asked again before we answer
                        reply = [Stop(RUN, "rejoin")]
                    reply.append(Welcome(RUN, 0.5, 3.0))
                elif isinstance(message, Ping):
                    reply = [Pong(message.seq, message.sent, time.time())]
                elif isinstance(message, Ready):
                    readies += 1
                    start = time.time() + 0.3
                    wire = long if readies == 1 else short
                    reply = [Plan(RUN, wire, Share(0, (1,), 0), start, 1.0)]
                elif isinstance(message, Snapshot):
                    reply = [Ack(RUN, (message.seq,))]
                for m in reply:
                    router.send_multipart([identity, encode(m)])
        finally:
            router.close(0)
        context = f"hellos at {hellos}, readies {readies}\n{group.report()}"
        assert asked_at, f"the agent never ran its first plan\n{context}"
        assert readies == 2, context
        assert len(hellos) == 2, f"the agent rejoined more than once\n{context}"
