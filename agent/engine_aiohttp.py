"""The aiohttp engine: the well-trodden client, slower per request.

One `aiohttp.ClientSession` with one keep-alive `TCPConnector` pool of at
most `max_connections` connections. It runs when a scenario asks for it
(`engine: aiohttp`); the fast engine does the same (cookies and redirects
included) at a fraction of the CPU per request.

To send the same bytes as the fast engine, it adds no `Accept-Encoding`
header and does not decode compressed bodies (a request that sets
`Accept-Encoding` gets the body as the server sent it).

Reply accounting: aiohttp does not expose the bytes read from the socket, so
`bytes_in` is rebuilt from the reply: status line, raw headers, blank line
and the body bytes (chunk framing, if any, is not counted; for a reply with
a Content-Length this equals the wire bytes, as the fast engine counts them).
Replies of followed redirects add their heads.

Resending: aiohttp (3.14) sends an idempotent request a second time, on a new
connection, whenever the first attempt's connection breaks before the reply,
even a brand-new one. A load generator must not: a reset on a fresh connection
is the server's (or the network's) answer, to be counted, and resending it sent
the target a request nobody scheduled and turned half the resets of a lossy
link into timeouts or successes. So its retry is switched off, and this engine
resends as the fast engine does: once, an idempotent request whose kept-alive
connection the server had closed (RFC 9112 §9.3.1), within the same deadline.
Whether the connection was a kept-alive one is told by the connector, which
says when it opens a new one: a trace on the session could tell it too, but
aiohttp's tracing costs ~70,000 instructions per request, a quarter of aiohttp's
own cost.

Per request, the session does the least it can: no default headers to merge
(each request's headers are prepared once, User-Agent included) and no trace.
"""

from __future__ import annotations

import ssl
import time
from contextvars import ContextVar
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from loadctl import __version__
from loadctl.agent.fast_wire import IDEMPOTENT_METHODS
from loadctl.agent.http import (
    ConnectFailed,
    HttpRequest,
    Reply,
    RequestTimeout,
    SendError,
)

USER_AGENT: Final = f"loadctl/{__version__}"
_PREPARED_MAX: Final = 4096  # cached per-request objects per client; cleared when full
_TIMEOUTS_MAX: Final = 256
_BIG_BODY: Final = 64 * 1024

# No response yet: the request never reached a server able to answer it.
_NO_REPLY_ERRORS: Final = (
    aiohttp.ClientConnectorError,  # refused, DNS, TLS handshake and certificates
    aiohttp.ServerDisconnectedError,  # accepted, then closed without a reply
    aiohttp.ClientOSError,  # reset before the reply
)


# Whether the connection of the current task's last attempt was a kept-alive one: set
# True before each attempt, and False by the connector when it makes a new connection
# (inside `session.request`, which runs in the sending task, so in its context). Taking
# a pooled connection, the common case, then costs nothing at all.
_REUSED: Final[ContextVar[bool]] = ContextVar("loadctl_aiohttp_reused", default=False)


class _ReuseTellingConnector(aiohttp.TCPConnector):
    """A `TCPConnector` that tells the sending task when it made a new connection.

    `_create_connection` is aiohttp's private step of `connect()` that opens a new
    connection; should a release of aiohttp rename it, the engine tests of a stale
    keep-alive (resent) and of a fresh connection closed unanswered (not resent)
    fail."""

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Any:
        _REUSED.set(False)  # before: a connection that fails to open is not a kept-alive one
        return await super()._create_connection(req, traces, timeout)


class _Prepared:
    __slots__ = ("data", "headers", "method", "redirects", "request", "url", "want_body")

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.method = request.method.upper()
        target = request.target  # the endpoint's prefix joined with the request's path
        try:
            self.url = URL(request.url, encoded=target.isascii() and " " not in target)
        except ValueError as exc:
            raise SendError(f"invalid URL {request.url!r}: {exc}") from None
        headers: CIMultiDict[str] = CIMultiDict(request.headers)
        headers.popall("Content-Length", None)
        headers.popall("Transfer-Encoding", None)
        headers.setdefault("User-Agent", USER_AGENT)
        self.headers = headers
        self.data = (
            request.body if request.body or self.method in ("POST", "PUT", "PATCH") else None
        )
        self.want_body = request.want_body
        self.redirects = request.follow_redirects


