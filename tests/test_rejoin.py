"""A lost agent rejoins once, however often it was asked.

The coordinator asks a lost agent to rejoin (Stop "rejoin") once a second for as
long as it hears from it and has not had its Ready. An ask sent just before the
agent's Hello reaches it during its handshake: that handshake is the rejoin, so the
agent must not rejoin a second time (at the end of the plan it then gets). A real
agent against a fake coordinator that asks at the worst time.
"""

from __future__ import annotations

import time

from fake_coordinator import FakeCoordinator
from test_hostile import zmq_context
from test_liveness import procs

from loadctl.protocol.messages import Hello, Plan, Ready, Share, Stop
from loadctl.protocol.scenario import Scenario

from cluster import agent_argv, constant
from target_process import running_target

RUN = "rejoin-run"


def test_an_ask_to_rejoin_during_the_rejoin_handshake_is_not_a_second_rejoin() -> None:
    with running_target() as target, procs() as group, zmq_context() as ctx:
        long = Scenario.from_dict(constant(target.url, 20, 30)).wire()
        short = Scenario.from_dict(constant(target.url, 20, 2)).wire()  # the rejoined run
        fake = FakeCoordinator(ctx, RUN)
        agent = group.start("agent", agent_argv(fake.endpoint, "--id", "back", "--deadman", "3"))
        hellos: list[float] = []
        readies = 0
        asked_at = 0.0
        deadline = time.monotonic() + 25
        try:
            while time.monotonic() < deadline and agent.poll() is None:
                now = time.monotonic()
                if readies == 1 and not asked_at and now - hellos[0] >= 2.5:
                    asked_at = now  # the run is going: we "lose" the agent
                    fake.send(Stop(RUN, "rejoin"))
                    fake.before_welcome = [Stop(RUN, "rejoin")]  # and ask again, too late
                if readies == 2 and now - hellos[-1] >= 5.0:
                    break  # the short run is over: a second rejoin would show by now
                got = fake.next()
                if got is None:
                    continue
                if isinstance(got[1], Hello):
                    hellos.append(got[0])
                elif isinstance(got[1], Ready):
                    readies += 1
                    wire = long if readies == 1 else short
                    fake.send(Plan(RUN, wire, Share(0, (1,), 0), time.time() + 0.3, 1.0))
        finally:
            fake.close()
        context = f"hellos at {hellos}, readies {readies}\n{group.report()}"
        assert asked_at, f"the agent never ran its first plan\n{context}"
        assert readies == 2, context
        assert len(hellos) == 2, f"the agent rejoined more than once\n{context}"
