"""The closed model: concurrent users that loop over a flow with think time.

User u of a phase (u < the phase's user curve at time t) runs on the agent
whose share owns u: the same striping as arrivals, so user counts add up
exactly across agents and follow plan updates. A controller reconciles the
running users with the wanted set a few times per second: a ramp up starts
users; a ramp down or the phase end asks users to stop after their current
iteration, and cancels those still busy after the grace period.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from loadctl.agent.http import HttpClient
from loadctl.agent.requests import Mix
from loadctl.protocol.scenario import ThinkTime

if TYPE_CHECKING:
    from loadctl.agent.runner import PhaseState, Runner

_RECONCILE = 0.1  # seconds between controller passes


def think_seconds(think: ThinkTime, rng: random.Random) -> float:
    if think.kind == "uniform":
        return rng.uniform(think.low, think.high)
    if think.kind == "exponential":
        return rng.expovariate(1.0 / think.low) if think.low > 0 else 0.0
    return think.low


class _User:
    def __init__(self, index: int) -> None:
        self.index = index
        self.stopping = False
        self.stop_deadline = float("inf")  # perf_counter after which it is cancelled


async def run_user_phase(runner: Runner, state: PhaseState) -> None:
    phase = state.phase
    curve = phase.users
    assert curve is not None
    mix = Mix(runner.scenario, phase)
    users: dict[int, tuple[_User, asyncio.Task[None]]] = {}
    loop = asyncio.get_running_loop()

    def start_user(u: int) -> None:
        user = _User(u)
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
            for u in wanted - users.keys():
                start_user(u)
            for u, (user, task) in list(users.items()):
                if task.done():
                    del users[u]
                    state.users.pop(u, None)
                    continue
                if u not in wanted and not user.stopping:
                    user.stopping = True
                    user.stop_deadline = time.perf_counter() + phase.grace
                if user.stopping and time.perf_counter() >= user.stop_deadline:
                    task.cancel()
            state.active_users = sum(1 for user, _ in users.values() if not user.stopping)
            if ending and not users:
                return
            await asyncio.sleep(_RECONCILE)
    finally:
        state.active_users = 0
        for _, task in users.values():
            task.cancel()


async def _user_loop(runner: Runner, state: PhaseState, mix: Mix, user: _User) -> None:
    phase = state.phase
    rng = random.Random(hash((runner.plan.run_id, phase.name, user.index)))
    client: HttpClient = (
        runner.new_client(1) if phase.connections == "per-user" else runner.shared_client()
    )
    iteration = 0
    try:
        while not user.stopping:
            specs = mix.specs if phase.flow == "sequence" else [mix.pick(user.index + iteration)]
            for spec in specs:
                runner.recorder.arrival(phase.name, spec.name, runner.current_interval())
                # shielded: stopping a user lets its request finish (or be recorded)
                await asyncio.shield(
                    runner.sender.spawn(
                        client,
                        phase.name,
                        spec.name,
                        runner.requests[spec.name],
                        time.perf_counter(),
                        spec.timeout,
                    )
                )
                pause = think_seconds(phase.think, rng)
                if pause > 0:
                    await asyncio.sleep(pause)
            iteration += 1
    finally:
        if phase.connections == "per-user":
            await client.close()
