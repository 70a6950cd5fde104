"""HTTP servers for the engine tests, on 127.0.0.1, in a background thread.

- `BackgroundLoop`: an asyncio loop in a daemon thread, to which the test thread
  hands coroutines (start a server, stop it). The clients under test run in uvloop
  in the test thread, so a server and a client never share a loop.
- `read_requests`: the requests of one connection, for scripted raw servers that
  answer what aiohttp never would.
- `make_cert`: a self-signed certificate for 127.0.0.1.
- `servers`: the fixture of tests/test_engines.py (and test_driven_users.py,
  test_target_tls.py): an aiohttp.web app, plain, over TLS and over TLS with a
  client certificate, and a raw server with scripted replies
  (1xx, bodies ending at EOF, replies cut short or garbled, connections dropped
  or reset before the reply).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from loadctl.agent.http import Endpoint

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the loop; its result, once it is done."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def read_requests(reader: asyncio.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """(path, head) of each request the client sends on a connection, its body (by
    Content-Length) read and dropped; ends when the client closes or resets it."""
    while True:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length" and int(value):
                    await reader.readexactly(int(value))
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        yield lines[0].split(" ")[1], head


def payload(n: int) -> bytes:
    """n deterministic bytes."""
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


# -- the servers -------------------------------------------------------------


@dataclass
class Servers:
    http: Endpoint
    https: Endpoint | None
    https_ca: str | None
    raw: Endpoint
    # per X-Test header value: the client ports seen, and the request count
    peers: dict[str, set[int]]
    requests: dict[str, int]
    # the https server again, asking for a client certificate (mutual TLS): it trusts
    # `client` (certificate, key), a self-signed one (None: no openssl)
    mtls: Endpoint | None = None
    client: tuple[str, str] | None = None


def _app(peers: dict[str, set[int]], requests: dict[str, int]) -> web.Application:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        test = request.headers.get("X-Test")
        if test is not None:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if peer is not None:
                peers[test].add(peer[1])
            requests[test] += 1
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            body=body,
            headers={
                "X-Method": request.method,
                "X-Path": request.path_qs,
                "X-Headers": json.dumps({k.lower(): v for k, v in request.headers.items()}),
            },
        )

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, body=None if code in (204, 304) else b"status")

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=payload(int(request.match_info["n"])))

    async def chunked(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        resp = web.StreamResponse()
        await resp.prepare(request)
        data = payload(n)
        for i in range(0, n, 1000):
            await resp.write(data[i : i + 1000])
        await resp.write_eof()
        return resp

    async def close(request: web.Request) -> web.Response:
        resp = web.Response(body=b"bye")
        resp.force_close()  # "Connection: close", then the server closes
        return resp

    async def sleep(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(body=b"late")

    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.Response(body=b"set")
        resp.set_cookie("session", request.match_info["value"])
        return resp

    async def get_cookie(request: web.Request) -> web.Response:
        return web.Response(text=request.cookies.get("session", "-"))

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/bytes/10")

    async def hops(request: web.Request) -> web.Response:
        """/hops/N redirects N times (relative, absolute, then to another origin
        by name), then lands on /echo; /hops/loop never ends; /hops/none has no
        Location; /hops/CODE-N answers CODE for N hops."""
        which = request.match_info["which"]
        host = request.headers.get("Host", "")
        if which == "loop":
            raise web.HTTPFound("/hops/loop")
        if which == "none":
            return web.Response(status=302, body=b"nowhere")
        code, _, left = which.rpartition("-")
        n = int(left)
        if n == 0:
            raise web.HTTPTemporaryRedirect("/echo")  # 307: the method and body go on
        nxt = f"/hops/{code + '-' if code else ''}{n - 1}"
        if n % 3 == 2:
            nxt = f"http://{host}{nxt}"  # absolute
        elif n % 3 == 1 and host.startswith("127.0.0.1"):
            nxt = f"http://localhost:{host.rpartition(':')[2]}{nxt}"  # another origin
        status = int(code) if code else 302
        return web.Response(status=status, headers={"Location": nxt})

    app = web.Application(middlewares=[count], client_max_size=8 << 20)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/bytes/{n}", sized)
    app.router.add_get("/chunked/{n}", chunked)
    app.router.add_get("/close", close)
    app.router.add_get("/sleep/{seconds}", sleep)
    app.router.add_get("/cookie/set/{value}", set_cookie)
    app.router.add_get("/cookie/get", get_cookie)
    app.router.add_get("/redirect", redirect)
    app.router.add_route("*", "/hops/{which}", hops)
    return app


# Scripted replies for the raw server, by path. "drop-second" replies to the
# first request of each connection and drops the connection at the second.
RAW_REPLIES: dict[str, bytes] = {
    "/continue": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "/eof": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload(3000),
    "/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + payload(10),
    "/cut-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123",
    "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "/drop-second": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/idle-408": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}
CLOSE_AFTER = {"/eof", "/cut", "/cut-chunked", "/garbage"}
# Requests the raw server read, by path: a broken connection must not be resent
# unless it was a kept-alive one (test_no_reply_on_a_fresh_connection_is_not_resent).
RAW_SEEN: Counter[str] = Counter()


async def _raw_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    served = 0
    try:
        async for path, _ in read_requests(reader):
            served += 1
            RAW_SEEN[path] += 1
            if path == "/reset":  # SO_LINGER 0: closing sends a TCP RST
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if path == "/noreply" or (path == "/drop-second" and served > 1):
                return
            writer.write(RAW_REPLIES[path])
            await writer.drain()
            if path in CLOSE_AFTER:
                return
            if path == "/idle-408":  # as nginx does to an idle keep-alive connection
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
                return
    finally:
        writer.close()


def make_cert(directory: Path) -> tuple[str, str] | None:
    """A self-signed certificate and key for 127.0.0.1 (None: no openssl command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    peers: dict[str, set[int]] = defaultdict(set)
    requests: dict[str, int] = defaultdict(int)
    cert = make_cert(tmp_path_factory.mktemp("tls"))
    client = make_cert(tmp_path_factory.mktemp("tls-client"))

    async def start() -> tuple[web.AppRunner, asyncio.Server, list[int]]:
        runner = web.AppRunner(_app(peers, requests), shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*cert)
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        if cert is not None and client is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client[0])
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_cert_chain(*cert)
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        raw = await asyncio.start_server(_raw_conn, "127.0.0.1", 0)
        return runner, raw, [address[1] for address in runner.addresses]

    async def stop() -> None:
        raw.close()
        await runner.cleanup()

    background = BackgroundLoop()
    runner, raw, ports = background.call(start())
    yield Servers(
        http=Endpoint("http", "127.0.0.1", ports[0]),
        https=Endpoint("https", "127.0.0.1", ports[1]) if cert else None,
        https_ca=cert[0] if cert else None,
        raw=Endpoint("http", "127.0.0.1", raw.sockets[0].getsockname()[1]),
        peers=peers,
        requests=requests,
        mtls=Endpoint("https", "127.0.0.1", ports[2]) if cert and client else None,
        client=client,
    )
    background.call(stop())
    background.close()
