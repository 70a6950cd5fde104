"""The fast engine: HTTP/1.1 on raw event-loop transports, parsed by httptools.

Why not aiohttp on the hot path: aiohttp spends ~60 µs of CPU per request on
one core against nginx (request and response objects, multidict headers,
stream readers, timer contexts, tracing hooks, cookie handling), which makes
the load generator, not the target, the bottleneck. A load tester sends the
same few requests again and again, so almost all of that work can be done
once: here each `HttpRequest` is serialised to bytes once and cached, each
connection is an `asyncio.Protocol` that owns one `httptools` (llhttp)
parser for its lifetime, and a reply costs one future, one `Reply` and two
Python callbacks (headers complete, message complete). Header and body bytes
only become Python objects when the request asked for them (`want_body`).
Timeouts use one sweep timer per client instead of a timer per request.

What it leaves out, on purpose: cookies, redirects, proxies, content
decoding (gzip), HTTP/2 and pipelining. A scenario that needs cookies or
redirects runs on the aiohttp engine instead (see `engines.choose_engine`);
a redirecting request sent here anyway fails loudly with a `SendError`
rather than silently reporting the 3xx.

Reply accounting: `bytes_in` is the bytes of the reply as they came off the
socket (status line, headers, chunk framing, body), as wrk counts them.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from functools import partial
from typing import Final, cast
from urllib.parse import quote

import httptools
from loadctl.agent.http import (
    ConnectFailed,
    Endpoint,
    HttpRequest,
    Reply,
    RequestTimeout,
    SendError,
)

from loadctl import __version__

USER_AGENT: Final = f"loadctl/{__version__}"
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_PREPARED_MAX: Final = 4096  # cached serialised requests per client; cleared when full
_BIG_BODY: Final = 64 * 1024  # larger bodies are written as they are, and never cached
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEAD_MAX: Final = 1 << 20  # a reply head larger than this is an error
_TIMER_SLACK: Final = 0.001  # uvloop timers have millisecond resolution
_INF: Final = float("inf")
# Characters left as they are when a non-ASCII path is percent-encoded.
_PATH_SAFE: Final = "/?#[]@!$&'()*+,;=:%~-._"


def _when(deadline: float) -> float | None:
    return deadline if deadline < _INF else None


class _Stale(Exception):
    """The server closed the connection before any byte of the reply (internal)."""


class _HeadDone(Exception):
    """Raised from a parser callback to stop after a HEAD reply's headers (internal)."""


def serialise_request(request: HttpRequest) -> bytes:
    """The request as it goes on the wire: head (Host, User-Agent, Content-Length) and body."""
    return serialise_head(request) + request.body


def serialise_head(request: HttpRequest) -> bytes:
    """The request head, with Host, User-Agent (unless given) and Content-Length."""
    method = request.method.upper()
    if not _METHOD.fullmatch(method):
        raise SendError(f"invalid HTTP method {request.method!r}")
    path = request.path or "/"
    if not path.isascii() or any(c <= " " or c == "\x7f" for c in path):
        path = quote(path, safe=_PATH_SAFE)
    lines = [f"{method} {path} HTTP/1.1"]
    names = {name.lower() for name, _ in request.headers}
    if "host" not in names:
        lines.append(f"Host: {request.endpoint.authority}")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    for name, value in request.headers:
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding"):
            continue  # the body is bytes: its length is set below
        if not name or any(c in name for c in ": \r\n\t") or "\r" in value or "\n" in value:
            raise SendError(f"invalid header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    if request.body or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(request.body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8")


def eof_delimited(head: bytes) -> bool:
    """True when the final (non-1xx) reply head in `head` has a body that ends at EOF."""
    for block in head.split(b"\r\n\r\n"):
        if block[9:10] == b"1":  # "HTTP/1.1 1xx": an informational reply, skip it
            continue
        for line in block.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                return False
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True
    return False


