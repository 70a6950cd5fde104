"""The seam between the agent's schedulers and its HTTP engines.

Both engines (aiohttp, and the fast uvloop + httptools one) implement
`HttpClient`. A scheduler prepares each request once (`HttpRequest`), then
calls `send` on the hot path; the engine answers with a `Reply` or raises one
of the three `SendError` classes, which map one to one onto outcome classes.
Keeping classification here means both engines count outcomes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

_BY_CLASS = ("error", "error", "2xx", "3xx", "4xx", "5xx")  # by status // 100


def outcome_of_class(status: int) -> str:
    """`outcome_of_status` for a status from a parsed reply (100-999): a lookup."""
    return _BY_CLASS[status // 100] if status < 600 else "error"


def outcome_of_status(status: int) -> str:
    if 200 <= status < 300:
        return "2xx"
    if 300 <= status < 400:
        return "3xx"
    if 400 <= status < 500:
        return "4xx"
    if 500 <= status < 600:
        return "5xx"
    return "error"


class SendError(Exception):
    """A request that got no HTTP status; `outcome` names its class."""

    outcome = "error"


class RequestTimeout(SendError):
    outcome = "timeout"


class ConnectFailed(SendError):
    outcome = "connect_error"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: scheme, host and port, and the base path of the target URL.

    `prefix` is the path of the scenario's `target` without its trailing "/"
    ("" for `http://host:port` or `http://host:port/`). Request paths are
    relative to it, as with k6's or Locust's base URL: `join` gives the
    request-target that goes on the wire (see `join` for the rule).
    """

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """scheme://authority, without the prefix."""
        return f"{self.scheme}://{self.authority}"

    @property
    def origin(self) -> Endpoint:
        """The same server without the prefix: what a connection pool is for."""
        return self if not self.prefix else Endpoint(self.scheme, self.host, self.port)

    def join(self, path: str) -> str:
        """The request-target for a request `path` (path and query).

        The prefix and the path are concatenated, with exactly the "/" between
        them that the path does not bring itself: with target
        `http://h/api` (or `http://h/api/`), `/items` and `items` give
        `/api/items`, `/` gives `/api/`, "" gives `/api` and `?q=1` gives
        `/api?q=1`. Without a prefix the path is sent as it is ("/" if empty,
        a leading "/" added if missing).
        """
        sep = "" if not path or path[0] in "/?" else "/"
        target = self.prefix + sep + path
        if not target:
            return "/"
        return target if target[0] == "/" else "/" + target


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, fully resolved (templating, if any, already applied)."""

    endpoint: Endpoint
    method: str
    path: str  # path plus query, relative to the endpoint's prefix (see `Endpoint.join`)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    want_body: bool = False  # keep the reply's body and headers (extraction, checks)
    follow_redirects: bool = False

    @property
    def target(self) -> str:
        """The request-target on the wire: the endpoint's prefix joined with `path`."""
        return self.endpoint.join(self.path)

    @property
    def url(self) -> str:
        return self.endpoint.base_url + self.target


@dataclass(slots=True)
class Reply:
    """A reply; after redirects, the last one's. `bytes_in` counts every reply of the
    chain, head and body (a chunked body of an earlier hop counts on the fast engine
    only: aiohttp drops it unread)."""

    status: int
    bytes_in: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class HttpClient(Protocol):
    """An engine's client: one keep-alive pool (shared, or one user's own)."""

    async def send(self, request: HttpRequest, timeout: float) -> Reply:
        """Send and await the whole reply; raise a `SendError` subclass on failure."""
        ...

    async def close(self) -> None: ...
