"""The simulated agents of bench/coordinator_scale.py, in their own processes.

Each process holds many DEALER sockets, one per simulated agent, and does on the
wire what a real agent does: Hello until Welcome, five Ping/Pong rounds, Ready, a
heartbeat after each half second of sending nothing; it takes its Plan, sends
Started, then at every interval's end a snapshot of 10 request names (three
histograms each, recorded from log-normal latencies of 200 to 3,000 requests per
name per second: ~700 non-empty slots, ~50 KiB frames), resends what is not acked
after RESEND_AFTER (as agent/link.py does), and Done at the end. Snapshot frames
are precomputed (`SnapshotFrames`) and only their seq / interval / times are
patched, checked byte for byte against the real codec.

The spawning process puts the tree it measures on sys.path first; spawned
processes inherit that path, so they import the same code.
"""

from __future__ import annotations

import heapq
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from loadctl.agent.link import RESEND_AFTER, RESEND_MAX  # agents resend as these do

INTERVAL = 1.0
NAMES = tuple(f"req-{i:02d}" for i in range(10))
PHASE = "steady"
VARIANTS = 4  # distinct precomputed snapshot bodies per agent process
HEARTBEAT = 0.5  # the coordinator's Welcome says so too; real agents beat at this rate


def raise_nofile() -> None:
    """Up to the hard limit: a thousand sockets need more descriptors than the default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_series_variant(rng: np.random.Generator) -> tuple[list[Any], list[Any]]:
    """One interval's 10 series as Series objects and the table of their histograms:
    realistic histogram densities."""
    from loadctl.protocol.histogram import Histogram
    from loadctl.protocol.histogram_table import to_table
    from loadctl.protocol.messages import Series

    series = []
    histograms = []
    for name in NAMES:
        n = int(np.exp(rng.uniform(np.log(200), np.log(3000))))  # 200..3,000 per name per s
        latency = rng.lognormal(np.log(rng.uniform(5e6, 50e6)), 0.6, n)  # ns
        service = latency * rng.uniform(0.7, 1.0, n)
        send_lag = rng.lognormal(np.log(300e3), 0.8, n)
        for values in (latency, service, send_lag):
            h = Histogram()
            h.record_many(values)
            histograms.append(h)
        series.append(Series(PHASE, name, n, {"2xx": n}, bytes_in=n * 512))
    return series, to_table(histograms)


@dataclass
class SimAgent:
    index: int
    agent_id: str
    socket: Any
    state: str = "hello"  # hello | ping | ready | running | done | bye
    next_hello: float = 0.0
    ping_seq: int = 0
    ping_deadline: float = 0.0
    samples: list[Any] = field(default_factory=list)
    offset: float = 0.0
    seq: int = 0
    outbox: dict[int, tuple[float, bytes]] = field(default_factory=dict)  # seq -> (due, frame)
    waits: dict[int, float] = field(default_factory=dict)  # seq -> its last resend wait
    id_packed: bytes = b""
    last_sent: float = 0.0  # a heartbeat goes only after HEARTBEAT s of sending nothing


class SnapshotFrames:
    """Snapshot frames from precomputed series bytes: msgpack arrays concatenate, so a
    frame is a fixed header, the patched scalar fields, and the series blob."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.variants: list[tuple[bytes, int]] = []  # (packed series, requests)
        self.slots: list[int] = []
        self.sizes: list[int] = []
        self.packer = msgpack.Packer(use_bin_type=True)
        from loadctl.protocol.messages import PROTOCOL_VERSION, Snapshot

        # [version, type (Snapshot), [12 fields]]: a fixarray of 3, then one of 12
        self.header = b"\x93" + self.packer.pack(PROTOCOL_VERSION) + self.packer.pack(Snapshot.TYPE)
        self.header += b"\x9c"
        for _ in range(VARIANTS):
            series, table = make_series_variant(rng)
            blob = self.packer.pack(
                [
                    [
                        s.phase,
                        s.name,
                        s.arrivals,
                        s.outcomes,
                        s.bytes_in,
                        s.checks_passed,
                        s.checks_failed,
                    ]
                    for s in series
                ]
            )
            blob += self.packer.pack(table)
            self.variants.append((blob, sum(s.arrivals for s in series)))
            ns = np.frombuffer(table[1], dtype="<u2")
            self.slots.extend(int(n) for n in ns[::3])  # the latency histograms' slots
            self._series, self._table = series, table
        self._check(rng)

    def frame(
        self, run_id: bytes, agent: bytes, seq: int, interval: int, start: float, variant: int
    ) -> tuple[bytes, int]:
        blob, requests = self.variants[variant % VARIANTS]
        p = self.packer.pack
        frame = b"".join(
            (
                self.header,
                run_id,
                agent,
                p(seq),
                p(interval),
                p(start),
                p(start + INTERVAL),
                blob,
                p(50),  # active users
                p(20),  # in flight
                p(35.0),  # cpu %
                p(80_000_000),  # rss
            )
        )
        return frame, requests

    def _check(self, rng: np.random.Generator) -> None:
        """The patched frame must be exactly what the real codec encodes."""
        from loadctl.protocol.codec import decode, encode
        from loadctl.protocol.messages import Snapshot

        start = 1.7e9 + 0.25
        ours, _ = self.frame(
            self.packer.pack("run"), self.packer.pack("a-1"), 7, 3, start, VARIANTS - 1
        )
        real = Snapshot(
            "run",
            "a-1",
            7,
            3,
            start,
            start + INTERVAL,
            tuple(self._series),
            self._table,
            50,
            20,
            35.0,
            80_000_000,
        )
        assert ours == encode(real), "patched snapshot frame differs from the codec's"
        assert decode(ours) == real
        self.sizes.append(len(ours))


