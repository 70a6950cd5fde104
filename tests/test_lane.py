"""The fast engine's compiled lane (agent/_lane.c) in the agent's real Runner.

A users phase of one static request with no think time and nothing to check runs
on the lane: the connection frames each reply, records it and writes the next
request in C. These tests run such phases against a scripted HTTP server (real
sockets, in a thread) whose replies take the lane, leave it (chunked, split
heads, Connection: close, bytes past the reply) or break it (a stall, a dropped
connection), and check what the lane must keep: every request the server saw is
recorded once, with its outcome; each interval's latency histogram holds one
value per reply; the lane really carried the load when it could and stayed out
when it could not; and a stop, an abort or the dead-man switch stops it at once,
not at the end of the interval.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import uvloop
from http_servers import BackgroundLoop, make_cert, read_requests
from table_kernel_required import lane_or_skip

from loadctl.agent._lane import Lane
from loadctl.agent.runner import Runner
from loadctl.protocol.clock import ClockEstimate
from loadctl.protocol.messages import Plan, Series, Share
from loadctl.protocol.scenario import Scenario

pytestmark = pytest.mark.slow

BODY = b"hello"
PLAIN = b"HTTP/1.1 200 OK\r\nServer: test\r\nContent-Length: 5\r\n\r\n" + BODY


@dataclass
class Script:
    """How the server answers a path: the parts of the reply, written with a pause
    between them; whether it then closes; or, from the connection's `drop_at`-th
    request on, no reply (`stall`) or the connection closed (not `stall`)."""

    parts: tuple[bytes, ...]
    close: bool = False
    drop_at: int = 0
    stall: bool = False


SCRIPTS = {
    "/plain": Script((PLAIN,)),
    "/busy": Script((b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",)),
    "/body-later": Script((PLAIN[:-3], PLAIN[-3:])),
    "/head-split": Script((PLAIN[:20], PLAIN[20:])),
    "/chunked": Script(
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",)
    ),
    "/close": Script(
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n" + BODY,), close=True
    ),
    "/extra": Script((PLAIN + b"XX",)),
    "/stall-third": Script((PLAIN,), drop_at=3, stall=True),
    "/drop-third": Script((PLAIN,), drop_at=3),
}


@dataclass
class Server:
    port: int
    tls_port: int = 0  # the same server over TLS (0: no openssl to make a certificate)
    ca: str = ""  # its certificate
    seen: list[float] = field(default_factory=list)  # perf_counter of each request
    paths: Counter[str] = field(default_factory=Counter)  # requests by path
    unanswered: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lane_or_skip()
    cert = make_cert(tmp_path_factory.mktemp("tls"))
    found = Server(0)

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            async for path, _ in read_requests(reader):
                found.seen.append(time.perf_counter())
                found.paths[path] += 1
                script = SCRIPTS[path.partition("?")[0]]
                served += 1
                if script.drop_at and served >= script.drop_at:
                    found.unanswered[path] += 1
                    if script.stall:
                        await reader.read()  # until the client gives up
                    return
                for i, part in enumerate(script.parts):
                    if i:
                        await asyncio.sleep(0.002)  # a read of its own
                    writer.write(part)
                    await writer.drain()
                if script.close:
                    return
        finally:
            writer.close()

    async def start() -> list[asyncio.Server]:
        listeners = [await asyncio.start_server(conn, "127.0.0.1", 0)]
        found.port = listeners[0].sockets[0].getsockname()[1]
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*cert)
            listeners.append(await asyncio.start_server(conn, "127.0.0.1", 0, ssl=context))
            found.tls_port = listeners[1].sockets[0].getsockname()[1]
            found.ca = cert[0]
        return listeners

    async def stop() -> None:
        for listener in listeners:
            listener.close()

    background = BackgroundLoop()
    listeners = background.call(start())
    yield found
    background.call(stop())
    background.close()


@dataclass
class Run:
    arrivals: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_name: Counter[tuple[str, str]] = field(default_factory=Counter)  # (name, outcome)
    latencies: int = 0  # values in the latency histograms
    timed: int = 0  # replies with a status (what the latency histograms must hold)
    checks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (name, passed|failed)
    lanes: set[Lane] = field(default_factory=set)
    in_flight: int = -1
    t0: float = 0.0  # the run's time zero (perf_counter)
    aborted_at: float = 0.0
    seen: list[float] = field(default_factory=list)  # the server's requests, this run
    paths: Counter[str] = field(default_factory=Counter)  # and by path
    unanswered: Counter[str] = field(default_factory=Counter)  # by path

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def lane_sends(self) -> int:
        return sum(lane.sends for lane in self.lanes)


def run(
    server: Server,
    path: str | list[dict[str, Any]],
    *,
    flow: str = "mix",
    users: int = 4,
    duration: float = 1.0,
    interval: float = 0.5,
    timeout: float = 5.0,
    abort_after: float | None = None,
    drain: float = 0.0,
    dead_at: float | None = None,
    tls: bool = False,
) -> Run:
    """A constant-users phase of GET `path` on the fast engine, run by the agent's
    Runner in this process. `abort_after`: the runner aborts then, letting requests
    in flight finish for `drain` seconds;
    `dead_at`: the dead-man switch trips then (seconds from time zero)."""
    scenario = Scenario.from_dict(
        {
            "name": "lane",
            "target": f"https://127.0.0.1:{server.tls_port}"
            if tls
            else f"http://127.0.0.1:{server.port}",
            "defaults": {
                "engine": "fast",
                "connections": users,
                "timeout": timeout,
                "interval": interval,
            },
            "requests": [{"name": "r", "path": path}] if isinstance(path, str) else path,
            "phases": [
                {"name": "p", "executor": "constant-users", "users": users,
                 "duration": duration, "grace": 1.0, "flow": flow}
            ],
        }
    )  # fmt: skip
    out = Run()
    before = len(server.seen)
    paths_before = server.paths.copy()
    unanswered_before = server.unanswered.copy()

    async def sink(
        index: int, start: float, end: float, series: tuple[Series, ...], table: list[Any]
    ) -> None:
        counts = np.frombuffer(table[2], dtype="<i8").reshape(-1, 4)[:, 0]
        for i, s in enumerate(series):
            out.arrivals += s.arrivals
            out.outcomes.update(s.outcomes)
            out.by_name.update({(s.name, o): n for o, n in s.outcomes.items()})
            out.timed += sum(n for o, n in s.outcomes.items() if o.endswith("xx"))
            checks = {(s.name, "passed"): s.checks_passed, (s.name, "failed"): s.checks_failed}
            out.checks.update({k: n for k, n in checks.items() if n})
            out.latencies += int(counts[3 * i])  # latency, service, send lag per series

    async def main() -> None:
        plan = Plan("lane", scenario.wire(), Share(0.0, (1,), 0), time.time(), interval)
        runner = Runner(plan, ClockEstimate(0.0, 0.0, 1), sink)
        out.t0 = runner.t0
        if dead_at is not None:
            dead = runner.t0 + dead_at
            runner.may_send = lambda: time.perf_counter() <= dead
            runner.send_until = lambda: dead

        async def watch() -> None:
            while not out.lanes:
                out.lanes |= runner.recorder.lanes
                await asyncio.sleep(0.01)
            if abort_after is not None:
                await asyncio.sleep(max(0.0, runner.t0 + abort_after - time.perf_counter()))
                out.aborted_at = time.perf_counter()
                runner.abort(drain)

        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(runner.run(), 30)
        out.in_flight = runner.sender.in_flight
        watcher.cancel()

    uvloop.run(main())
    time.sleep(0.05)  # the server's last requests
    out.seen = server.seen[before:]
    out.paths = server.paths - paths_before
    out.unanswered = server.unanswered - unanswered_before
    return out


def assert_recorded_once(out: Run) -> None:
    """Every request sent was recorded once, and every reply has one latency."""
    assert out.arrivals == out.completed, (out.arrivals, out.outcomes)
    assert out.in_flight == 0
    assert out.latencies == out.timed, (out.latencies, out.outcomes)


def test_the_lane_carries_a_plain_closed_loop_and_counts_it_exactly(server: Server) -> None:
    out = run(server, "/plain")
    assert_recorded_once(out)
    assert out.outcomes == {"2xx": len(out.seen)} and len(out.seen) > 200
    assert len(out.lanes) == 4
    # the lane sends all but the first request of each interval and user
    assert out.lane_sends >= 0.9 * len(out.seen), (out.lane_sends, len(out.seen))


def test_the_lane_runs_over_tls(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    if not server.tls_port:
        pytest.skip("no openssl to make a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", server.ca)  # the default context trusts it
    out = run(server, "/plain", tls=True)
    assert_recorded_once(out)
    assert out.outcomes == {"2xx": len(out.seen)} and len(out.seen) > 100
    assert out.lane_sends >= 0.9 * len(out.seen)


def test_error_statuses_are_counted_by_class(server: Server) -> None:
    out = run(server, "/busy")
    assert_recorded_once(out)
    assert out.outcomes == {"5xx": len(out.seen)} and len(out.seen) > 200
    assert out.lane_sends >= 0.9 * len(out.seen)


def test_a_body_in_a_later_read_is_waited_for(server: Server) -> None:
    out = run(server, "/body-later")
    assert_recorded_once(out)
    assert out.outcomes == {"2xx": len(out.seen)} and len(out.seen) > 50
    assert out.lane_sends >= 0.9 * len(out.seen)


def test_a_sequence_runs_on_the_lane_each_step_its_own_series(server: Server) -> None:
    steps = [{"name": "ok", "path": "/plain"}, {"name": "busy", "path": "/busy"}]
    out = run(server, steps, flow="sequence")
    assert_recorded_once(out)
    assert out.by_name == {("ok", "2xx"): out.paths["/plain"], ("busy", "5xx"): out.paths["/busy"]}
    # each iteration sends both in turn: the counts differ by the users at most
    assert 0 <= out.paths["/plain"] - out.paths["/busy"] <= 4 and out.paths["/busy"] > 100
    assert out.lane_sends >= 0.9 * len(out.seen)


def test_a_weighted_mix_runs_on_the_lane_in_its_proportions(server: Server) -> None:
    mix = [
        {"name": "ok", "path": "/plain", "weight": 3},
        {"name": "busy", "path": "/busy", "weight": 1},
    ]
    out = run(server, mix)
    assert_recorded_once(out)
    assert out.by_name == {("ok", "2xx"): out.paths["/plain"], ("busy", "5xx"): out.paths["/busy"]}
    total = len(out.seen)
    assert total > 400 and abs(out.paths["/plain"] / total - 0.75) < 0.02, out.paths
    assert out.lane_sends >= 0.9 * total


def test_a_step_of_the_users_own_with_status_checks_runs_on_the_lane(server: Server) -> None:
    """`?u=${user_id}` renders the same for all of a user's requests (it is rendered
    once, when the user starts) and a status check needs no more than the status:
    the lane carries the step, each user's requests carry its own id, and each
    reply's two checks count as passed."""
    check = [{"status": 200}, {"status": "2xx"}]
    out = run(server, [{"name": "ok", "path": "/plain?u=${user_id}", "check": check}])
    assert_recorded_once(out)
    assert set(out.paths) == {f"/plain?u={u}" for u in range(4)}
    assert out.outcomes == {"2xx": len(out.seen)} and len(out.seen) > 200
    assert out.checks == {("ok", "passed"): 2 * len(out.seen)}
    assert out.lane_sends >= 0.9 * len(out.seen)


