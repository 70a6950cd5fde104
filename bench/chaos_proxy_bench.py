"""What the chaos proxy adds to latency when no toxic is set, at a fixed rate.

Starts the demo target (`loadctl target --port 0`) and a chaos proxy in
front of it (`loadctl chaos proxy --listen 127.0.0.1:0 ...`), each as its own
process. Each run sends GET /health at a fixed rate (1,000 RPS by default)
straight to the target *and* the same rate through the proxy, interleaved
request by request (arrival k goes to path k mod 2), so both paths see the
same machine at the same moment: on a shared machine, runs one after the
other differ by more than the proxy costs. What the proxy adds is the
difference of the two paths' percentiles within a run, median over rounds.
A second run per round does the same through a second proxy that has a 0 ms
latency toxic: the toxic path (queue, pump task, chain) without any delay of
its own. A third does the same through a bare forwarder (about 30 lines of
asyncio.Protocol on uvloop, no loadctl code; `--bare-forwarder`): what any
Python proxy costs on this machine, so what is loadctl's own is the
difference. Last, in one process (an echo server, the proxy and a client on
one loop, so no scheduler in between), what the proxy adds per round trip in
CPU and wall time: the floor the cross-process figures stand on.

The client is a small raw-socket one in this process (uvloop, a pool of
keep-alive connections per path, one request in flight per connection, each
request sent at its intended time on an idle connection). Latency is timed
from the moment the request is written to the moment its whole reply is
read; the pacer's send lag is printed too, and "waited" counts arrivals that
found no idle connection. The proxy's CPU per proxied request is read with
psutil (its utime + stime, which Linux keeps equal to the scheduler's exact
run time, in 10 ms units: about 3 µs per request over a run) over the
measured part only: not the connections' set-up, not the warm-up.

It measures the tree it is in: the repo root goes first on sys.path, here
and in the processes it starts, whether or not loadctl is installed.

Prints figures only; nothing here asserts. All load goes to 127.0.0.1 and
stops after the given duration.

    python bench/chaos_proxy_bench.py [--rate 1000] [--duration 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import uvloop

# Measure the tree this file is in, installed or not (coordinator_scale.py does
# the same); the target and the proxies it starts get it first on PYTHONPATH.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p),
}

TARGET = [
    sys.executable,
    "-c",
    "from loadctl.target import target_command; target_command(prog_name='loadctl target')",
]
PROXY = [
    sys.executable,
    "-c",
    "from loadctl.chaos.cli import chaos_group; chaos_group(prog_name='loadctl chaos')",
    "proxy",
]
BARE = [sys.executable, os.path.abspath(__file__), "--bare-forwarder"]
BARE_LINE = "bare forwarder listening on"
REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
GOAL_ADDED_P50_MS = 0.2
POOL_SIZE = 32
QS = (0.5, 0.9, 0.99, 0.999)


def _lines(proc: subprocess.Popen[bytes], until: str, timeout: float = 15.0) -> list[str]:
    """Read stdout lines until one starts with `until`."""
    assert proc.stdout is not None
    fd, buf, out = proc.stdout.fileno(), b"", []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                out.append(line.decode().strip())
                if out[-1].startswith(until):
                    return out
            if time.monotonic() > deadline or not sel.select(deadline - time.monotonic()):
                raise SystemExit(f"no {until!r} line from {proc.args!r}: {out}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise SystemExit(f"{proc.args!r} exited: {out}")
            buf += chunk


# -- the client ----------------------------------------------------------------


class _Conn(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        length = 0
        for line in self.buf[:head_end].lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buf) < head_end + 4 + length:
            return
        self.pool.latencies.append(time.perf_counter() - self.sent)
        self.buf = self.buf[head_end + 4 + length :]
        self.pool.idle.put_nowait(self)


class Pool:
    """Keep-alive connections to one address, one request in flight on each."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit("the bench only sends load to 127.0.0.1")
        self.host, self.port = host, int(port)
        self.idle: asyncio.Queue[_Conn] = asyncio.Queue()
        self.conns: list[_Conn] = []
        self.latencies: list[float] = []
        self.waited = 0  # arrivals that found no idle connection

    async def open(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(size):
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            self.conns.append(conn)
            conn.send()  # warm each connection up
        for _ in range(size):
            await self.idle.get()
        for conn in self.conns:
            self.idle.put_nowait(conn)

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()


@dataclass
class Figures:
    latencies_ms: list[float]
    waited: int

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def interleaved(
    addresses: list[str], rate: float, duration: float, mark: Callable[[], None] = lambda: None
) -> list[Figures]:
    """`rate` requests per second to each address, sent alternately (arrival k
    to address k mod n), so every path sees the same machine at the same time.
    Returns each address's figures, and the pacer's send lag last. `mark` is
    called when the measured part starts and when its last reply is in (not
    the connections' set-up, not the warm-up)."""
    loop = asyncio.get_running_loop()
    pools = [Pool(a) for a in addresses]
    for pool in pools:
        await pool.open(POOL_SIZE)
    warm = 0.5  # the first half second is not measured
    n = len(pools)
    total = int(rate * n * (duration + warm))
    measured_from = int(rate * n * warm)
    start = loop.time() + 0.05
    lag: list[float] = []
    for k in range(total):
        due = start + k / (rate * n)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pool = pools[k % n]
        if k == measured_from:
            mark()
            for p in pools:
                p.latencies.clear()
                p.waited = 0
        if pool.idle.empty():
            pool.waited += 1
        conn = await pool.idle.get()
        if k >= measured_from:
            lag.append((loop.time() - due) * 1e3)
        conn.send()
    for pool in pools:
        while pool.idle.qsize() < len(pool.conns):
            await asyncio.sleep(0.001)
    mark()
    for pool in pools:
        pool.close()
    out = [Figures([x * 1e3 for x in p.latencies], p.waited) for p in pools]
    return [*out, Figures(lag, 0)]


# -- in one process: the proxy's own cost, with no scheduler in between ---------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _PingPong(asyncio.Protocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)


async def _round_trips(port: int, n: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per 100-byte round trip, one at a time."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(_PingPong, "127.0.0.1", port)
    message = b"x" * 100
    for i in range(-200, n):
        if i == 0:
            r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        client.reply = loop.create_future()
        transport.write(message)
        await client.reply
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    transport.close()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return cpu / n * 1e6, (w1 - w0) / n * 1e6


async def in_process(
    n: int = 20_000, rounds: int = 3
) -> dict[str, tuple[list[float], list[float]]]:
    """An echo server, the proxy in front of it, and a client, all on one loop
    (so on one core, one after the other): what the proxy adds per round
    trip, in CPU and in wall time, each round measured direct then proxied;
    the same for the bare forwarder. {"proxy" | "bare": (CPU µs, wall µs)}."""
    from loadctl.chaos.proxy import ProxyCollection

    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxies = ProxyCollection()
    body = [{"name": "bench", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}"}]
    [proxy] = await proxies.populate(body)
    bare_server = await loop.create_server(_bare_server(f"127.0.0.1:{port}"), "127.0.0.1", 0)
    ports = {
        "proxy": int(proxy.listen.rsplit(":", 1)[1]),
        "bare": bare_server.sockets[0].getsockname()[1],
    }
    out: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in ports}
    for _ in range(rounds):
        for mode, through_port in ports.items():
            direct = await _round_trips(port, n)
            through = await _round_trips(through_port, n)
            out[mode][0].append(through[0] - direct[0])
            out[mode][1].append(through[1] - direct[1])
    proxies.stop_all()
    bare_server.close()
    server.close()
    return out


# -- the reference: a bare forwarder -------------------------------------------


class _Bare(asyncio.Protocol):
    """One socket of a bare forwarder: each read written to the peer's
    transport, no flow control, no toxics. The least a Python proxy does."""

    def __init__(self, peer: _Bare | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.peer is not None:  # the upstream side: the client side may go on
            self.peer.peer = self
            for data in self.peer.early:
                transport.write(data)  # type: ignore[attr-defined]
            self.peer.early.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def _bare_server(upstream: str) -> Callable[[], _Bare]:
    """The protocol factory of a bare forwarder to `upstream`."""
    host, port = upstream.rsplit(":", 1)

    def client_side() -> _Bare:
        side = _Bare()

        async def connect() -> None:
            loop = asyncio.get_running_loop()
            try:
                await loop.create_connection(lambda: _Bare(side), host, int(port))
            except OSError:
                if side.transport is not None:
                    side.transport.close()

        side.connecting = asyncio.get_running_loop().create_task(connect())
        return side

    return client_side


async def _bare_forwarder(upstream: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_bare_server(upstream), "127.0.0.1", 0)
    print(f"{BARE_LINE} 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


# -- the bench -----------------------------------------------------------------


def _api(url: str, method: str, path: str, body: object = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=5):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s on each path")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bare-forwarder", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_forwarder:  # the reference forwarder's own process
        uvloop.run(_bare_forwarder(args.bare_forwarder))
        return

    load_at_start = os.getloadavg()
    target = subprocess.Popen([*TARGET, "--port", "0"], stdout=subprocess.PIPE, env=_ENV)
    proxy: subprocess.Popen[bytes] | None = None
    bare: subprocess.Popen[bytes] | None = None
    try:
        target_url = _lines(target, "loadctl target listening on")[-1].split()[-1]
        upstream = target_url.split("//", 1)[1]
        proxy = subprocess.Popen(
            [*PROXY, "--listen", "127.0.0.1:0", "--upstream", upstream, "--api", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            env=_ENV,
        )
        bare = subprocess.Popen([*BARE, upstream], stdout=subprocess.PIPE, env=_ENV)
        bare_listen = _lines(bare, BARE_LINE)[-1].split()[-1]
        lines = _lines(proxy, "loadctl chaos api listening on")
        listen = next(ln for ln in lines if ln.startswith("loadctl chaos proxy")).split()[6]
        api = lines[-1].split()[-1]
        # A second proxy with a 0 ms latency toxic: the toxic path, no delay of its own.
        body = {"name": "toxic", "listen": "127.0.0.1:0", "upstream": upstream}
        req = urllib.request.Request(
            api + "/proxies", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            toxic_listen = json.loads(resp.read())["listen"]
        _api(api, "POST", "/proxies/toxic/toxics", {"type": "latency"})
        paths = {
            "proxy": (listen, psutil.Process(proxy.pid)),
            "toxic": (toxic_listen, psutil.Process(proxy.pid)),
            "bare": (bare_listen, psutil.Process(bare.pid)),
        }

        print(
            f"GET /health, {args.rate:g} RPS on each path, direct and through the proxy "
            f"interleaved; {args.duration:g}s x {args.rounds} rounds; {psutil.cpu_count()} CPUs; "
            "ms"
        )
        rows: dict[str, list[tuple[Figures, Figures, Figures, float]]] = {m: [] for m in paths}
        for r in range(args.rounds):
            for mode, (address, proxy_ps) in paths.items():
                marks: list[float] = []

                def mark(ps: psutil.Process = proxy_ps, marks: list[float] = marks) -> None:
                    marks.append(sum(ps.cpu_times()[:2]))

                direct, through, lag = uvloop.run(
                    interleaved([upstream, address], args.rate, args.duration, mark)
                )
                cpu = marks[-1] - marks[0]
                cpu_us = cpu / max(1, len(through.latencies_ms)) * 1e6
                rows[mode].append((direct, through, lag, cpu_us))
                print(
                    f"  round {r + 1} {mode:>5}: direct p50 {direct.pct(0.5):.3f} "
                    f"p99 {direct.pct(0.99):.3f} | through p50 {through.pct(0.5):.3f} "
                    f"p99 {through.pct(0.99):.3f} | added p50 "
                    f"{through.pct(0.5) - direct.pct(0.5):+.3f} | send lag p99 "
                    f"{lag.pct(0.99):.2f} | waited {direct.waited}/{through.waited} | "
                    f"proxy CPU {cpu_us:.0f} µs/req",
                    flush=True,
                )

        def med(values: list[float]) -> float:
            return statistics.median(values)

        def added(mode: str, q: float) -> float:
            return med([t.pct(q) - d.pct(q) for d, t, _, _ in rows[mode]])

        print()
        print(f"{'(median of rounds)':>26}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}  CPU/req")
        labels = {
            "proxy": "through proxy, no toxic",
            "toxic": "0 ms latency toxic",
            "bare": "bare forwarder",
        }
        for mode, label in labels.items():
            rs = rows[mode]
            direct_row = "".join(f"{med([d.pct(q) for d, _, _, _ in rs]):9.3f}" for q in QS)
            through_row = "".join(f"{med([t.pct(q) for _, t, _, _ in rs]):9.3f}" for q in QS)
            print(f"{'direct':>26}{direct_row}")
            cpu = med([c for _, _, _, c in rs])
            print(f"{label:>26}{through_row}  {cpu:.0f} µs")
        print()
        for mode, label in (
            ("proxy", "no toxic"),
            ("toxic", "0 ms latency toxic"),
            ("bare", "(reference) bare forwarder"),
        ):
            goal = ""
            if mode == "proxy":
                met = added(mode, 0.5) < GOAL_ADDED_P50_MS
                goal = f" (goal < {GOAL_ADDED_P50_MS} ms: {'met' if met else 'NOT met'})"
            print(
                f"added by the proxy, {label}: p50 {added(mode, 0.5):+.3f} ms{goal}, "
                f"p99 {added(mode, 0.99):+.3f} ms"
            )
        own_cpu = med([c for *_, c in rows["proxy"]]) - med([c for *_, c in rows["bare"]])
        print(
            "loadctl's own share (no toxic, less the bare forwarder): "
            f"p50 {added('proxy', 0.5) - added('bare', 0.5):+.3f} ms, CPU {own_cpu:+.0f} µs/req"
        )
        micro = uvloop.run(in_process())
        print(
            "in one process (echo server, proxy and client on one loop, 20,000 round trips): "
            f"the proxy adds {med(micro['proxy'][0]):.1f} µs CPU and "
            f"{med(micro['proxy'][1]):.1f} µs per round trip; the bare forwarder "
            f"{med(micro['bare'][0]):.1f} µs CPU and {med(micro['bare'][1]):.1f} µs"
        )
        print(
            f"load average: {', '.join(f'{x:.1f}' for x in load_at_start)} at the start, "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end (1, 5, 15 min)"
        )
    finally:
        for proc in (bare, proxy, target):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