def agents_main(endpoint: str, ids: list[str], seed: int, out: Any) -> None:
    """One process of simulated agents: plain (blocking) zmq, one poller."""
    import zmq

    from loadctl.protocol.clock import ClockSample, estimate
    from loadctl.protocol.codec import ProtocolError, decode, encode
    from loadctl.protocol.messages import (
        PROTOCOL_VERSION,
        Ack,
        Bye,
        Done,
        Heartbeat,
        Hello,
        Ping,
        Plan,
        Pong,
        Ready,
        Started,
        Welcome,
    )

    raise_nofile()
    # The simulation is the load, the coordinator the system under test: on a small
    # shared machine the coordinator gets the CPU first (late heartbeats are reported).
    os.nice(5)
    frames = SnapshotFrames(np.random.default_rng(seed))
    ctx = zmq.Context()
    poller = zmq.Poller()
    agents: list[SimAgent] = []
    by_socket: dict[Any, SimAgent] = {}
    for i, agent_id in enumerate(ids):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, agent_id.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 10000)
        s.setsockopt(zmq.RCVHWM, 10000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        s.connect(endpoint)
        a = SimAgent(i, agent_id, s, id_packed=frames.packer.pack(agent_id))
        agents.append(a)
        by_socket[s] = a
        poller.register(s, zmq.POLLIN)

    run_id = ""
    run_id_packed = b""
    start_at = 0.0  # coordinator clock
    intervals = 0
    next_cut = 0
    beats: list[tuple[float, int]] = []  # heap of (due, agent index)
    sent: list[tuple[str, int, float]] = []  # (agent, seq, sent at)
    requests_sent = 0
    resends = 0
    bad = 0
    hello_at = time.time()
    done_at = 0.0
    late = 0.0  # the most a heartbeat was sent after its time

    def hello(a: SimAgent) -> None:
        a.socket.send(
            encode(Hello(PROTOCOL_VERSION, a.agent_id, "sim", 2, 1, os.getpid(), "bench")),
            zmq.NOBLOCK,
        )
        a.next_hello = time.time() + 1.0

    def ping(a: SimAgent) -> None:
        a.socket.send(encode(Ping(a.ping_seq, time.time())), zmq.NOBLOCK)
        a.ping_deadline = time.time() + 2.0

    def next_ping(a: SimAgent) -> None:
        a.ping_seq += 1
        if a.ping_seq < 5:
            ping(a)
            return
        clock = estimate(a.samples) if a.samples else None
        a.offset = clock.offset if clock else 0.0
        a.socket.send(encode(Ready(a.offset, clock.rtt if clock else 0.0)), zmq.NOBLOCK)
        a.state = "ready"
        # from Ready on, a real agent beats every HEARTBEAT s (spread: they start apart)
        heapq.heappush(beats, (time.time() + HEARTBEAT * a.index / len(agents), a.index))

    for a in agents:
        hello(a)
    deadline = time.time() + 300.0
    while time.time() < deadline:
        now = time.time()
        if all(a.state == "bye" for a in agents):
            break
        if done_at and now > done_at + 15.0:  # agents the coordinator lost get no Bye
            break
        timeout = 0.05
        if run_id and next_cut < intervals:
            due = start_at - agents[0].offset + (next_cut + 1) * INTERVAL
            timeout = min(timeout, max(0.0, due - now))
        if beats:
            timeout = min(timeout, max(0.0, beats[0][0] - now))
        for s, _ in poller.poll(timeout * 1000):
            a = by_socket[s]
            while True:
                try:
                    data = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    message = decode(data)
                except ProtocolError:
                    bad += 1
                    continue
                kind = type(message)
                if kind is Ack:
                    for seq in message.seqs:
                        a.outbox.pop(seq, None)
                        a.waits.pop(seq, None)
                elif kind is Heartbeat:
                    pass
                elif kind is Welcome and a.state == "hello":
                    a.state = "ping"
                    ping(a)
                elif kind is Pong and a.state == "ping":
                    if message.seq == a.ping_seq:
                        received = time.time()
                        a.samples.append(
                            ClockSample(message.sent, message.coordinator_time, received)
                        )
                        next_ping(a)
                elif kind is Plan:
                    if not run_id:
                        run_id = message.run_id
                        run_id_packed = frames.packer.pack(run_id)
                        start_at = message.start_at
                        phases = message.scenario["source"]["phases"]
                        intervals = round(float(phases[0]["duration"]) / INTERVAL)
                    a.state = "running"
                    a.socket.send(encode(Started(run_id, start_at, 0.0)), zmq.NOBLOCK)
                elif kind is Bye:
                    a.state = "bye"
        now = time.time()
        for a in agents:  # handshake retries (cheap: only before the run)
            if a.state == "hello" and now >= a.next_hello:
                hello(a)
            elif a.state == "ping" and now >= a.ping_deadline:
                next_ping(a)
        if run_id and next_cut < intervals:
            boundary = start_at - agents[0].offset + (next_cut + 1) * INTERVAL
            if now >= boundary:
                start = start_at + next_cut * INTERVAL
                for a in agents:
                    if a.state != "running":
                        continue
                    a.seq += 1
                    frame, n = frames.frame(
                        run_id_packed, a.id_packed, a.seq, next_cut, start, a.index + next_cut
                    )
                    at = time.time()
                    a.socket.send(frame, zmq.NOBLOCK, copy=False)
                    a.last_sent = at
                    a.outbox[a.seq] = (at + RESEND_AFTER, frame)
                    sent.append((a.agent_id, a.seq, at))
                    requests_sent += n
                next_cut += 1
                if next_cut == intervals:
                    for a in agents:
                        if a.state == "running":
                            a.socket.send(encode(Done(run_id, a.seq, "")), zmq.NOBLOCK)
                            a.state = "done"
                    done_at = time.time()
        while beats and beats[0][0] <= now:
            due, i = heapq.heappop(beats)
            late = max(late, now - due)  # this process's own stalls, if any
            a = agents[i]
            if a.state in ("ready", "running", "done"):
                if now - a.last_sent >= HEARTBEAT:  # as agent.session: only on a quiet link
                    state = "running" if a.state == "running" else "ready"
                    beat = encode(Heartbeat(state, 35.0, 80_000_000, 20, now))
                    a.socket.send(beat, zmq.NOBLOCK)
                    a.last_sent = now
                for seq, (stamp, frame) in list(a.outbox.items()):
                    if now >= stamp:  # due: resent, the wait doubling as agent.link does
                        wait = min(2 * a.waits.get(seq, RESEND_AFTER / 2), RESEND_MAX)
                        a.waits[seq] = wait
                        a.outbox[seq] = (now + wait, frame)
                        a.socket.send(frame, zmq.NOBLOCK, copy=False)
                        a.last_sent = now
                        resends += 1
                heapq.heappush(beats, (max(a.last_sent + HEARTBEAT, now), i))
    for a in agents:
        a.socket.close(linger=0)
    ctx.term()
    out.put(
        {
            "sent": sent,
            "requests": requests_sent,
            "resends": resends,
            "late": late,
            "bad": bad,
            "handshake": hello_at,
            "unfinished": sum(1 for a in agents if a.state != "bye"),
            "slots": frames.slots,
            "frame_bytes": frames.sizes,
            "variant_bytes": [len(b) for b, _ in frames.variants],
        }
    )
