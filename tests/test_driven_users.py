"""Requests run by callbacks on the fast engine, against the real target: users driven
by their replies (agent/driven_users.py) and open-model arrivals (`Sender.start`).

The agent's Runner runs in this process with its real scheduler, sender, recorder
and fast client; the target is `loadctl target` in its own process. Each test
checks that the phase really ran on callbacks (the users' tasks run
`DrivenUser.run`; arrivals are `_Arrival`s, not tasks) and that every request
that arrived was recorded exactly once: arrivals equal completions of every
outcome, and nothing is left in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from http_servers import Servers
from test_journeys import LOGIN, users_csv

from loadctl.agent.runner import Runner
from loadctl.protocol.clock import ClockEstimate
from loadctl.protocol.messages import Plan, Series, Share
from loadctl.protocol.scenario import Scenario

from cluster import free_port
from target_process import running_target

INTERVAL = 0.5


@dataclass
class Outcome:
    arrivals: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    by_status: dict[tuple[str, str], int] = field(default_factory=dict)  # (name, outcome)
    checks: dict[str, list[int]] = field(default_factory=dict)  # name -> [passed, failed]
    in_flight: int = -1
    driven: set[str] = field(default_factory=set)  # the coroutines the users' tasks ran
    open_seen: tuple[int, int] = (0, 0)  # (arrivals in flight as callbacks, as tasks)
    elapsed: float = 0.0  # from the start to the end of the run
    abort_at: float = 0.0  # from the start to the abort

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())


def run_phase(
    target: str,
    phase: dict[str, Any],
    requests: list[dict[str, Any]],
    *,
    connections: int = 16,
    timeout: float = 5.0,
    abort_after: float | None = None,
    drain: float = 0.0,
    executor: str = "constant-users",
    engine: str = "fast",
    variables: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Outcome:
    scenario = Scenario.from_dict(
        {
            "name": "driven",
            "target": target,
            "defaults": {
                "engine": engine,
                "connections": connections,
                "timeout": timeout,
                "interval": INTERVAL,
            },
            "requests": requests,
            "phases": [{"name": "users", "executor": executor, **phase}],
            **({"variables": variables} if variables else {}),
            **({"data": data} if data else {}),
        }
    )
    out = Outcome()

    async def sink(
        index: int, start: float, end: float, series: tuple[Series, ...], _: list[Any]
    ) -> None:
        for s in series:
            out.arrivals[s.name] = out.arrivals.get(s.name, 0) + s.arrivals
            for outcome, n in s.outcomes.items():
                out.outcomes[outcome] = out.outcomes.get(outcome, 0) + n
                out.by_name[s.name] = out.by_name.get(s.name, 0) + n
                key = (s.name, outcome)
                out.by_status[key] = out.by_status.get(key, 0) + n
            checks = out.checks.setdefault(s.name, [0, 0])
            checks[0] += s.checks_passed
            checks[1] += s.checks_failed

    async def main() -> None:
        plan = Plan("driven", scenario.wire(), Share(0.0, (1,), 0), time.time(), INTERVAL)
        runner = Runner(plan, ClockEstimate(0.0, 0.0, 1), sink)

        async def watch() -> None:
            await asyncio.sleep(0.3)
            for state in runner.phases:
                out.driven |= {t.get_coro().__qualname__ for t in state.users.values()}  # type: ignore[union-attr]
            out.open_seen = (len(runner.sender.arrivals), len(runner.sender.tasks))
            if abort_after is not None:
                await asyncio.sleep(abort_after - 0.3)
                out.abort_at = time.perf_counter() - started
                runner.abort(drain)

        started = time.perf_counter()
        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(runner.run(), 30)
        out.elapsed = time.perf_counter() - started
        out.in_flight = runner.sender.in_flight
        watcher.cancel()

    uvloop.run(main())
    return out


def assert_all_recorded(out: Outcome, users: bool = True) -> None:
    if users:
        assert out.driven == {"DrivenUser.run"}, out.driven
    assert sum(out.arrivals.values()) == out.completed, (out.arrivals, out.outcomes)
    assert out.in_flight == 0


ITEM = [{"name": "item", "path": "/api/inventory/items/3"}]

pytestmark = pytest.mark.slow


def test_every_request_the_target_served_is_counted_once() -> None:
    with running_target() as target:
        out = run_phase(target.url, {"users": 16, "duration": 1.5, "grace": 1.0}, ITEM)
        served = target.counts()["total"]
    assert_all_recorded(out)
    assert out.outcomes == {"2xx": served} and served > 100


def test_more_users_than_connections_wait_for_one() -> None:
    """8 users, 2 connections: requests that find no idle connection queue for one."""
    with running_target("--latency", "5ms") as target:
        out = run_phase(
            target.url, {"users": 8, "duration": 1.5, "grace": 1.0}, ITEM, connections=2
        )
        served = target.counts()["total"]
    assert_all_recorded(out)
    assert out.outcomes == {"2xx": served}
    # two connections, ~5 ms each: at most ~400 a second whatever the number of users
    assert 50 <= served <= 2 * 1.5 / 0.005 * 1.2


def test_users_with_a_connection_each() -> None:
    """`connections: per-user`: each user's own client, closed when the phase ends."""
    phase = {"users": 8, "duration": 1.5, "grace": 1.0, "connections": "per-user"}
    with running_target("--latency", "5ms") as target:
        out = run_phase(target.url, phase, ITEM, connections=2)  # the shared pool's size
        served = target.counts()["total"]
    assert_all_recorded(out)
    assert out.outcomes == {"2xx": served}
    # eight connections, not the shared pool's two: more than two at a time were served
    assert served > 2 * 1.5 / 0.005 * 1.2


