"""The fast engine's connection: an asyncio Protocol that owns one llhttp parser.

One `Conn` carries one request at a time (no pipelining). The hot path is
`start` (write the cached request bytes) then `data_received` ->
`on_message_complete` (complete the waiter with a `Reply`). The waiter is the
future `FastClient.send` awaits, or an `Exchange` that runs the caller's callback
at once (`FastClient.send_soon`). The connection is
also the callbacks object of its "lean" parser, which has no header or body
callbacks, so header and body bytes never become Python objects; requests
whose reply is read (`Prepared.reads`: `want_body`, a redirect to follow, cookies
to keep) use a second parser whose callbacks (`Collector`) keep them.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import types
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools

from loadctl.agent.fast_cookies import with_cookie
from loadctl.agent.fast_wire import (
    IDEMPOTENT_METHODS,
    eof_delimited,
    request_line,
    serialise_head,
)
from loadctl.agent.http import Endpoint, HttpRequest, Reply, RequestTimeout, SendError

if TYPE_CHECKING:
    from loadctl.agent.engine_fast import Exchange, FastClient

BIG_BODY: Final = 64 * 1024  # larger bodies are written as they are, and never cached
_HEAD_MAX: Final = 1 << 20  # a reply head larger than this is an error


def _load_lane() -> types.ModuleType | None:
    if os.environ.get("LOADCTL_NO_KERNEL"):
        return None
    try:
        from loadctl.agent import _lane
    except ImportError:
        return None
    return _lane


class _PyConnCore:
    """`_lane.ConnCore` without the compiled lane: the same fields, no lane."""

    __slots__ = ("deadline", "keep", "lane", "nbytes", "served", "writer")  # see _lane.pyi

    def detach_lane(self) -> None:
        pass


# The compiled lane (agent/_lane.c; None if it was not built, or LOADCTL_NO_KERNEL=1).
LANE = _load_lane()
if TYPE_CHECKING:
    from loadctl.agent._lane import ConnCore as _ConnCore
else:
    _ConnCore = _PyConnCore if LANE is None else LANE.ConnCore


class Waiter(Protocol):
    """What a request in flight completes: an asyncio future, or an `Exchange`."""

    def done(self) -> bool: ...

    def set_result(self, reply: Reply, /) -> None: ...

    def set_exception(self, exc: BaseException, /) -> None: ...


class Stale(Exception):
    """The server closed the connection before any byte of the reply."""


class _HeadDone(Exception):
    """Raised from a parser callback to stop after a HEAD reply's headers."""