class _Pool:
    """Idle keep-alive connections to one endpoint."""

    __slots__ = ("endpoint", "idle", "server_hostname", "ssl")

    def __init__(self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.idle: list[_Conn] = []
        self.ssl = ssl_context if endpoint.tls else None
        self.server_hostname = endpoint.host if endpoint.tls else None


class _Prepared:
    """An `HttpRequest` made ready for the wire, cached per client."""

    __slots__ = ("big_body", "idempotent", "is_head", "pool", "request", "want_body", "wire")

    def __init__(self, request: HttpRequest, pool: _Pool) -> None:
        self.request = request
        head = serialise_head(request)
        body = request.body
        if len(body) > _BIG_BODY:  # not copied: written after the head
            self.wire, self.big_body = head, body
        else:
            self.wire, self.big_body = head + body, b""
        method = request.method.upper()
        self.pool = pool
        self.is_head = method == "HEAD"
        self.idempotent = method in IDEMPOTENT_METHODS
        self.want_body = request.want_body


class _Collector:
    """Parser callbacks that keep headers and body (requests with `want_body`)."""

    __slots__ = ("chunks", "conn", "headers")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_headers_complete(self) -> None:
        self.conn.on_headers_complete()

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()


class _Conn(asyncio.Protocol):
    """One keep-alive connection; also the lean parser's callbacks (no header/body ones)."""

    __slots__ = (
        "closed",
        "collector",
        "deadline",
        "full",
        "fut",
        "head",
        "headers_done",
        "idle",
        "is_head",
        "keep",
        "lean",
        "nbytes",
        "owner",
        "parser",
        "pool",
        "served",
        "transport",
        "want",
    )

    def __init__(self, owner: FastClient, pool: _Pool) -> None:
        self.owner = owner
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.lean = httptools.HttpResponseParser(self)
        self.full: httptools.HttpResponseParser | None = None
        self.collector: _Collector | None = None
        self.parser = self.lean
        self.fut: asyncio.Future[Reply] | None = None
        self.deadline = 0.0  # loop time the reply in flight is due by; 0.0: none in flight
        self.nbytes = 0
        self.head: bytes | None = None  # reply bytes up to the end of the head (rare paths)
        self.headers_done = False
        self.is_head = False
        self.want = False
        self.keep = True
        self.idle = False
        self.closed = False
        self.served = 0

    # -- transport callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.fut is None:  # bytes nobody asked for (say, a 408 before closing): drop it
            self.abort()
            return
        self.nbytes += len(data)
        if not self.headers_done:
            head = self.head
            self.head = data if head is None else head + data
            if head is not None and len(self.head) > _HEAD_MAX:
                self._fail(SendError("reply head too large"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadDone):
                self._new_parser()  # the parser stopped in an error state
            else:
                self._fail(SendError(f"bad HTTP reply: {exc.__context__ or exc}"))
        except httptools.HttpParserUpgrade:
            self._fail(SendError("unexpected protocol upgrade in the reply"))
        except httptools.HttpParserError as exc:
            self._fail(SendError(f"bad HTTP reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner._conns.discard(self)
        if self.idle:
            self.idle = False
            self.pool.idle.remove(self)
            self.owner._release_slot()
            return
        fut = self.fut
        if fut is None or fut.done():
            return
        if self.nbytes == 0:
            self.fut = None
            self.deadline = 0.0
            fut.set_exception(_Stale())
        elif self.headers_done and self.head is not None and eof_delimited(self.head):
            self._complete(self.parser.get_status_code(), False)
        else:
            self._fail(SendError("the connection closed in the middle of the reply"))

    # -- parser callbacks ----------------------------------------------------

    def on_headers_complete(self) -> None:
        # From here on `head` holds the reply head: enough to tell, should the
        # connection close before the message completes, whether the body was
        # one that ends at EOF (see connection_lost).
        self.headers_done = True
        if self.is_head:
            parser = self.parser
            status = parser.get_status_code()
            if status >= 200:
                self._complete(status, parser.should_keep_alive())
                raise _HeadDone

    def on_message_complete(self) -> None:
        # The hot path: inlines _complete.
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # 1xx informational: the final reply follows
            self.headers_done = False
            collector = self.collector
            if self.want and collector is not None:
                collector.headers = []
                collector.chunks = []
            return
        fut = self.fut
        self.fut = None
        self.deadline = 0.0
        self.served += 1
        if fut is None or fut.done():  # nobody waits for this reply: do not trust the connection
            self.keep = False
            return
        self.keep = parser.should_keep_alive()
        if self.want:
            collector = self.collector
            assert collector is not None
            fut.set_result(
                Reply(status, self.nbytes, collector.headers, b"".join(collector.chunks))
            )
        else:
            fut.set_result(Reply(status, self.nbytes))

    # -- request life --------------------------------------------------------

    def start(self, prepared: _Prepared, fut: asyncio.Future[Reply], deadline: float) -> None:
        """Send `prepared`; `fut` gets the `Reply` or a `SendError`."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            fut.set_exception(_Stale())
            return
        self.fut = fut
        self.deadline = deadline
        self.nbytes = 0
        self.head = None
        self.headers_done = False
        self.is_head = prepared.is_head
        if prepared.want_body:
            self.want = True
            collector = self.collector
            if collector is None:
                collector = self.collector = _Collector(self)
            else:
                collector.headers = []
                collector.chunks = []
            full = self.full
            if full is None:
                full = self.full = httptools.HttpResponseParser(collector)
            self.parser = full
        else:
            self.want = False
            self.parser = self.lean
        transport.write(prepared.wire)
        if prepared.big_body:
            transport.write(prepared.big_body)

    def _complete(self, status: int, keep: bool) -> None:
        fut = self.fut
        self.fut = None
        self.deadline = 0.0
        self.served += 1
        self.keep = keep
        if fut is None or fut.done():  # nobody waits for this reply: do not trust the connection
            self.keep = False
            return
        collector = self.collector
        if self.want and collector is not None:
            fut.set_result(
                Reply(status, self.nbytes, collector.headers, b"".join(collector.chunks))
            )
        else:
            fut.set_result(Reply(status, self.nbytes))

    def _new_parser(self) -> None:
        if self.parser is self.lean:
            self.parser = self.lean = httptools.HttpResponseParser(self)
        else:
            self.parser = self.full = httptools.HttpResponseParser(self.collector)

    def _fail(self, exc: SendError) -> None:
        fut = self.fut
        self.fut = None
        self.deadline = 0.0
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        self.abort()

    def expire(self) -> None:
        """The reply in flight is past its deadline: fail it and drop the connection."""
        self._fail(RequestTimeout("no complete reply within the timeout"))

    def abort(self) -> None:
        self.closed = True
        self.keep = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self.keep = False
        if self.transport is not None:
            self.transport.close()


class FastClient:
    """`HttpClient` on raw transports: a keep-alive pool of at most `max_connections`.

    The limit counts connections to all endpoints together (as aiohttp's
    `limit`); a request that finds none free waits for one within its timeout.
    `ssl_context` is used for https endpoints (default: the system's verifying
    context). Must be used from one event loop, the one running at the first
    `send`.
    """

    def __init__(self, max_connections: int, *, ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max = max_connections
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[Endpoint, _Pool] = {}
        self._prepared: dict[int, _Prepared] = {}
        self._conns: set[_Conn] = set()
        self._count = 0  # slots taken: live connections, connections being made, hand-overs
        self._waiters: collections.deque[tuple[_Pool, asyncio.Future[_Conn | None]]] = (
            collections.deque()
        )
        self._sweep_at = _INF
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connections(self) -> int:
        """Open connections (idle or busy)."""
        return len(self._conns)

    async def send(self, request: HttpRequest, timeout: float) -> Reply:
        prepared = self._prepared.get(id(request))
        if prepared is None or prepared.request is not request:
            prepared = self._prepare(request)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise SendError("the HTTP client is closed")
        deadline = loop.time() + timeout
        pool = prepared.pool
        idle = pool.idle
        if idle:
            conn = idle.pop()
            conn.idle = False
        else:
            conn = await self._acquire(pool, deadline)
        while True:
            fut: asyncio.Future[Reply] = loop.create_future()
            conn.start(prepared, fut, deadline)
            if deadline < self._sweep_at:
                self._arm(deadline)
            try:
                reply = await fut
            except _Stale:
                if conn.served == 0 or not prepared.idempotent:
                    self._release_slot()
                    raise ConnectFailed(
                        "the server closed the connection before replying"
                    ) from None
                # A keep-alive connection the server had already closed: retry
                # once, on a fresh connection (RFC 9112 §9.3.1).
                conn = await self._connect(pool, deadline)
                continue
            except BaseException:
                conn.abort()
                self._release_slot()
                raise
            break
        if conn.keep and not conn.closed:
            if self._waiters or self._closed:
                self._reuse(conn)
            else:
                conn.idle = True
                idle.append(conn)
        else:
            conn.close()
            self._release_slot()
        return reply

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
        for conn in list(self._conns):
            conn.idle = False
            if conn.fut is not None:
                conn._fail(SendError("the HTTP client is closed"))
            else:
                conn.close()
        # Let the transports run their connection_lost callbacks.
        for _ in range(3):
            if not self._conns:
                break
            await asyncio.sleep(0)

    # -- internals -----------------------------------------------------------

    def _prepare(self, request: HttpRequest) -> _Prepared:
        if request.follow_redirects:
            raise SendError(
                "the fast engine does not follow redirects; use the aiohttp engine "
                "(engines.choose_engine picks it when a request follows redirects)"
            )
        pool = self._pools.get(request.endpoint)
        if pool is None:
            context = self._ssl_context
            if request.endpoint.tls and context is None:
                context = self._ssl_context = ssl.create_default_context()
            pool = self._pools[request.endpoint] = _Pool(request.endpoint, context)
        prepared = _Prepared(request, pool)
        if prepared.big_body:
            return prepared  # a cache of big bodies would hold on to them
        if len(self._prepared) >= _PREPARED_MAX:
            self._prepared.clear()
        self._prepared[id(request)] = prepared
        return prepared

    async def _acquire(self, pool: _Pool, deadline: float) -> _Conn:
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
            waiter: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append((pool, waiter))
            try:
                async with asyncio.timeout_at(_when(deadline)):
                    got = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()
                    if handed is None:
                        self._release_slot()
                    else:
                        self._reuse(handed)
                if isinstance(exc, TimeoutError):
                    raise RequestTimeout("no free connection within the timeout") from None
                raise
            if got is None:  # a slot, not a connection
                return await self._connect(pool, deadline)
            if not got.closed:
                return got
            self._release_slot()  # handed over, then closed by the server: try again

    async def _connect(self, pool: _Pool, deadline: float) -> _Conn:
        """A new connection, in a slot the caller owns (released here on failure)."""
        loop = asyncio.get_running_loop()
        endpoint = pool.endpoint
        try:
            async with asyncio.timeout_at(_when(deadline)):
                _, protocol = await loop.create_connection(
                    partial(_Conn, self, pool),
                    endpoint.host,
                    endpoint.port,
                    ssl=pool.ssl,
                    server_hostname=pool.server_hostname,
                )
        except TimeoutError:
            self._release_slot()
            raise RequestTimeout(f"connecting to {endpoint.authority} timed out") from None
        except OSError as exc:
            self._release_slot()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectFailed(f"cannot connect to {endpoint.authority}: {reason}") from None
        except BaseException:
            self._release_slot()
            raise
        return protocol

    def _reuse(self, conn: _Conn) -> None:
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

    def _release_slot(self) -> None:
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
        expired: list[_Conn] = []
        earliest = _INF
        for conn in self._conns:
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