def test_think_time_and_a_sequence_flow() -> None:
    """Each user sends a then b, thinking 50 ms after each: 4 users x 1.5 s / 50 ms."""
    requests = [{"name": "a", "path": "/api/inventory/items/1"}, {"name": "b", "path": "/health"}]
    phase = {"users": 4, "duration": 1.5, "think": "50ms", "flow": "sequence", "grace": 1.0}
    phase["requests"] = ["a", "b"]
    with running_target() as target:
        out = run_phase(target.url, phase, requests)
        served = target.counts()["total"]
    assert_all_recorded(out)
    assert out.outcomes == {"2xx": served}
    assert 4 * 1.5 / 0.05 * 0.6 <= served <= 4 * 1.5 / 0.05 + 8
    assert abs(out.by_name["a"] - out.by_name["b"]) <= 4  # each user is between a and b


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_templates_status_checks_once_and_abort_on_fail(engine: str) -> None:
    """Each user says `hello` once, then asks for the item of its own id and, if that
    passed its status check, sends `after`. User 0 asks for item 0, which does not
    exist: its check fails and `abort_on_fail` skips `after`. The fast engine runs
    this on callbacks, aiohttp on coroutine users: the same rules hold for both."""
    requests = [
        {"name": "hello", "path": "/health", "once": True},
        {
            "name": "item",
            "path": "/api/inventory/items/${user_id}",
            "check": [{"status": 200}],
            "abort_on_fail": True,
        },
        {"name": "after", "path": "/health"},
    ]
    phase = {"users": 4, "duration": 1.5, "grace": 1.0, "flow": "sequence"}
    phase["requests"] = ["hello", "item", "after"]
    with running_target("--latency", "2ms") as target:
        out = run_phase(target.url, phase, requests, engine=engine)
        served = target.counts()["total"]
    assert_all_recorded(out, users=engine == "fast")
    if engine != "fast":
        assert out.driven == {"_user_loop"}, out.driven
    assert out.completed == served
    assert out.arrivals["hello"] == 4  # once per user: it succeeded the first time
    passed, failed = out.by_status[("item", "2xx")], out.by_status[("item", "4xx")]
    assert out.checks["item"] == [passed, failed] and passed > 0 and failed > 0
    assert out.arrivals["after"] == passed  # only after an item that passed its check
    assert out.checks.get("hello", [0, 0]) == [0, 0]  # `once` alone counts no check


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_a_journey_that_extracts_a_token_and_checks_json_bodies(engine: str) -> None:
    """Each user logs in once (a JSON body from templates; the token extracted from the
    reply's body), then places orders with the token in a header, each reply checked
    three ways (status, a field present, a field equal to the user's name). On the
    fast engine the replies' bodies reach the callbacks; aiohttp runs coroutine users."""
    requests = [
        {
            "name": "login",
            "method": "POST",
            "path": "/api/login",
            "body": {"username": "u${user_id}", "password": "pw-u${user_id}"},
            "extract": [{"var": "token", "json": "$.token"}],
            "check": [{"status": 200}],
            "once": True,
        },
        {
            "name": "order",
            "method": "POST",
            "path": "/api/orders",
            "headers": {"Authorization": "Bearer ${token}"},
            "body": {"item": "i${user_id}"},
            "check": [
                {"status": 201},
                {"json": "$.order_id", "exists": True},
                {"json": "$.username", "equals": "u${user_id}"},
            ],
            "abort_on_fail": True,
        },
    ]
    phase = {"users": 4, "duration": 1.5, "grace": 1.0, "flow": "sequence"}
    phase["requests"] = ["login", "order"]
    with running_target() as target:
        out = run_phase(target.url, phase, requests, engine=engine)
        counts = target.counts()
    assert_all_recorded(out, users=engine == "fast")
    if engine != "fast":
        assert out.driven == {"_user_loop"}, out.driven
    assert counts["logins"] == {f"u{u}": 1 for u in range(4)}
    assert out.arrivals["login"] == 4 and out.checks["login"] == [8, 0]  # check + extraction
    orders = out.by_status[("order", "2xx")]
    assert orders > 20 and out.outcomes == {"2xx": 4 + orders}
    assert sum(counts["order_items"].values()) == orders
    assert set(counts["order_items"]) == {f"i{u}" for u in range(4)}
    assert out.checks["order"] == [3 * orders, 0]


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_each_user_its_own_row(engine: str, tmp_path: Path) -> None:
    """unique-per-user: four users of six rows log in once with their own row, then
    order their row's item, each reply checked against their row's name."""
    source = {"file": str(users_csv(tmp_path, 6)), "mode": "unique-per-user"}
    order = {
        "name": "order",
        "method": "POST",
        "path": "/api/orders",
        "headers": {"Authorization": "Bearer ${token}"},
        "body": {"item": "${row.item}"},
        "check": [{"status": 201}, {"json": "$.username", "equals": "${row.username}"}],
    }
    requests = [{**LOGIN, "once": True, "abort_on_fail": True}, order]
    phase = {"users": 4, "duration": 1.5, "grace": 1.0, "flow": "sequence", "data": "users"}
    phase["requests"] = ["login", "order"]
    with running_target() as target:
        out = run_phase(
            target.url,
            phase,
            requests,
            engine=engine,
            data={"users": {**source, "shared_path": True}},
        )
        counts = target.counts()
    assert_all_recorded(out, users=engine == "fast")
    if engine != "fast":
        assert out.driven == {"_user_loop"}, out.driven
    assert counts["logins"] == {f"user{u:03d}": 1 for u in range(4)}
    orders = out.by_status[("order", "2xx")]
    assert orders > 20 and sum(counts["order_items"].values()) == orders
    assert set(counts["order_items"]) == {f"item-{u:03d}" for u in range(4)}
    assert out.checks["order"] == [2 * orders, 0] and counts["unauthorized"] == 0


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_a_row_per_iteration_until_the_rows_run_out(engine: str, tmp_path: Path) -> None:
    """unique-per-iteration without wrap: every iteration logs in with the next row,
    no row is used twice, and users whose feeder ran dry end before the phase does."""
    source = {"file": str(users_csv(tmp_path, 10)), "mode": "unique-per-iteration"}
    # thinking 200 ms, the rows last past the 0.3 s at which run_phase looks at the users
    phase = {"users": 3, "duration": 1.5, "grace": 1.0, "think": "200ms", "data": "users"}
    with running_target() as target:
        out = run_phase(
            target.url,
            phase,
            [LOGIN],
            engine=engine,
            data={"users": {**source, "shared_path": True}},
        )
        counts = target.counts()
    assert_all_recorded(out, users=engine == "fast")
    assert counts["logins"] == {f"user{r:03d}": 1 for r in range(10)}
    assert out.outcomes == {"2xx": 10} and out.checks["login"] == [20, 0]


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_each_user_keeps_its_own_cookies(engine: str, servers: Servers) -> None:
    """`cookies: true`: a user's session cookie, set by its first request, comes back
    with its second (the server echoes it; the check wants this user's own)."""
    requests = [
        {"name": "login", "path": "/cookie/set/u${user_id}x"},
        {"name": "me", "path": "/cookie/get", "check": [{"body_contains": "u${user_id}x"}]},
    ]
    phase = {"users": 4, "duration": 1.0, "grace": 1.0, "flow": "sequence", "cookies": True}
    out = run_phase(servers.http.base_url, phase, requests, engine=engine)
    assert_all_recorded(out, users=engine == "fast")
    assert out.checks["me"][0] > 20 and out.checks["me"][1] == 0, out.checks
    assert out.outcomes == {"2xx": out.completed}


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_a_request_that_renders_invalid_is_an_error_and_the_users_go_on(engine: str) -> None:
    """A header template that renders a line break cannot be sent: each such request
    is counted as an error, and the users go on (no hang, nothing sent)."""
    requests = [{"name": "bad", "path": "/health", "headers": {"X-V": "${v}"}}]
    phase = {"users": 4, "duration": 1.0, "grace": 1.0, "think": "10ms"}
    variables = {"v": "a\r\nInjected: 1"}
    with running_target() as target:
        out = run_phase(target.url, phase, requests, engine=engine, variables=variables)
        served = target.counts()["total"]
    assert_all_recorded(out, users=engine == "fast")
    assert served == 0 and set(out.outcomes) == {"error"}
    assert 4 * 1.0 / 0.01 * 0.3 <= out.outcomes["error"] <= 4 * 1.0 / 0.01 + 4


