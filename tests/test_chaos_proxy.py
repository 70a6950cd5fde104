"""The chaos proxy's toxics, measured through a real proxy process in front of
the real demo target, with the agent's own HTTP engine as the client.

Every load here is bounded (tens of requests, a few seconds) and stays on
127.0.0.1. `running_chaos` (also used by test_chaos_api.py) runs
`loadctl chaos proxy` as a subprocess, like `running_target` does the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, TypeVar, cast

import pytest
import uvloop

from loadctl.agent.engines import make_client
from loadctl.agent.http import (
    Endpoint,
    HttpClient,
    HttpRequest,
    SendError,
)
from loadctl.chaos.proxy import Proxy, ProxyCollection
from loadctl.chaos.toxics import toxic_from_json

from target_process import Spawned, TargetProcess, read_lines, running_target, spawned

T = TypeVar("T")

CHAOS_COMMAND = [
    sys.executable,
    "-c",
    "from loadctl.chaos.cli import chaos_group; chaos_group(prog_name='loadctl chaos')",
    "proxy",
]
API_LINE = "loadctl chaos api listening on "


# -- the proxy process ---------------------------------------------------------


@dataclass
class ChaosProcess(Spawned):
    proc: subprocess.Popen[bytes]
    lines: list[str]
    api: str = ""  # http://127.0.0.1:PORT
    listens: dict[str, str] = field(default_factory=dict)  # proxy name -> HOST:PORT
    _stderr: IO[bytes] | None = None

    @property
    def listen(self) -> str:
        return self.listens["target"]

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One API call with urllib; (status, parsed JSON or text). Never raises on 4xx/5xx."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.api + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read()
        if not text:
            return status, None
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = self.call(method, path, body)
        assert 200 <= status < 300, (method, path, status, reply)
        return reply


@contextlib.contextmanager
def running_chaos(*args: str, timeout: float = 15.0) -> Iterator[ChaosProcess]:
    """`loadctl chaos proxy --api 127.0.0.1:0 *args`; yields once the API is up."""
    with spawned([*CHAOS_COMMAND, "--api", "127.0.0.1:0", *args]) as (proc, stderr):
        chaos = ChaosProcess(proc, [], _stderr=stderr)
        chaos.lines = read_lines(proc, API_LINE, timeout)
        if not chaos.lines or not chaos.lines[-1].startswith(API_LINE):
            chaos.stop()
            raise RuntimeError(
                f"chaos proxy did not start: {chaos.lines!r} {chaos.stderr_text()!r}"
            )
        chaos.api = chaos.lines[-1][len(API_LINE) :]
        for line in chaos.lines[:-1]:
            # loadctl chaos proxy NAME listening on HOST:PORT (upstream ...)
            words = line.split()
            chaos.listens[words[3]] = words[6]
        yield chaos


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> Iterator[TargetProcess]:
    with running_target() as t:
        yield t


@pytest.fixture(scope="module")
def shared_chaos(target: TargetProcess) -> Iterator[ChaosProcess]:
    upstream = f"{target.host}:{target.port}"
    with running_chaos("--listen", "127.0.0.1:0", "--upstream", upstream) as chaos:
        yield chaos


@pytest.fixture
def chaos(shared_chaos: ChaosProcess) -> Iterator[ChaosProcess]:
    """The module's proxy, reset (enabled, no toxics) before and after each test."""
    shared_chaos.ok("POST", "/reset")
    yield shared_chaos
    assert shared_chaos.proc.poll() is None, shared_chaos.stderr_text()
    shared_chaos.ok("POST", "/reset")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return uvloop.run(main())


def request(
    chaos: ChaosProcess, path: str = "/health", method: str = "GET", body: bytes = b""
) -> HttpRequest:
    return HttpRequest(Endpoint.parse(chaos.url), method, path, body=body)


async def timed(client: HttpClient, req: HttpRequest, timeout: float = 5.0) -> float:
    """Seconds for one request that must answer 200."""
    start = time.perf_counter()
    reply = await client.send(req, timeout)
    assert reply.status == 200
    return time.perf_counter() - start


