"""A client's cookies on the fast engine: kept from replies, sent with requests.

Why aiohttp's `CookieJar` rather than rules of our own: a scenario with
`cookies: true` must behave the same on both engines, and the jar is where the
rules live (domain and path matching, expiry by Max-Age or Expires, Secure,
host-only cookies; `unsafe=True` accepts cookies from IP addresses, which a load
test's targets often are). The aiohttp engine uses the same jar the same way.
What it costs is small next to a request: ~6 µs to pick a request's cookies here,
~18 µs to keep a reply's Set-Cookie.

The Cookie header is added to the request's serialised head (merged into the
scenario's own Cookie header, if it sets one: a request carries one at most,
RFC 6265 §5.4). Replies' Set-Cookie headers are read by the connection's full
parser: a client that keeps cookies reads every reply's headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie

import aiohttp
from yarl import URL


class Cookies:
    """One cookie jar (one user's, with one client per user)."""

    def __init__(self) -> None:
        self._jar: aiohttp.CookieJar | None = None  # made in the event loop, at first use

    @property
    def made(self) -> aiohttp.CookieJar | None:
        """The jar, once a reply has set a cookie."""
        return self._jar

    @property
    def jar(self) -> aiohttp.CookieJar:
        jar = self._jar
        if jar is None:
            jar = self._jar = aiohttp.CookieJar(unsafe=True, loop=asyncio.get_running_loop())
        return jar

    def header(self, url: str) -> bytes | None:
        """The Cookie header's value for a request to `url`, or None if no cookie applies."""
        if self._jar is None:
            return None
        found = self._jar.filter_cookies(URL(url))
        if not found:
            return None
        value = "; ".join(f"{name}={morsel.coded_value}" for name, morsel in found.items())
        return value.encode("latin-1", "replace")

    def keep(self, headers: Iterable[tuple[str, str]], url: str) -> None:
        """Keep the cookies a reply from `url` sets (a Set-Cookie that does not parse is
        dropped, as aiohttp drops it)."""
        cookies: SimpleCookie = SimpleCookie()
        for name, value in headers:
            if name.lower() == "set-cookie":
                try:
                    cookies.load(value)
                except CookieError:
                    continue
        if cookies:
            self.jar.update_cookies(cookies, URL(url))


def with_cookie(wire: bytes, head_len: int, cookie: bytes) -> bytes:
    """`wire` (a request whose head is its first `head_len` bytes) with `cookie` added:
    to the end of its Cookie header if it has one, else as a Cookie header of its own."""
    head = wire[:head_len]
    at = head.lower().find(b"\r\ncookie:")
    if at >= 0:
        end = head.index(b"\r\n", at + 2)
        return wire[:end] + b"; " + cookie + wire[end:]
    return head[:-2] + b"Cookie: " + cookie + b"\r\n\r\n" + wire[head_len:]