def test_timeouts_are_recorded_and_the_users_go_on() -> None:
    """A timed-out request has no reply: its status check fails, and counts so."""
    with running_target() as target:
        out = run_phase(target.url, {"users": 4, "duration": 1.5, "grace": 1.0}, [
            {"name": "slow", "path": "/delay/400", "timeout": "100ms", "check": [{"status": 200}]}
        ])  # fmt: skip
    assert_all_recorded(out)
    assert set(out.outcomes) == {"timeout"}
    assert 4 * 1.5 / 0.1 * 0.5 <= out.outcomes["timeout"] <= 4 * 1.5 / 0.1 + 4
    assert out.checks["slow"] == [0, out.outcomes["timeout"]]


def test_connection_refused_is_counted_and_the_run_ends_on_time() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    out = run_phase(closed, {"users": 4, "duration": 1.0, "grace": 1.0}, ITEM)
    assert_all_recorded(out)
    assert set(out.outcomes) == {"connect_error"} and out.completed > 10
    assert out.elapsed < 1.0 + 2.0


def run_slow(phase: dict[str, Any], delay_ms: int, **kwargs: Any) -> tuple[Outcome, int]:
    """`run_phase` of one request that the target answers after `delay_ms`; and the
    number of requests the target served."""
    with running_target() as target:
        slow = [{"name": "slow", "path": f"/delay/{delay_ms}"}]
        out = run_phase(target.url, phase, slow, **kwargs)
        return out, target.counts()["total"]