async def outcome(client: HttpClient, req: HttpRequest, timeout: float = 2.0) -> str:
    try:
        reply = await client.send(req, timeout)
    except SendError as exc:
        return type(exc).__name__
    return str(reply.status)


async def fresh_outcomes(chaos: ChaosProcess, n: int, timeout: float) -> list[str]:
    """n requests at once, each on its own new connection."""

    async def one() -> str:
        client = make_client("aiohttp", 1)
        try:
            return await outcome(client, request(chaos), timeout)
        finally:
            await client.close()

    return await asyncio.gather(*(one() for _ in range(n)))


def raw_exchange(address: str, data: bytes, timeout: float = 5.0) -> tuple[bytes, float, float]:
    """Send `data`, read to EOF: (bytes, seconds to the last byte, seconds to EOF)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        start = time.perf_counter()
        sock.sendall(data)
        got, last = b"", start
        while chunk := sock.recv(65536):
            got += chunk
            last = time.perf_counter()
        return got, last - start, time.perf_counter() - start


CLOSE_REQUEST = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


# -- no toxic ------------------------------------------------------------------


def test_passes_requests_through_unchanged(chaos: ChaosProcess, target: TargetProcess) -> None:
    target.reset()

    async def main() -> list[str]:
        client = make_client("aiohttp", 4)
        try:
            return await asyncio.gather(*(outcome(client, request(chaos)) for _ in range(40)))
        finally:
            await client.close()

    assert run(main) == ["200"] * 40
    assert target.counts()["total"] == 40
    got, _, _ = raw_exchange(chaos.listen, CLOSE_REQUEST)
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b'{"status": "ok"}')


# -- latency -------------------------------------------------------------------


def test_latency_moves_p50_by_its_value_and_removing_it_restores_baseline(
    chaos: ChaosProcess,
) -> None:
    async def series(client: HttpClient, n: int) -> list[float]:
        return [await timed(client, request(chaos)) for _ in range(n)]

    async def main() -> tuple[list[float], list[float], list[float]]:
        client = make_client("aiohttp", 1)  # one keep-alive connection throughout
        try:
            await series(client, 3)
            base = await series(client, 15)
            body = {"type": "latency", "attributes": {"latency": 200}}
            chaos.ok("POST", "/proxies/target/toxics", body)
            slow = await series(client, 15)
            chaos.ok("DELETE", "/proxies/target/toxics/latency_downstream")
            after = await series(client, 15)
            return base, slow, after
        finally:
            await client.close()

    base, slow, after = run(main)
    p50 = statistics.median
    # The toxic adds exactly its latency; a busy machine adds noise of its own,
    # which the minimum (the floor) is immune to and the median mostly so.
    assert 0.197 <= min(slow) - min(base) <= 0.205, (base, slow)
    assert 0.195 <= p50(slow) - p50(base) <= 0.215, (base, slow)
    assert min(after) - min(base) < 0.003, (base, after)
    assert p50(after) - p50(base) < 0.010, (base, after)


def test_upstream_latency_with_jitter_spreads_around_its_value(chaos: ChaosProcess) -> None:
    chaos.ok(
        "POST",
        "/proxies/target/toxics",
        {"type": "latency", "stream": "upstream", "attributes": {"latency": 100, "jitter": 50}},
    )

    async def main() -> list[float]:
        client = make_client("aiohttp", 1)
        try:
            return [await timed(client, request(chaos)) for _ in range(16)]
        finally:
            await client.close()

    times = run(main)
    assert all(0.049 <= t < 0.2 for t in times), times
    assert max(times) - min(times) > 0.02, times  # jitter, not a constant delay


# -- bandwidth -----------------------------------------------------------------


def test_bandwidth_caps_throughput_at_its_rate(chaos: ChaosProcess) -> None:
    size = 150_000
    body = json.dumps({"username": "u", "password": "pw-u", "pad": "x" * size}).encode()
    req = request(chaos, "/api/login", "POST", body)

    async def main() -> tuple[float, float]:
        client = make_client("aiohttp", 1)
        try:
            await timed(client, req)
            base = min([await timed(client, req) for _ in range(3)])
            chaos.ok(
                "POST",
                "/proxies/target/toxics",
                {"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 100}},
            )
            return base, await timed(client, req, 10)
        finally:
            await client.close()

    base, capped = run(main)
    rate = len(body) / (capped - base)  # bytes per second, the transfer alone
    assert 90_000 <= rate <= 110_000, (rate, base, capped)


# -- timeouts and resets -------------------------------------------------------


def test_reset_peer_is_a_connection_error(chaos: ChaosProcess) -> None:
    chaos.ok("POST", "/proxies/target/toxics", {"type": "reset_peer"})
    assert run(lambda: fresh_outcomes(chaos, 5, 2.0)) == ["ConnectFailed"] * 5

    chaos.ok(
        "POST", "/proxies/target/toxics/reset_peer_downstream", {"attributes": {"timeout": 300}}
    )
    start = time.monotonic()
    assert run(lambda: fresh_outcomes(chaos, 1, 2.0)) == ["ConnectFailed"]
    assert 0.28 <= time.monotonic() - start < 1.5


def test_timeout_black_holes_then_closes(chaos: ChaosProcess) -> None:
    chaos.ok("POST", "/proxies/target/toxics", {"type": "timeout", "attributes": {"timeout": 0}})
    start = time.monotonic()
    assert run(lambda: fresh_outcomes(chaos, 3, 0.5)) == ["RequestTimeout"] * 3
    assert time.monotonic() - start < 2

    chaos.ok("POST", "/proxies/target/toxics/timeout_downstream", {"attributes": {"timeout": 400}})
    start = time.monotonic()
    assert run(lambda: fresh_outcomes(chaos, 3, 3.0)) == ["ConnectFailed"] * 3
    assert 0.38 <= time.monotonic() - start < 2


def test_a_toxic_acts_on_live_connections_too(chaos: ChaosProcess) -> None:
    async def main() -> tuple[str, str, str]:
        client = make_client("aiohttp", 1)
        try:
            first = await outcome(client, request(chaos))  # the connection is now open
            chaos.ok("POST", "/proxies/target/toxics", {"type": "timeout"})
            second = await outcome(client, request(chaos), 0.4)
            chaos.ok("DELETE", "/proxies/target/toxics/timeout_downstream")
            third = await outcome(client, request(chaos))  # a new connection: fine
            return first, second, third
        finally:
            await client.close()

    assert run(main) == ("200", "RequestTimeout", "200")


# -- down ----------------------------------------------------------------------


def test_down_refuses_connections_for_its_window_only(chaos: ChaosProcess) -> None:
    down_at, up_at, end = 1.0, 3.0, 4.5

    async def main() -> list[tuple[float, str]]:
        client = make_client("aiohttp", 4)
        seen: list[tuple[float, str]] = []
        start = time.monotonic()

        async def load() -> None:
            while (t := time.monotonic() - start) < end:
                seen.append((t, await outcome(client, request(chaos), 1.0)))
                await asyncio.sleep(0.02)

        async def switch() -> None:
            await asyncio.sleep(down_at)
            await asyncio.to_thread(chaos.ok, "POST", "/proxies/target", {"enabled": False})
            await asyncio.sleep(up_at - down_at)
            await asyncio.to_thread(chaos.ok, "POST", "/proxies/target", {"enabled": True})

        try:
            await asyncio.gather(load(), switch())
        finally:
            await client.close()
        return seen

    seen = run(main)
    assert {o for _, o in seen} <= {"200", "ConnectFailed"}, seen
    assert all(o == "200" for t, o in seen if t < down_at - 0.05)
    assert all(o == "ConnectFailed" for t, o in seen if down_at + 0.1 < t < up_at - 0.05)
    assert all(o == "200" for t, o in seen if t > up_at + 0.1)
    assert sum(o == "ConnectFailed" for _, o in seen) >= 30
    status, proxy = chaos.call("GET", "/proxies/target")
    assert status == 200 and proxy["enabled"] is True


# -- slicer, slow_close, limit_data --------------------------------------------


def test_slicer_delivers_everything_in_delayed_slices(chaos: ChaosProcess) -> None:
    whole, _, _ = raw_exchange(chaos.listen, CLOSE_REQUEST)
    chaos.ok(
        "POST",
        "/proxies/target/toxics",
        {"type": "slicer", "attributes": {"average_size": 16, "size_variation": 4, "delay": 3000}},
    )
    sliced, to_last, _ = raw_exchange(chaos.listen, CLOSE_REQUEST)
    # Same bytes (the Date header may tick over a second boundary).
    assert len(sliced) == len(whole) and sliced.endswith(b'{"status": "ok"}')
    assert to_last >= (len(whole) // 20 - 1) * 0.003, to_last


def test_slow_close_holds_the_end_of_stream(chaos: ChaosProcess) -> None:
    _, to_last, to_eof = raw_exchange(chaos.listen, CLOSE_REQUEST)
    assert to_eof - to_last < 0.1
    chaos.ok("POST", "/proxies/target/toxics", {"type": "slow_close", "attributes": {"delay": 400}})
    got, to_last, to_eof = raw_exchange(chaos.listen, CLOSE_REQUEST)
    assert got.endswith(b'{"status": "ok"}')
    assert 0.38 <= to_eof - to_last < 1.0, (to_last, to_eof)


def test_limit_data_closes_after_its_bytes(chaos: ChaosProcess) -> None:
    chaos.ok("POST", "/proxies/target/toxics", {"type": "limit_data", "attributes": {"bytes": 50}})
    got, _, _ = raw_exchange(chaos.listen, CLOSE_REQUEST)
    assert len(got) == 50 and got.startswith(b"HTTP/1.1 200 OK")


# -- loss and toxicity ---------------------------------------------------------


def test_loss_stalls_or_resets_its_share_of_connections(chaos: ChaosProcess) -> None:
    path = "/proxies/target/toxics"
    chaos.ok(
        "POST", path, {"type": "loss", "name": "l", "attributes": {"percent": 100, "mode": "reset"}}
    )
    assert run(lambda: fresh_outcomes(chaos, 4, 1.0)) == ["ConnectFailed"] * 4
    chaos.ok("POST", f"{path}/l", {"attributes": {"mode": "stall"}})
    assert run(lambda: fresh_outcomes(chaos, 4, 0.3)) == ["RequestTimeout"] * 4
    chaos.ok("DELETE", f"{path}/l")
    # Upstream this time: a picked connection fails at its request, before the
    # target sees it (so a busy target cannot blur resets into timeouts).
    chaos.ok(
        "POST",
        path,
        {"type": "loss", "name": "l", "stream": "upstream", "attributes": {"percent": 50}},
    )
    seen = run(lambda: fresh_outcomes(chaos, 40, 1.5))
    assert set(seen) <= {"200", "ConnectFailed", "RequestTimeout"}
    assert 6 <= seen.count("200") <= 34, seen  # binomial(40, 0.5): 6..34 with p > 0.9999
    assert seen.count("ConnectFailed") >= 1 and seen.count("RequestTimeout") >= 1, seen
    chaos.ok("POST", f"{path}/l", {"attributes": {"percent": 0}})
    assert run(lambda: fresh_outcomes(chaos, 10, 2.0)) == ["200"] * 10


def test_toxicity_is_the_share_of_connections_a_toxic_acts_on(chaos: ChaosProcess) -> None:
    chaos.ok(
        "POST",
        "/proxies/target/toxics",
        {"type": "timeout", "stream": "upstream", "toxicity": 0.5, "attributes": {"timeout": 0}},
    )
    seen = run(lambda: fresh_outcomes(chaos, 40, 1.5))
    assert set(seen) == {"200", "RequestTimeout"}
    assert 6 <= seen.count("200") <= 34, seen


# -- in one process: the hot path, flow control, toxics on live links --------
#
# An echo (or a sink) upstream, the proxy and the client on one event loop, so
# the links can be inspected.


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Sink(asyncio.Protocol):
    """Keeps what it reads, and stops reading after its first read until
    `transport.resume_reading()` (uvloop starts reading after connection_made,
    so a pause there would not hold)."""

    instances: ClassVar[list[_Sink]] = []

    def __init__(self) -> None:
        self.got = bytearray()
        _Sink.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.got:
            self.transport.pause_reading()
        self.got += data


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got += data


@contextlib.asynccontextmanager
async def in_process_proxy(
    upstream: Callable[[], asyncio.Protocol],
) -> AsyncIterator[tuple[Proxy, int]]:
    """(the proxy, its port) in front of a server of `upstream` protocols."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxies = ProxyCollection()
    body = [{"name": "p", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}"}]
    [proxy] = await proxies.populate(body)
    try:
        yield proxy, int(proxy.listen.rsplit(":", 1)[1])
    finally:
        proxies.stop_all()
        server.close()


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def _nodelay(transport: asyncio.BaseTransport | None) -> int:
    assert transport is not None
    sock = transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_no_toxic_forwards_from_protocol_to_transport_with_nodelay() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with in_process_proxy(_Echo) as (proxy, port):
            transport, client = await loop.create_connection(_Collect, "127.0.0.1", port)
            transport.write(b"ping")
            await _until(lambda: bytes(client.got) == b"ping")
            [conn] = proxy.connections
            assert conn.up is not None and conn.down is not None
            assert conn.up.direct and conn.down.direct
            assert conn.up.pump is None and conn.down.pump is None
            sides = (conn.client, conn.upstream)
            assert [_nodelay(s.transport if s else None) for s in sides] == [1, 1]

            # A toxic makes the link take the pipeline; removing it, the hot path again.
            proxy.add_toxic(toxic_from_json({"type": "latency", "attributes": {"latency": 1}}))
            assert not conn.down.direct and conn.up.direct
            transport.write(b"pong")
            await _until(lambda: bytes(client.got) == b"pingpong")
            proxy.remove_toxic("latency_downstream")
            await _until(lambda: conn.down is not None and conn.down.direct)
            transport.close()

    run(main)


def test_toxics_coming_and_going_on_live_links_keep_every_byte_in_order() -> None:
    """Records streamed both ways through an echo while toxics are added,
    updated and removed on the live connection: every byte back, in order."""
    toxics: list[dict[str, Any]] = [
        {"type": "latency", "attributes": {"latency": 3, "jitter": 2}},
        {"type": "slicer", "stream": "upstream", "attributes": {"average_size": 7, "delay": 200}},
        {"type": "bandwidth", "attributes": {"rate": 2000}},
        {"type": "latency", "name": "up", "stream": "upstream", "attributes": {"latency": 2}},
    ]

    async def main() -> tuple[bytes, bytes, bool]:
        loop = asyncio.get_running_loop()
        async with in_process_proxy(_Echo) as (proxy, port):
            transport, client = await loop.create_connection(_Collect, "127.0.0.1", port)
            sent = bytearray()
            for i in range(600):
                record = b"%06d:" % i + b"x" * (i % 37) + b";"
                transport.write(record)  # the first before the upstream has answered
                sent += record
                step = i // 50
                if i % 50 == 0 and step < len(toxics):
                    proxy.add_toxic(toxic_from_json(toxics[step]))
                elif i % 50 == 0 and step < 2 * len(toxics):
                    name = proxy.toxics[0].name
                    if step % 2:
                        proxy.update_toxic(name, {"toxicity": 1.0})
                    proxy.remove_toxic(name)
                await asyncio.sleep(0.001 if i % 3 else 0)
            await _until(lambda: len(client.got) >= len(sent), timeout=20)
            [conn] = proxy.connections
            assert conn.up is not None and conn.down is not None
            await _until(lambda: conn.up is not None and conn.down is not None and conn.up.direct)
            direct = conn.up.direct and conn.down.direct
            transport.close()
            return bytes(sent), bytes(client.got), direct

    sent, got, direct = run(main)
    assert got == sent
    assert direct  # every toxic gone: back on the hot path


def test_hot_path_flow_control_holds_a_fast_client_to_a_slow_upstream() -> None:
    """An upstream that does not read: the proxy stops reading from the client
    instead of buffering; once the upstream reads, everything arrives in order."""
    data = bytes(range(256)) * (24 * 1024 * 1024 // 256)

    async def main() -> tuple[int, bool, bool]:
        loop = asyncio.get_running_loop()
        _Sink.instances.clear()
        async with in_process_proxy(_Sink) as (proxy, port):
            transport, _ = await loop.create_connection(_Collect, "127.0.0.1", port)
            transport.write(data)
            await _until(lambda: len(proxy.connections) == 1 and len(_Sink.instances) == 1)
            [conn] = proxy.connections
            assert conn.client is not None and conn.client.transport is not None
            assert conn.upstream is not None and conn.upstream.transport is not None
            client_side, upstream_side = conn.client.transport, conn.upstream.transport
            await _until(lambda: not client_side.is_reading())
            await asyncio.sleep(0.1)
            held = upstream_side.get_write_buffer_size()
            still_paused = not client_side.is_reading()
            direct = conn.up is not None and conn.up.direct
            [sink] = _Sink.instances
            sink.transport.resume_reading()
            await _until(lambda: len(sink.got) >= len(data), timeout=30)
            ok = bytes(sink.got) == data
            transport.close()
            return held, still_paused and direct, ok

    held, paused, ok = run(main)
    assert paused
    assert held < 1024 * 1024, held  # a high-water mark and a read, not the 24 MB
    assert ok


# -- survival ------------------------------------------------------------------


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _vanishing_clients(address: str) -> None:
    host, port = address.rsplit(":", 1)
    for i in range(30):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if i % 3 == 0:
            sock.sendall(b"GET /delay/100 HTTP/1.1\r\nHost: t\r\n\r\n")  # leave before the reply
        elif i % 3 == 1:
            sock.sendall(
                b"POST /api/login HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000
            )
        else:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.01)  # the reply is on its way
        (_rst_close if i % 2 else socket.socket.close)(sock)


class _RudeUpstream:
    """A TCP server on 127.0.0.1 that reads a request, sends half a reply and
    resets the connection (or, every other time, closes at once)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            if self.count % 2:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 3000)
                time.sleep(0.02)
                _rst_close(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()


def test_survives_clients_and_upstreams_that_vanish(chaos: ChaosProcess) -> None:
    _vanishing_clients(chaos.listen)
    chaos.ok("POST", "/proxies/target/toxics", {"type": "latency", "attributes": {"latency": 50}})
    _vanishing_clients(chaos.listen)  # with data held by a toxic too

    rude = _RudeUpstream()
    try:
        created = chaos.ok(
            "POST",
            "/proxies",
            {"name": "rude", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{rude.port}"},
        )
        rude_url = f"http://{created['listen']}"

        async def against_rude() -> list[str]:
            req = HttpRequest(Endpoint.parse(rude_url), "GET", "/")
            client = make_client("aiohttp", 2)
            try:
                return [await outcome(client, req, 2.0) for _ in range(8)]
            finally:
                await client.close()

        seen = run(against_rude)
        assert set(seen) <= {"ConnectFailed", "SendError"}, seen
        chaos.ok("POST", "/proxies/rude/toxics", {"type": "latency", "attributes": {"latency": 20}})
        seen = run(against_rude)
        assert set(seen) <= {"ConnectFailed", "SendError"}, seen
        # An upstream that is not there at all: the client's connection is closed.
        closed_port = rude.port
        rude.close()
        chaos.ok("POST", "/proxies/rude", {"upstream": f"127.0.0.1:{closed_port}"})
        # (aiohttp says ClientConnectionResetError, which the engine counts as an error.)
        assert set(run(against_rude)) <= {"ConnectFailed", "SendError"}
        chaos.ok("DELETE", "/proxies/rude")
    finally:
        rude.close()

    chaos.ok("POST", "/reset")
    assert run(lambda: fresh_outcomes(chaos, 10, 2.0)) == ["200"] * 10
    assert chaos.proc.poll() is None
    assert "Traceback" not in chaos.stderr_text(), chaos.stderr_text()