def test_a_status_its_check_refuses_goes_back_to_the_user_and_counts_failed(
    server: Server,
) -> None:
    """A sequence whose second step gets a 503 where its check wants a 200: the lane
    sends it, then hands its reply to the user, which counts the failure and sends
    the next iteration's first step; the lane sends that one's successor again."""
    steps = [
        {"name": "ok", "path": "/plain", "check": [{"status": 200}]},
        {"name": "busy", "path": "/busy?u=${user_id}", "check": [{"status": 200}]},
    ]
    out = run(server, steps, flow="sequence")
    assert_recorded_once(out)
    busy = sum(n for path, n in out.paths.items() if path.startswith("/busy?u="))
    assert out.by_name == {("ok", "2xx"): out.paths["/plain"], ("busy", "5xx"): busy}
    assert out.checks == {("ok", "passed"): out.paths["/plain"], ("busy", "failed"): busy}
    assert busy > 100 and 0.45 * len(out.seen) <= out.lane_sends <= 0.55 * len(out.seen)


def test_latency_checks_run_on_the_lane_and_a_slow_reply_fails_in_python(
    server: Server,
) -> None:
    """`latency_under`: replies within it pass on the lane; a reply whose body comes
    2 ms after its head cannot be under 1 ms, so the lane hands each one back and the
    user counts it failed."""
    quick = run(server, [{"name": "q", "path": "/plain", "check": [{"latency_under": "1s"}]}])
    assert_recorded_once(quick)
    assert quick.checks == {("q", "passed"): len(quick.seen)} and len(quick.seen) > 200
    assert quick.lane_sends >= 0.9 * len(quick.seen)
    slow_step = {"name": "s", "path": "/body-later", "check": [{"latency_under": "1ms"}]}
    slow = run(server, [slow_step])
    assert_recorded_once(slow)
    assert slow.checks == {("s", "failed"): len(slow.seen)} and len(slow.seen) > 50
    assert slow.lane_sends == 0


