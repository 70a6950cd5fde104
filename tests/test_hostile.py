"""Hostile input on the cluster link: the coordinator and the agent must shrug it off.

A real run (`loadctl coordinator` on 127.0.0.1 with one real agent and the demo
target) goes on while this test's own ZeroMQ DEALER sockets throw everything at
the coordinator: random bytes, msgpack of the wrong shape, a 65 MiB frame,
unknown message types, other protocol versions, messages only a coordinator
sends, snapshots for other runs, from unknown agents, malformed, duplicated and
replayed, and a flood of Hellos. The run's counts must stay exact, every kind of
bad frame must be counted in result.json, and the log must stay readable.

The other way round, a fake coordinator (this test's ROUTER) answers a real
agent with garbage: the agent must keep waiting for a real answer and exit with
its documented code (3) and one clear line after --connect-timeout.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from test_liveness import (
    DEADMAN,
    agent_argv,
    constant,
    coordinator_argv,
    counts,
    free_port,
    load_result,
    procs,
    summary,
    wait_for_total,
    write_scenario,
)

from loadctl.protocol.codec import encode
from loadctl.protocol.histogram import Histogram
from loadctl.protocol.histogram_table import to_table
from loadctl.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Heartbeat,
    Hello,
    Plan,
    PlanUpdate,
    Pong,
    Ready,
    Series,
    Share,
    Snapshot,
    Stop,
    Welcome,
)

from target_process import running_target

pytestmark = pytest.mark.slow

OVERSIZE = 65 * 1024 * 1024  # over the 64 MiB MAXMSGSIZE of both ends
HELLO_FLOOD = 3000
RANDOM_FRAMES = 1000


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def dealer(ctx: zmq.Context[Any], endpoint: str, identity: str | None = None) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.IDENTITY, (identity or f"hostile-{uuid.uuid4().hex[:8]}").encode())
    sock.connect(endpoint)
    return sock


def hello(agent_id: str) -> Hello:
    return Hello(PROTOCOL_VERSION, agent_id, "hostile", 1, 1, os.getpid(), "0")


def snapshot(
    run_id: str,
    agent_id: str,
    seq: int,
    interval: int,
    arrivals: int = 7,
    histograms: list[Any] | None = None,
) -> Snapshot:
    h = Histogram()
    if arrivals:
        h.record(1_000_000, count=arrivals)
    series = Series("steady", "item", arrivals, {"2xx": arrivals} if arrivals else {})
    table = histograms if histograms is not None else to_table([h, h, h])
    now = time.time()
    return Snapshot(run_id, agent_id, seq, interval, now, now + 1.0, (series,), table, 0, 0, 0.0, 0)


def frame(*fields: Any) -> bytes:
    data: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return data


def receive(sock: zmq.Socket[Any], timeout: float) -> bytes | None:
    if sock.poll(timeout * 1000):
        data: bytes = sock.recv()
        return data
    return None


def learn_run_id(sock: zmq.Socket[Any], timeout: float = 10.0) -> str:
    """Register like an agent would (Hello) and read the run id from the Welcome."""
    deadline = time.monotonic() + timeout
    identity = sock.getsockopt(zmq.IDENTITY).decode()
    sock.send(encode(hello(identity)))
    while time.monotonic() < deadline:
        data = receive(sock, 0.5)
        if data is None:
            continue
        fields = msgpack.unpackb(data, raw=False)
        if fields[1] == Welcome.TYPE:
            run_id: str = fields[2][0]
            return run_id
    raise AssertionError("the coordinator did not welcome a Hello")


def attack(ctx: zmq.Context[Any], endpoint: str, real_agent: str) -> dict[str, int]:
    """Everything bad at once; returns how many frames of each kind were sent."""
    rng = random.Random(1234)
    sent: dict[str, int] = {}

    def note(kind: str, n: int = 1) -> None:
        sent[kind] = sent.get(kind, 0) + n

    junk = dealer(ctx, endpoint)
    for _ in range(RANDOM_FRAMES):  # random bytes
        junk.send(rng.randbytes(rng.randint(1, 300)))
    note("random", RANDOM_FRAMES)
    shapes = [
        frame(),
        b"\xc0",
        msgpack.packb({"a": 1}),
        msgpack.packb("hello"),
        frame(1, 2),
        frame(1, 2, 3, 4),
        frame(PROTOCOL_VERSION, "1", []),
        frame(PROTOCOL_VERSION, Hello.TYPE, {"protocol": 1}),
        frame(PROTOCOL_VERSION, Hello.TYPE, [1, 2]),
        frame(PROTOCOL_VERSION, Hello.TYPE, ["x"] * 7),
        frame(PROTOCOL_VERSION, Snapshot.TYPE, [None] * 11),
        b"\x91" * 100_000 + b"\xc0",  # nested 100,000 deep
        msgpack.packb([PROTOCOL_VERSION, 1, msgpack.ExtType(5, b"x")]),
        b"\xd6\xff" + b"\x00" * 4,
    ]  # a msgpack timestamp
    for data in shapes:
        junk.send(data)
    note("wrong-shape", len(shapes))
    for type_id in (0, 16, 99, -1, 2**40):  # unknown message types
        junk.send(frame(PROTOCOL_VERSION, type_id, []))
    note("unknown-type", 5)
    valid_hello = encode(hello("nobody"))[2:]  # fields without the version and type
    for version in (0, 2, 99, "1", 1.0, True, None):  # other protocol versions
        junk.send(frame(version, Hello.TYPE, []) + valid_hello[:0])
    note("version", 7)
    for parts in ([b"a", b"b"], [b"", b"", b""]):  # more than one frame
        junk.send_multipart(parts)
    note("frames", 2)
    for message in (
        Welcome("x", 0.5, 3.0),
        Pong(1, 0.0, 0.0),
        Ack("x", (1,)),
        Stop("x", "no"),
        Bye("x"),
        PlanUpdate("x", 1, Share(1, (1,), 0)),
        Plan("x", {}, Share(0, (1,), 0), 0.0, 1.0),
    ):  # only coordinators send
        junk.send(encode(message))
    note("unexpected", 7)
    stranger = dealer(ctx, endpoint)  # snapshots from an agent that never said Hello
    for seq in range(1, 6):
        stranger.send(
            encode(snapshot("whatever", stranger.getsockopt(zmq.IDENTITY).decode(), seq, 2))
        )
    note("unknown-agent", 5)

    # An impostor that registers (plaintext admits anyone's Hello), learns the run id from
    # its Welcome, and sends results for the real run: it has no share, so none may count.
    impostor = dealer(ctx, endpoint, "impostor-1")
    run_id = learn_run_id(impostor)
    one, two = snapshot(run_id, "impostor-1", 1, 2), snapshot(run_id, "impostor-1", 2, 3)
    for message in (one, one, one, two, one, two, one):  # duplicated and replayed seqs
        impostor.send(encode(message))
    note("impostor-snapshots", 7)
    impostor.send(encode(snapshot("another-run", "impostor-1", 3, 2)))
    note("unknown-run")
    impostor.send(encode(snapshot(run_id, real_agent, 4, 2)))  # in the real agent's name
    note("unknown-agent")
    impostor.send(encode(snapshot(run_id, "impostor-1", 5, 2, histograms=["x"])))
    impostor.send(encode(snapshot(run_id, "impostor-1", 6, -5)))
    note("bad-snapshot", 2)

    flood = dealer(ctx, endpoint)  # Hellos claiming random agent ids
    for _ in range(HELLO_FLOOD):
        flood.send(encode(hello(f"flood-{uuid.uuid4().hex}")))
    note("hello-flood", HELLO_FLOOD)

    big = dealer(ctx, endpoint)  # one frame over MAXMSGSIZE: dropped by ZeroMQ itself
    big.send(b"\x00" * OVERSIZE, copy=False)
    note("oversize")
    return sent


def test_coordinator_survives_hostile_frames_and_counts_stay_exact() -> None:
    rate, duration = 100, 8
    with running_target() as target, procs() as group, zmq_context() as ctx:
        path = write_scenario(constant(target.url, rate, duration), group.directory)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out = group.directory / "out"
        coordinator = group.start(
            "coordinator", coordinator_argv(path, 1, endpoint, out, "--wait", "30")
        )
        agent = group.start("agent", agent_argv(endpoint, "--id", "real-agent"))
        try:
            wait_for_total(target.url, rate, 40)  # the run is on
            began = time.monotonic()
            sent = attack(ctx, endpoint, "real-agent")
            attack_seconds = time.monotonic() - began
            # Still answering: a newcomer's Hello gets its Welcome mid-run.
            learn_run_id(dealer(ctx, endpoint, "late-probe"))
            code = coordinator.code_within(60)
            agent_code = agent.code_within(20)
        except BaseException:
            print(group.report())
            raise
        seen = counts(target.url)["total"]
        stderr = coordinator.stderr()
        context = group.report()
        result = load_result(out, group.report())
    rejected = result["rejected_frames"]
    drop_lines = [line for line in stderr.splitlines() if "dropped a frame" in line]
    by_id = {a["id"]: a for a in result["agents"]}
    impostor = by_id.get("impostor-1", {})
    summary(
        "hostile coordinator",
        attack_s=attack_seconds,
        frames_sent=sum(sent.values()),
        rejected=rejected,
        drop_log_lines=len(drop_lines),
        stderr_lines=len(stderr.splitlines()),
        target_count=seen,
        result_requests=result["totals"]["requests"],
        impostor_requests_merged=impostor.get("requests"),
    )
    assert code == 0, context
    assert agent_code == 0, context
    assert "Traceback" not in stderr, context
    problems = []
    for kind in (
        "MalformedFrame",
        "InvalidMessage",
        "UnknownMessageType",
        "version",
        "frames",
        "identity",
        "unknown-agent",
        # The impostor has no share in the run, so all of its snapshots — for another run,
        # malformed, or well-formed — are refused by that first check.
        "unplanned-agent",
        "unexpected",
    ):
        if not rejected.get(kind):
            problems.append(f"no {kind!r} in rejected_frames")
    if rejected.get("identity", 0) < HELLO_FLOOD:
        problems.append(f"{rejected.get('identity', 0)} of {HELLO_FLOOD} flooded Hellos counted")
    if len(drop_lines) >= 100:
        problems.append(f"{len(drop_lines)} log lines about dropped frames (not rate-limited)")
    if len(stderr.splitlines()) >= 200:
        problems.append(f"{len(stderr.splitlines())} lines on stderr")
    # The run's own counts: the schedule, the report and the target agree exactly; the
    # impostor's snapshots (no share, duplicated, replayed) count for nothing.
    totals = result["totals"]
    if impostor.get("requests"):
        problems.append(
            f"snapshots of an agent without a share were merged: impostor-1 "
            f"reported {impostor['requests']} requests"
        )
    if not totals["arrivals"] == totals["requests"] == seen == rate * duration:
        problems.append(
            f"counts disagree: schedule {rate * duration}, target {seen}, result "
            f"arrivals {totals['arrivals']}, requests {totals['requests']}"
        )
    per_agent = sum(a["requests"] for a in result["agents"])
    if per_agent != totals["requests"]:
        problems.append(
            f"per-agent requests add up to {per_agent}, the totals say "
            f"{totals['requests']} (duplicated snapshots counted per agent)"
        )
    planned = [a["id"] for a in result["agents"] if a["planned"]]
    if planned != ["real-agent"]:
        problems.append(f"planned agents {planned}")
    assert not problems, "\n".join(problems) + f"\nrejected_frames: {rejected}"


# -- a fake coordinator against a real agent -------------------------------------------------
def _fake_coordinator(
    respond: Any, connect_timeout: float = 5.0
) -> tuple[int | None, str, float, int]:
    """Bind a ROUTER, start a real agent against it, answer each of its frames with
    `respond(identity)` (a list of frames to send); return (exit code, stderr, seconds,
    frames sent)."""
    with procs() as group, zmq_context() as ctx:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
        started = time.monotonic()
        agent = group.start(
            "agent",
            agent_argv(endpoint, "--id", "victim", "--connect-timeout", f"{connect_timeout:g}"),
        )
        sent = 0
        deadline = time.monotonic() + connect_timeout + 7
        while agent.poll() is None and time.monotonic() < deadline:
            if not router.poll(100):
                continue
            identity, *_ = router.recv_multipart()
            for data in respond(identity):
                with contextlib.suppress(zmq.Again):
                    router.send_multipart([identity, data], flags=zmq.NOBLOCK)
                    sent += 1
        code = agent.code_within(2)
        elapsed = time.monotonic() - started
        router.close(0)
        return code, agent.stderr(), elapsed, sent


def _check_agent_outcome(
    code: int | None, stderr: str, elapsed: float, endpoint_hint: str, timeout: float
) -> None:
    assert code == 3, f"agent exit {code}, expected 3 (coordinator unreachable):\n{stderr}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and endpoint_hint in errors[0], stderr
    assert elapsed >= timeout, f"the agent gave up after {elapsed:.1f} s, before its timeout"


def test_agent_survives_a_fake_coordinator_sending_garbage() -> None:
    """Random bytes, msgpack of the wrong shape, unknown types, bad fields, extension
    types: the agent drops them (a few log lines), keeps waiting for a Welcome and exits 3
    with one clear line after --connect-timeout."""
    rng = random.Random(99)

    def garbage(identity: bytes) -> list[bytes]:
        out = [rng.randbytes(rng.randint(1, 300)) for _ in range(200)]
        out += [
            frame(),
            msgpack.packb({"a": 1}),
            frame(1, 2),
            b"\x91" * 100_000 + b"\xc0",
            frame(PROTOCOL_VERSION, 99, []),
            frame(PROTOCOL_VERSION, "x", []),
            frame(PROTOCOL_VERSION, Welcome.TYPE, [1, 2, 3]),
            frame(PROTOCOL_VERSION, Welcome.TYPE, {"coordinator": "x"}),
            msgpack.packb([PROTOCOL_VERSION, 1, msgpack.ExtType(3, b"")]),
        ]
        return out

    code, stderr, elapsed, sent = _fake_coordinator(garbage)
    summary(
        "hostile fake coordinator (garbage)",
        agent_exit=code,
        seconds=elapsed,
        frames_sent=sent,
        stderr_lines=len(stderr.splitlines()),
    )
    _check_agent_outcome(code, stderr, elapsed, "tcp://127.0.0.1:", 5.0)
    assert len(stderr.splitlines()) < 50, stderr


def test_agent_survives_an_oversize_frame_before_its_welcome() -> None:
    """A 65 MiB frame makes the agent's ZeroMQ drop the connection (MAXMSGSIZE): the agent
    must still give up after --connect-timeout with exit 3 and one clear line."""
    sent_big = False

    def oversize(identity: bytes) -> list[bytes]:
        nonlocal sent_big
        if sent_big:
            return []
        sent_big = True
        return [b"\x00" * OVERSIZE]

    code, stderr, elapsed, sent = _fake_coordinator(oversize)
    summary(
        "hostile fake coordinator (oversize)", agent_exit=code, seconds=elapsed, frames_sent=sent
    )
    _check_agent_outcome(code, stderr, elapsed, "tcp://127.0.0.1:", 5.0)


def test_agent_survives_valid_messages_out_of_order() -> None:
    """Messages of the protocol that make no sense before a Welcome (a Plan, a plan update,
    a stop, acks and pongs nobody asked for) are ignored, not a crash."""
    share = Share(0, (1,), 0)
    scenario = {
        "target": "http://127.0.0.1:9",
        "requests": [{"path": "/"}],
        "phases": [{"executor": "constant-rate", "rate": 1, "duration": 1}],
    }

    def out_of_order(identity: bytes) -> list[bytes]:
        return [
            encode(m)
            for m in (
                Ack("r", (1, 2, 3)),
                Pong(77, 0.0, time.time()),
                Heartbeat("running", 0, 0, 0, 0),
                PlanUpdate("r", 3, share),
                Stop("r", "stop"),
                Ready(0.0, 0.0),
                Plan("r", scenario, share, time.time() + 3600, 1.0),
            )
        ]

    code, stderr, elapsed, sent = _fake_coordinator(out_of_order)
    summary(
        "hostile fake coordinator (out of order)",
        agent_exit=code,
        seconds=elapsed,
        frames_sent=sent,
    )
    _check_agent_outcome(code, stderr, elapsed, "tcp://127.0.0.1:", 5.0)


def test_agent_dead_man_switch_holds_when_a_protocol_error_kills_its_link() -> None:
    """A fake coordinator admits a real agent, gives it a plan (100 RPS for 30 s against the
    demo target), then sends one 65 MiB frame and falls silent. ZeroMQ drops the agent's
    connection for the oversize frame; whatever happens to the link, 3 s without a word
    from the coordinator must stop all load."""
    from loadctl.protocol.codec import ProtocolError, decode
    from loadctl.protocol.messages import Ping
    from loadctl.protocol.scenario import Scenario

    rate = 100
    with running_target() as target, procs() as group, zmq_context() as ctx:
        wire = Scenario.from_dict(constant(target.url, rate, 30)).wire()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 0)
        endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
        agent = group.start("agent", agent_argv(endpoint, "--id", "victim"))
        run_id, identity = "fake-run", b""
        last_beat, killed_at = 0.0, 0.0
        deadline = time.monotonic() + 40
        try:
            while time.monotonic() < deadline and agent.poll() is None:
                if killed_at and time.time() > killed_at + DEADMAN + 2.5:
                    break
                if router.poll(50):
                    identity, data = router.recv_multipart()
                    if killed_at:
                        continue  # silent from now on
                    try:
                        message = decode(data)
                    except ProtocolError:
                        continue
                    reply: list[Any] = []
                    if isinstance(message, Hello):
                        reply = [Welcome(run_id, 0.5, DEADMAN)]
                    elif isinstance(message, Ping):
                        reply = [Pong(message.seq, message.sent, time.time())]
                    elif isinstance(message, Ready):
                        reply = [Plan(run_id, wire, Share(0, (1,), 0), time.time() + 0.5, 1.0)]
                    elif isinstance(message, Snapshot):
                        reply = [Ack(run_id, (message.seq,))]
                    for m in reply:
                        router.send_multipart([identity, encode(m)])
                if identity and not killed_at and time.monotonic() - last_beat >= 0.5:
                    last_beat = time.monotonic()
                    router.send_multipart(
                        [identity, encode(Heartbeat("running", 0.0, 0, 0, time.time()))]
                    )
                if not killed_at and counts(target.url)["total"] >= rate * 2:
                    killed_at = time.time()
                    router.send_multipart([identity, b"\x00" * OVERSIZE], copy=False)
            assert killed_at, f"the agent never ran the plan\n{group.report()}"
            first = counts(target.url)
            time.sleep(1.0)
            later = counts(target.url)
        except BaseException:
            print(group.report())
            raise
        finally:
            router.close(0)
        stopped_after = first["last_ts"] - killed_at
        summary(
            "hostile protocol error mid-run",
            last_request_after_silence_s=stopped_after,
            requests_after=first["total"] - rate * 2,
            still_sending=later["total"] > first["total"],
        )
        context = group.report()
        assert later["total"] == first["total"], (
            f"the agent kept sending load {time.time() - killed_at:.1f} s after its "
            f"coordinator fell silent ({first['total']} -> {later['total']})\n{context}"
        )
        assert stopped_after <= DEADMAN + 0.5, context
