"""The fast engine: HTTP/1.1 on raw event-loop transports, parsed by httptools.

Why a raw Protocol rather than aiohttp on the hot path: per request, aiohttp
builds request and response objects, multidict headers, a stream reader, a
timer context and a connection wrapper, and runs tracing and cookie hooks;
against nginx on one core that is ~8x the CPU of a bare uvloop Protocol +
httptools client (66 µs against 8 µs in the design notes; `bench/
engine_bench.py` measures both here). That makes the load generator, not the
target, the bottleneck. A load tester sends the same few requests again and
again, so nearly all of that work can be done once: each `HttpRequest` is
serialised to bytes once and cached, each connection is an
`asyncio.Protocol` that owns its `httptools` (llhttp) parser for its
lifetime, and a reply costs one future, one `Reply` and three Python
callbacks (data received, headers complete, message complete); through
`send_soon` (an `Exchange`), not even the future and the `Reply`: the
callbacks' caller records the reply and sends its next request from inside
them, which is how the agent's users and arrivals run. Header and
body bytes only become Python objects when the request asks for them
(`want_body`). Timeouts use one sweep timer per client, not one per request.

Layout: `fast_wire` (request bytes, reply framing), `fast_conn` (the
Protocol and its per-request state), and here the pool and the client.

Cookies: a client made with `cookies=True` keeps them in aiohttp's jar, as the
aiohttp engine does (`fast_cookies`); it reads every reply's headers for them.

Redirects: a request with `follow_redirects` reads its reply's headers and
follows them by aiohttp's rules (`fast_redirects`), off the hot path (in a task
when it came through `send_soon`).

What it leaves out, on purpose: proxies, content decoding (gzip), HTTP/2 and
pipelining.

Reply accounting: `bytes_in` is the bytes of the reply as they came off the
socket (status line, headers, chunk framing, body), as wrk counts them.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Iterable
from functools import partial
from http.cookies import Morsel
from typing import Final

from loadctl.agent.fast_conn import Conn, Pool, Prepared, Stale
from loadctl.agent.fast_cookies import Cookies
from loadctl.agent.fast_redirects import MAX_REDIRECTS, location, next_request
from loadctl.agent.fast_wire import USER_AGENT, serialise_head, serialise_request
from loadctl.agent.http import (
    ConnectFailed,
    Endpoint,
    HttpRequest,
    Reply,
    RequestTimeout,
    SendError,
)

__all__ = ["USER_AGENT", "FastClient", "serialise_head", "serialise_request"]

_PREPARED_MAX: Final = 4096  # cached serialised requests per client; cleared when full
_TIMER_SLACK: Final = 0.001  # uvloop timers have millisecond resolution
_INF: Final = float("inf")


def _when(deadline: float) -> float | None:
    return deadline if deadline < _INF else None


def _stale_error() -> ConnectFailed:
    return ConnectFailed("the server closed the connection before replying")


class Exchange:
    """A request run by callbacks (`FastClient.send_soon`): subclass it, override
    `replied` and `failed`. One object can carry one request after another.

    On the hot path the connection calls `reply_now` from its parser callback: the
    connection goes back to the idle pool (so `replied` can send the next request
    on it at once) and `replied` runs in the same call, with no future, `Reply` or
    task. A `Stale` connection is resent once as `send` would, in a task (rare: the
    server dropped an idle keep-alive connection), as is a request that found no
    idle connection. A request whose reply is read (`Prepared.reads`) ends in
    `replied_with`, which gets the whole `Reply`, its headers and body; so do the
    rare replies completed another way (HEAD, a body that ends at EOF, a resend).
    By default `replied_with` calls `replied`."""

    __slots__ = ("client", "conn", "deadline", "ended", "prepared", "task")
    client: FastClient
    conn: Conn
    prepared: Prepared
    deadline: float

    def __init__(self) -> None:
        self.ended = True  # the request on `conn` is over (replied, failed or cancelled)
        self.task: asyncio.Task[Reply] | None = None  # the request, when it runs as `send`

    def replied(self, status: int, nbytes: int) -> None:
        raise NotImplementedError

    def replied_with(self, reply: Reply) -> None:
        self.replied(reply.status, reply.bytes_in)

    def failed(self, error: SendError) -> None:
        raise NotImplementedError

    # -- what the connection completes (a `Waiter`) ----------------------------------
    def done(self) -> bool:
        return self.ended

    def reply_now(self, status: int, nbytes: int) -> None:
        self.ended = True
        self.client.settle(self.conn)
        self.replied(status, nbytes)

    def set_result(self, reply: Reply) -> None:
        """The whole reply (one that is read, or one completed off the hot path)."""
        self.ended = True
        client = self.client
        client.settle(self.conn)
        prepared = self.prepared
        if client.cookies is not None:
            client.cookies.keep(reply.headers, prepared.url)
        if prepared.follow and location(reply) is not None:  # on to where it leads
            loop = asyncio.get_running_loop()
            follow = client._follow(prepared, reply, self.deadline)
            self.task = _deliver(loop.create_task(follow), self)
            return
        self.replied_with(reply)

    def set_exception(self, exc: BaseException) -> None:
        self.ended = True
        client = self.client
        if isinstance(exc, Stale):
            if client._may_retry(self.conn, self.prepared):
                loop = asyncio.get_running_loop()
                self.task = _deliver(
                    loop.create_task(client._resend(self.prepared, self.deadline)), self
                )
                return
            exc = _stale_error()
        else:
            self.conn.abort()
            client.release_slot()
        self.failed(exc if isinstance(exc, SendError) else SendError(str(exc)))

    def cancel(self) -> bool:
        """Abandon the request: neither callback runs (False if it had ended)."""
        if self.task is not None:
            return self.task.cancel()
        if self.ended:
            return False
        self.ended = True
        self.conn.abort()
        self.client.release_slot()
        return True


def _deliver(task: asyncio.Task[Reply], exchange: Exchange) -> asyncio.Task[Reply]:
    """Pass the task's reply or SendError to `exchange` (not if it was cancelled)."""

    def settled(task: asyncio.Task[Reply]) -> None:
        if task.cancelled() or exchange.task is not task:
            return
        exchange.task = None
        exc = task.exception()
        if exc is None:
            exchange.replied_with(task.result())
        else:
            exchange.failed(exc if isinstance(exc, SendError) else SendError(str(exc)))

    task.add_done_callback(settled)
    return task