def _head_size(resp: aiohttp.ClientResponse) -> int:
    # "HTTP/1.1 200 OK\r\n" + "name: value\r\n" per header + "\r\n"
    size = 15 + len(resp.reason or "") + 2
    for name, value in resp.raw_headers:
        size += len(name) + len(value) + 4
    return size


class AiohttpClient:
    """`HttpClient` on aiohttp.

    `cookies=True` gives this client its own cookie jar (one client per
    virtual user gives each user its own session cookies); it accepts cookies
    from IP-address hosts such as 127.0.0.1. `ssl_context` is used for https
    (default: the system's verifying context). The session is opened in the
    running loop at the first `send`. As in the fast engine, the timeout covers
    the whole request, from waiting for a connection to the last body byte.
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
        self._max = max_connections
        self._cookies = cookies
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._prepared: dict[int, _Prepared] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._closed = False

    @property
    def cookie_jar(self) -> aiohttp.abc.AbstractCookieJar | None:
        """The client's cookie jar (None before the first send or without cookies)."""
        if self._session is None or not self._cookies:
            return None
        return self._session.cookie_jar

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SendError("the HTTP client is closed")
        connector = _ReuseTellingConnector(
            limit=self._max,
            limit_per_host=0,
            ssl=self._ssl_context if self._ssl_context is not None else True,
        )
        jar: aiohttp.abc.AbstractCookieJar = (
            aiohttp.CookieJar(unsafe=True) if self._cookies else aiohttp.DummyCookieJar()
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=jar,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),  # ours is in each request's
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        self._session._retry_connection = False  # see the module docstring: we resend ourselves
        return self._session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            if len(self._timeouts) >= _TIMEOUTS_MAX:
                self._timeouts.clear()
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(
                total=seconds if seconds < float("inf") else None
            )
        return timeout

    async def send(self, request: HttpRequest, timeout: float) -> Reply:
        prepared = self._prepared.get(id(request))
        if prepared is None or prepared.request is not request:
            prepared = _Prepared(request)
            if len(request.body) <= _BIG_BODY:  # a cache of big bodies would hold on to them
                if len(self._prepared) >= _PREPARED_MAX:
                    self._prepared.clear()
                self._prepared[id(request)] = prepared
        session = self._session
        if session is None:
            session = self._open()
        elif self._closed:
            raise SendError("the HTTP client is closed")
        resp = await self._request(session, prepared, timeout)
        try:
            if prepared.want_body:
                body = await resp.read()
                nbytes = len(body)
                reply = Reply(resp.status, 0, list(resp.headers.items()), body)
            else:
                nbytes = 0
                content = resp.content
                while chunk := await content.readany():
                    nbytes += len(chunk)
                reply = Reply(resp.status, 0)
        except TimeoutError:
            raise RequestTimeout("the reply did not complete within the timeout") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise SendError(f"reply cut short: {_describe(exc)}") from None
        finally:
            resp.release()
        nbytes += _head_size(resp)
        for earlier in resp.history:  # aiohttp let their bodies go unread: count their length
            nbytes += _head_size(earlier) + (earlier.content_length or 0)
        reply.bytes_in = nbytes
        return reply

    async def _request(
        self, session: aiohttp.ClientSession, prepared: _Prepared, timeout: float
    ) -> aiohttp.ClientResponse:
        """The reply's head; resent once if a kept-alive connection broke before it."""
        limit = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        resend = prepared.method in IDEMPOTENT_METHODS
        while True:
            _REUSED.set(True)  # unless the connector opens a new connection
            try:
                return await session.request(
                    prepared.method,
                    prepared.url,
                    headers=prepared.headers,
                    data=prepared.data,
                    allow_redirects=prepared.redirects,
                    timeout=limit,
                )
            except TimeoutError:
                raise RequestTimeout("no reply within the timeout") from None
            except _NO_REPLY_ERRORS as exc:
                left = deadline - time.monotonic()
                if not (resend and _REUSED.get() and left > 0):
                    raise ConnectFailed(_describe(exc)) from None
            except (aiohttp.ClientError, ValueError) as exc:
                raise SendError(_describe(exc)) from None
            resend = False  # once
            limit = aiohttp.ClientTimeout(total=left)

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