@pytest.mark.parametrize("path", ["/chunked", "/close", "/extra"])
def test_replies_the_lane_does_not_take_go_the_python_way(server: Server, path: str) -> None:
    """Chunked bodies (llhttp frames them), and replies after which the connection
    must not carry another request: the lane sends none of their successors."""
    out = run(server, path)
    assert_recorded_once(out)
    assert out.outcomes == {"2xx": len(out.seen)} and len(out.seen) > 50
    assert out.lane_sends == 0


def test_a_head_split_over_two_reads_goes_to_llhttp(server: Server) -> None:
    out = run(server, "/head-split")
    assert_recorded_once(out)
    assert out.outcomes == {"2xx": len(out.seen)} and len(out.seen) > 50


def test_a_stall_times_out_and_the_user_goes_on(server: Server) -> None:
    """The third request of each connection gets no reply: the client's sweep fails
    it (the lane sent it) and the user goes on, on a new connection."""
    out = run(server, "/stall-third", users=2, timeout=0.2, duration=1.2)
    assert_recorded_once(out)
    stalls, replies = out.outcomes["timeout"], out.outcomes["2xx"]
    assert set(out.outcomes) == {"2xx", "timeout"} and stalls >= 4
    assert out.unanswered["/stall-third"] == stalls
    assert len(out.seen) == replies + stalls
    # two replies per connection before its stall; the last connections may not reach it
    assert 2 * stalls <= replies <= 2 * stalls + 2 * 2