def test_abort_without_drain_cancels_and_records_what_is_in_flight() -> None:
    out, _ = run_slow({"users": 6, "duration": 10, "grace": 1.0}, 3000, abort_after=0.6)
    assert_all_recorded(out)
    assert out.outcomes == {"cancelled": 6}
    assert out.elapsed - out.abort_at < 1.0


def test_abort_with_drain_lets_requests_in_flight_finish() -> None:
    phase = {"users": 6, "duration": 10, "grace": 1.0}
    out, served = run_slow(phase, 500, abort_after=0.7, drain=3.0)
    assert_all_recorded(out)
    # the round in flight at the abort finished (~2 rounds of 6 by then): none cut off
    assert out.outcomes == {"2xx": served} and served >= 6 and served % 6 == 0
    assert out.elapsed - out.abort_at < 1.0


# -- the open model ------------------------------------------------------------------


def test_arrivals_on_callbacks_are_counted_exactly() -> None:
    """400 RPS for 1.5 s: exactly 600 arrivals, each served and recorded once."""
    with running_target("--latency", "20ms") as target:
        out = run_phase(target.url, {"rate": 400, "duration": 1.5}, ITEM, executor="constant-rate")
        served = target.counts()["total"]
    assert_all_recorded(out, users=False)
    assert out.open_seen[0] > 0 and out.open_seen[1] == 0, out.open_seen  # no task per request
    assert sum(out.arrivals.values()) == 600 and out.outcomes == {"2xx": 600} and served == 600


def test_arrivals_in_flight_at_an_abort_are_cancelled_and_recorded() -> None:
    phase = {"rate": 20, "duration": 10}
    out, _ = run_slow(phase, 3000, executor="constant-rate", abort_after=0.6)
    assert_all_recorded(out, users=False)
    assert set(out.outcomes) == {"cancelled"} and out.completed >= 10
    assert out.elapsed - out.abort_at < 1.0


def test_arrivals_in_flight_at_the_end_are_drained() -> None:
    """The phase ends while 500 ms requests are in flight: they finish, none is cut."""
    out, served = run_slow({"rate": 20, "duration": 1.0}, 500, executor="constant-rate")
    assert_all_recorded(out, users=False)
    assert out.outcomes == {"2xx": 20} and served == 20