class Pool:
    """Idle keep-alive connections to one endpoint."""

    __slots__ = ("endpoint", "idle", "server_hostname", "ssl")

    def __init__(self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.idle: list[Conn] = []
        self.ssl = ssl_context if endpoint.tls else None
        self.server_hostname = endpoint.host if endpoint.tls else None


class Prepared:
    """An `HttpRequest` made ready for the wire, cached per client."""

    __slots__ = (
        "big_body",
        "follow",
        "head_len",
        "idempotent",
        "is_head",
        "line_end",
        "method",
        "pool",
        "reads",
        "source",
        "target",
        "wire",
    )

    def __init__(self, request: HttpRequest, pool: Pool, cookies: bool = False) -> None:
        self.source = request  # a variant's too (`with_path`, `with_cookie`): not its path
        self.follow = request.follow_redirects
        # the reply's headers and body are collected: read by a check, or for its
        # Location, or for its Set-Cookie (`cookies`: the client keeps them)
        self.reads = request.want_body or self.follow or cookies
        head = serialise_head(request)
        self.line_end = head.index(b"\r\n") + 2  # the header block follows
        self.head_len = len(head)
        self.target = request.target
        body = request.body
        if len(body) > BIG_BODY:  # not copied: written after the head
            self.wire, self.big_body = head, body
        else:
            self.wire, self.big_body = head + body, b""
        method = self.method = request.method.upper()
        self.pool = pool
        self.is_head = method == "HEAD"
        self.idempotent = method in IDEMPOTENT_METHODS

    @property
    def url(self) -> str:
        return self.pool.endpoint.base_url + self.target

    def with_path(self, path: str) -> Prepared:
        """The same request with another path: its head is that path's request line and
        the header block already serialised (what `serialise_head` would give for a
        request that differs in its path alone). Not cached by the client."""
        target = self.source.endpoint.join(path)
        line = request_line(self.method, target)
        head_len = self.head_len - self.line_end + len(line)
        return self._variant(line + self.wire[self.line_end :], len(line), head_len, target)

    def with_cookie(self, cookie: bytes) -> Prepared:
        """The same request with `cookie` in its Cookie header. Not cached by the client."""
        wire = with_cookie(self.wire, self.head_len, cookie)
        head_len = self.head_len + len(wire) - len(self.wire)
        return self._variant(wire, self.line_end, head_len, self.target)

    def _variant(self, wire: bytes, line_end: int, head_len: int, target: str) -> Prepared:
        other = Prepared.__new__(Prepared)
        other.source = self.source
        other.follow = self.follow
        other.wire = wire
        other.line_end = line_end
        other.head_len = head_len
        other.target = target
        other.big_body = self.big_body
        other.method = self.method
        other.pool = self.pool
        other.is_head = self.is_head
        other.idempotent = self.idempotent
        other.reads = self.reads
        return other


class Collector:
    """Parser callbacks that keep headers and body (requests whose reply is read)."""

    __slots__ = ("chunks", "conn", "headers")

    def __init__(self, conn: Conn) -> None:
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


class Conn(_ConnCore, asyncio.Protocol):
    """One keep-alive connection; also the lean parser's callbacks (no header/body ones).

    Its base holds the fields it shares with the compiled lane (`nbytes`, `deadline`,
    `served`, `keep`, `lane`, `writer`), and with the lane built, `data_received`: a
    request of a user's lane is framed, recorded and followed by the next one in C;
    every other reply goes to `_data_received` here (see agent/_lane.c)."""

    __slots__ = (
        "closed",
        "collector",
        "exchange",
        "full",
        "fut",
        "head",
        "headers_done",
        "idle",
        "is_head",
        "lean",
        "owner",
        "parser",
        "pool",
        "transport",
        "want",
    )

    def __init__(self, owner: FastClient, pool: Pool) -> None:
        self.owner = owner
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.writer = None
        self.lane = None
        self.lean = httptools.HttpResponseParser(self)
        self.full: httptools.HttpResponseParser | None = None
        self.collector: Collector | None = None
        self.parser = self.lean
        self.fut: Waiter | None = None
        self.exchange: Exchange | None = None  # `fut`, when it takes replies directly
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
        self.writer = self.transport.write
        self.owner.conns.add(self)

    def _data_received(self, data: bytes) -> None:
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
        parser = self.parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadDone):
                self._new_parser(parser)  # it stopped in an error state
            else:
                self._fail(SendError(f"bad HTTP reply: {exc.__context__ or exc}"))
        except httptools.HttpParserUpgrade:
            self._fail(SendError("unexpected protocol upgrade in the reply"))
        except httptools.HttpParserError as exc:
            self._fail(SendError(f"bad HTTP reply: {exc}"))

    if LANE is None:
        data_received = _data_received

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lane is not None:
            self.detach_lane()
        self.closed = True
        self.owner.conns.discard(self)
        if self.idle:
            self.idle = False
            self.pool.idle.remove(self)
            self.owner.release_slot()
            return
        fut = self.fut
        if fut is None or fut.done():
            return
        if self.nbytes == 0:
            self.fut = None
            self.exchange = None
            self.deadline = 0.0
            fut.set_exception(Stale())
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
        exchange = self.exchange
        self.fut = None
        self.exchange = None
        self.deadline = 0.0
        self.served += 1
        if exchange is not None and not exchange.ended:  # `send_soon`'s hot path
            self.keep = parser.should_keep_alive()
            if self.want:
                exchange.set_result(self._reply(status))
            else:
                exchange.reply_now(status, self.nbytes)
            return
        if fut is None or fut.done():  # nobody waits for this reply: do not trust the connection
            self.keep = False
            return
        self.keep = parser.should_keep_alive()
        fut.set_result(self._reply(status))

    # -- request life --------------------------------------------------------

    def start(self, prepared: Prepared, fut: Waiter, deadline: float) -> None:
        """Send `prepared`; `fut` gets the `Reply` or a `SendError` (or `Stale`)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            fut.set_exception(Stale())
            return
        self.fut = fut
        self.exchange = None
        self.deadline = deadline
        self.nbytes = 0
        self.head = None
        self.headers_done = False
        self.is_head = prepared.is_head
        if prepared.reads:
            self.want = True
            collector = self.collector
            if collector is None:
                collector = self.collector = Collector(self)
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
        self.exchange = None
        self.deadline = 0.0
        self.served += 1
        self.keep = keep
        if fut is None or fut.done():  # nobody waits for this reply: do not trust the connection
            self.keep = False
            return
        fut.set_result(self._reply(status))

    def _reply(self, status: int) -> Reply:
        """The reply as its waiter gets it: with headers and body if it wanted them."""
        collector = self.collector
        if self.want and collector is not None:
            return Reply(status, self.nbytes, collector.headers, b"".join(collector.chunks))
        return Reply(status, self.nbytes)

    def _new_parser(self, stopped: httptools.HttpResponseParser) -> None:
        """Replace `stopped`, whichever of the two it is: a callback of `send_soon` may
        have started the next request (and chosen its parser) before it stopped."""
        if stopped is self.lean:
            self.lean = httptools.HttpResponseParser(self)
            fresh = self.lean
        else:
            self.full = fresh = httptools.HttpResponseParser(self.collector)
        if self.parser is stopped:
            self.parser = fresh

    def _lane_complete(self, status: int) -> None:
        """A reply of the lane that the lane does not follow with the next request
        (see agent/_lane.c): complete it here, the way `on_message_complete` does."""
        exchange = self.exchange
        self.fut = None
        self.exchange = None
        self.deadline = 0.0
        if exchange is None or exchange.ended:  # nobody waits: do not trust the connection
            self.keep = False
            return
        exchange.reply_now(status, self.nbytes)

    def _fail(self, exc: SendError) -> None:
        if self.lane is not None:
            self.detach_lane()
        fut = self.fut
        self.fut = None
        self.exchange = None
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