def test_a_dropped_connection_is_resent_once(server: Server) -> None:
    """The server closes the connection at its third request, which the lane sent:
    an idempotent request on a kept-alive connection is resent on a new one."""
    out = run(server, "/drop-third", users=2)
    assert_recorded_once(out)
    drops = out.unanswered["/drop-third"]
    assert drops >= 10 and out.outcomes == {"2xx": len(out.seen) - drops}
    # Three requests per connection (two replies, then the drop), but for the two
    # connections open at the end, which served up to two each without their drop:
    # `seen // 3 == drops` held only while those two had served three or fewer.
    assert 0 <= len(out.seen) - 3 * drops <= 2 * 2


def test_users_stop_when_the_phase_ends_not_at_the_interval_end(server: Server) -> None:
    """The phase ends at 0.5 s, its interval at 1 s: the users' lanes stop with them."""
    out = run(server, "/plain", duration=0.5, interval=1.0)
    assert_recorded_once(out)
    assert out.outcomes == {"2xx": len(out.seen)}
    last = max(out.seen) - out.t0
    assert 0.45 < last < 0.8, last


@pytest.mark.parametrize("drain", [0.0, 2.0])
def test_an_abort_stops_the_lanes_at_once(server: Server, drain: float) -> None:
    """Without a drain the users are cancelled; with one they finish their request
    and end: either way no request is sent after the abort."""
    out = run(server, "/plain", duration=3.0, interval=2.0, abort_after=0.6, drain=drain)
    assert_recorded_once(out)
    assert set(out.outcomes) <= {"2xx", "cancelled"}
    assert out.outcomes["2xx"] == len(out.seen) - out.outcomes["cancelled"]
    # the server's thread may read a request sent just before the abort a little later;
    # a lane that went on would send for another second and more
    late = [t - out.aborted_at for t in out.seen if t > out.aborted_at + 0.1]
    assert not late, late


def test_the_dead_man_switch_stops_the_lanes_at_its_time(server: Server) -> None:
    """Nothing heard from the coordinator: sending stops at the switch's time, which
    the lanes are given, though their interval runs on to 2 s."""
    out = run(server, "/plain", duration=3.0, interval=2.0, dead_at=0.5)
    assert_recorded_once(out)
    last = max(out.seen) - out.t0
    assert 0.4 < last < 0.5 + 0.1, last  # a lane that went on: ~2 s
    assert out.outcomes["2xx"] == len(out.seen) - out.outcomes["cancelled"]
