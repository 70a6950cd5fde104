"""Running the engine tests' clients: each engine by name, and the fast engine's
callback entry (`send_soon`) behind the same `HttpClient.send`, so that one test
checks every path a request can take (`every_path`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop

from loadctl.agent.engine_fast import Exchange, FastClient, serialise_request
from loadctl.agent.engines import ENGINES, make_client
from loadctl.agent.http import Endpoint, HttpClient, HttpRequest, Reply, SendError

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return uvloop.run(main())


class _Awaited(Exchange):
    """An Exchange whose callbacks complete a future (for `SoonClient`)."""

    def __init__(self, fut: asyncio.Future[Reply]) -> None:
        super().__init__()
        self.fut = fut

    def replied(self, status: int, nbytes: int) -> None:
        if not self.fut.done():
            self.fut.set_result(Reply(status, nbytes))

    def replied_with(self, reply: Reply) -> None:
        if not self.fut.done():
            self.fut.set_result(reply)

    def failed(self, error: SendError) -> None:
        if not self.fut.done():
            self.fut.set_exception(error)


class SoonClient:
    """The fast engine's callback entry (`send_soon`, which driven users use) behind
    `HttpClient.send`: the same tests then check it, bodies and headers included."""

    def __init__(self, max_connections: int, **kwargs: Any) -> None:
        self.inner = FastClient(max_connections, **kwargs)

    async def send(self, request: HttpRequest, timeout: float) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        exchange = _Awaited(fut)
        self.inner.send_soon(self.inner.prepare(request), timeout, exchange)
        try:
            return await fut
        except asyncio.CancelledError:
            exchange.cancel()
            raise

    async def close(self) -> None:
        await self.inner.close()


SOON = "fast-soon"  # the fast engine through send_soon


def new_client(engine: str, max_connections: int, **kwargs: Any) -> HttpClient:
    if engine == SOON:
        return SoonClient(max_connections, **kwargs)
    return make_client(engine, max_connections, **kwargs)


def with_client(
    engine: str,
    body: Callable[[HttpClient], Awaitable[T]],
    max_connections: int = 16,
    **kwargs: Any,
) -> T:
    async def main() -> T:
        client = new_client(engine, max_connections, **kwargs)
        try:
            return await asyncio.wait_for(body(client), 60)
        finally:
            await client.close()

    return run(main)


def wire_size(endpoint: Endpoint, path: str) -> int:
    """Bytes of the server's reply to a GET, as read off a plain socket."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
        sock.sendall(serialise_request(HttpRequest(endpoint, "GET", path)))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += sock.recv(65536)
        return len(head) + 4 + length


def header(reply: Reply, name: str) -> str | None:
    return next((v for k, v in reply.headers if k.lower() == name.lower()), None)


# tests that read no body or header also run the fast engine's callback entry
every_path = pytest.mark.parametrize("engine", [*ENGINES, SOON])