class FastClient:
    """`HttpClient` on raw transports: a keep-alive pool of at most `max_connections`.

    The limit counts connections to all endpoints together (as aiohttp's
    `limit`); a request that finds none free waits for one within its timeout.
    The timeout covers the whole request: waiting for a connection, connecting
    (and the TLS handshake), sending, and reading the whole reply; on expiry
    the connection in use is closed, never reused (a redirect's whole chain
    included). `cookies=True` gives the client a cookie jar of its own (one
    client per user: each user its own cookies). `ssl_context` is used for
    https endpoints (default: the system's verifying context). Must be used
    from one event loop, the one running at the first `send`.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        cookies: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.cookies = Cookies() if cookies else None  # see fast_cookies
        self._max = max_connections
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[Endpoint, Pool] = {}
        self._prepared: dict[int, Prepared] = {}
        self.conns: set[Conn] = set()
        self._count = 0  # slots taken: live connections, connections being made, hand-overs
        self._waiters: collections.deque[tuple[Pool, asyncio.Future[Conn | None]]] = (
            collections.deque()
        )
        self._sweep_at = _INF
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def waiters(self) -> collections.deque[tuple[Pool, asyncio.Future[Conn | None]]]:
        """The requests waiting for a connection (a lane yields its own while any wait)."""
        return self._waiters

    @property
    def cookie_jar(self) -> Iterable[Morsel[str]] | None:
        """The client's cookies (None before the first send or without cookies)."""
        return None if self.cookies is None else self.cookies.made

    @property
    def connections(self) -> int:
        """Open connections (idle or busy)."""
        return len(self.conns)

    async def send(self, request: HttpRequest, timeout: float) -> Reply:
        prepared = self._prepared.get(id(request))
        if prepared is None or prepared.source is not request:
            prepared = self._prepare(request)
        return await self._send_prepared(prepared, timeout)

    async def _send_prepared(self, prepared: Prepared, timeout: float) -> Reply:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise SendError("the HTTP client is closed")
        deadline = loop.time() + timeout
        idle = prepared.pool.idle
        if idle:
            conn = idle.pop()
            conn.idle = False
        else:
            conn = await self._acquire(prepared.pool, deadline)
        reply = await self._exchange(conn, prepared, deadline)
        if prepared.follow and location(reply) is not None:
            reply = await self._follow(prepared, reply, deadline)
        return reply

    async def _follow(self, prepared: Prepared, reply: Reply, deadline: float) -> Reply:
        """The reply at the end of `reply`'s redirects (see fast_redirects)."""
        request, url, nbytes = prepared.source, prepared.url, reply.bytes_in
        for _ in range(MAX_REDIRECTS):
            where = location(reply)
            if where is None:
                reply.bytes_in = nbytes
                return reply
            request = next_request(request, url, reply.status, where)
            prepared = self._prepare(request, keep=False)
            url = prepared.url
            conn = await self._acquire(prepared.pool, deadline)
            reply = await self._exchange(conn, prepared, deadline)
            nbytes += reply.bytes_in
        if location(reply) is not None:
            raise SendError(f"more than {MAX_REDIRECTS} redirects in a row")
        reply.bytes_in = nbytes
        return reply

    def prepare(self, request: HttpRequest, keep: bool = True) -> Prepared:
        """`request` made ready for `send_soon` (raises SendError if it cannot be sent);
        kept for the next time unless `keep` is False (a request built for one send)."""
        prepared = self._prepared.get(id(request))
        if prepared is None or prepared.source is not request:
            prepared = self._prepare(request, keep)
        return prepared

    def send_soon(self, prepared: Prepared, timeout: float, exchange: Exchange) -> None:
        """`send` without a coroutine: `exchange.replied` or `exchange.failed` is called
        when the request ends, unless `exchange.cancel()` comes first. With an idle
        connection at hand (the hot path) the connection calls it from its parser
        callback; otherwise the request runs as `send`, in a task. `failed` may run
        before `send_soon` returns (a connection found closed)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        exchange.client = self
        idle = prepared.pool.idle
        if not idle or self._closed:
            exchange.ended = True
            exchange.task = _deliver(
                loop.create_task(self._send_prepared(prepared, timeout)), exchange
            )
            return
        conn = idle.pop()
        conn.idle = False
        deadline = loop.time() + timeout
        exchange.ended = False
        exchange.task = None
        exchange.conn = conn
        exchange.prepared = prepared
        exchange.deadline = deadline
        conn.start(self._with_cookies(prepared), exchange, deadline)
        if conn.fut is exchange:
            conn.exchange = exchange
        if deadline < self._sweep_at:
            self._arm(deadline)

    async def _exchange(self, conn: Conn, prepared: Prepared, deadline: float) -> Reply:
        """Send `prepared` on `conn` (whose slot the caller owns) and await the reply."""
        loop = self._loop
        assert loop is not None
        while True:
            fut: asyncio.Future[Reply] = loop.create_future()
            conn.start(self._with_cookies(prepared), fut, deadline)
            if deadline < self._sweep_at:
                self._arm(deadline)
            try:
                reply = await fut
            except Stale:
                if not self._may_retry(conn, prepared):
                    raise _stale_error() from None
                conn = await self._connect(prepared.pool, deadline)
                continue
            except BaseException:
                conn.abort()
                self.release_slot()
                raise
            break
        self.settle(conn)
        if self.cookies is not None:
            self.cookies.keep(reply.headers, prepared.url)
        return reply

    def _with_cookies(self, prepared: Prepared) -> Prepared:
        """`prepared` with the cookies the jar has for it (the one a request waiting
        for a connection had then is not the one it is sent with now)."""
        cookies = self.cookies
        if cookies is None:
            return prepared
        value = cookies.header(prepared.url)
        return prepared if value is None else prepared.with_cookie(value)

    def _may_retry(self, conn: Conn, prepared: Prepared) -> bool:
        """After `Stale`: whether to resend on a fresh connection (keeping the slot).

        Only an idempotent request that found a keep-alive connection already closed
        by the server is sent again, once (RFC 9112 §9.3.1); otherwise the slot is
        released here."""
        if conn.served == 0 or not prepared.idempotent:
            self.release_slot()
            return False
        return True

    async def _resend(self, prepared: Prepared, deadline: float) -> Reply:
        """The one resend `_may_retry` allows, on a fresh connection in the same slot."""
        conn = await self._connect(prepared.pool, deadline)
        return await self._exchange(conn, prepared, deadline)

    def settle(self, conn: Conn) -> None:
        """A reply ended on `conn`: keep it for the next request or let it go."""
        if conn.keep and not conn.closed:
            if self._waiters or self._closed:
                self._reuse(conn)
            else:
                conn.idle = True
                conn.pool.idle.append(conn)
        else:
            conn.close()
            self.release_slot()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SendError("the HTTP client is closed"))
        for pool in self._pools.values():
            pool.idle.clear()
        for conn in list(self.conns):
            conn.idle = False
            if conn.fut is not None:
                conn._fail(SendError("the HTTP client is closed"))
            else:
                conn.close()
        # Let the transports run their connection_lost callbacks.
        for _ in range(3):
            if not self.conns:
                break
            await asyncio.sleep(0)

    # -- internals -----------------------------------------------------------

    def _prepare(self, request: HttpRequest, keep: bool = True) -> Prepared:
        origin = request.endpoint.origin  # one pool per server, whatever the path prefix
        pool = self._pools.get(origin)
        if pool is None:
            context = self._ssl_context
            if origin.tls and context is None:
                context = self._ssl_context = ssl.create_default_context()
            pool = self._pools[origin] = Pool(origin, context)
        prepared = Prepared(request, pool, cookies=self.cookies is not None)
        if prepared.big_body or not keep:
            return prepared  # a cache of big bodies would hold on to them
        if len(self._prepared) >= _PREPARED_MAX:
            self._prepared.clear()
        self._prepared[id(request)] = prepared
        return prepared

    async def _acquire(self, pool: Pool, deadline: float) -> Conn:
        """A connection to `pool`'s endpoint; the caller then owns its slot."""
        while True:
            if pool.idle:
                conn = pool.idle.pop()
                conn.idle = False
                return conn
            if self._count < self._max:
                self._count += 1
                return await self._connect(pool, deadline)
            if self._evict_idle():  # an idle connection elsewhere gave us its slot
                return await self._connect(pool, deadline)
            waiter: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append((pool, waiter))
            try:
                async with asyncio.timeout_at(_when(deadline)):
                    got = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is None:
                        self.release_slot()
                    else:
                        self._reuse(handed)
                if isinstance(exc, TimeoutError):
                    raise RequestTimeout("no free connection within the timeout") from None
                raise
            if got is None:  # a slot, not a connection
                return await self._connect(pool, deadline)
            if not got.closed:
                return got
            self.release_slot()  # handed over, then closed by the server: try again

    async def _connect(self, pool: Pool, deadline: float) -> Conn:
        """A new connection, in a slot the caller owns (released here on failure)."""
        loop = asyncio.get_running_loop()
        endpoint = pool.endpoint
        try:
            async with asyncio.timeout_at(_when(deadline)):
                _, protocol = await loop.create_connection(
                    partial(Conn, self, pool),
                    endpoint.host,
                    endpoint.port,
                    ssl=pool.ssl,
                    server_hostname=pool.server_hostname,
                )
        except TimeoutError:
            self.release_slot()
            raise RequestTimeout(f"connecting to {endpoint.authority} timed out") from None
        except OSError as exc:
            self.release_slot()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectFailed(f"cannot connect to {endpoint.authority}: {reason}") from None
        except BaseException:
            self.release_slot()
            raise
        return protocol

    def _reuse(self, conn: Conn) -> None:
        """A connection that finished a reply and may carry another one."""
        waiters = self._waiters
        while waiters:
            pool, waiter = waiters.popleft()
            if waiter.done():
                continue
            if pool is conn.pool:
                waiter.set_result(conn)
            else:  # the waiter wants another endpoint: give it the slot
                conn.close()
                waiter.set_result(None)
            return
        if self._closed:
            conn.close()
            self._count -= 1
            return
        conn.idle = True
        conn.pool.idle.append(conn)

    def release_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            _, waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._count -= 1

    def _evict_idle(self) -> bool:
        for pool in self._pools.values():
            if pool.idle:
                conn = pool.idle.pop(0)  # the least recently used
                conn.idle = False
                conn.close()
                return True
        return False

    def _arm(self, deadline: float) -> None:
        loop = self._loop
        assert loop is not None
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._sweep_at = deadline
        self._sweep_handle = loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        self._sweep_handle = None
        self._sweep_at = _INF
        limit = loop.time() + _TIMER_SLACK
        expired: list[Conn] = []
        earliest = _INF
        for conn in self.conns:
            due = conn.deadline
            if due:
                if due <= limit:
                    expired.append(conn)
                elif due < earliest:
                    earliest = due
        for conn in expired:
            conn.expire()
        if earliest < _INF and not self._closed:
            self._arm(earliest)
