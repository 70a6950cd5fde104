"""Choosing and making the agent's HTTP engine.

"fast" (raw uvloop transports + httptools, see `engine_fast`) is the default:
it costs a fraction of aiohttp's CPU per request. It keeps cookies but does not
follow redirects, so a scenario that needs redirects runs on "aiohttp"; asking
for "fast" explicitly then falls back with a note for the user, rather than
running a scenario whose redirects silently do nothing.
"""

from __future__ import annotations

import ssl
from typing import Final

from loadctl.agent.engine_aiohttp import AiohttpClient
from loadctl.agent.engine_fast import FastClient
from loadctl.agent.http import HttpClient

ENGINES: Final = ("fast", "aiohttp")
DEFAULT_ENGINE: Final = "fast"


def choose_engine(requested: str | None, needs_redirects: bool) -> tuple[str, str | None]:
    """The engine to run, and a note for the user when it is not the one requested.

    `requested` is the user's choice (None or "auto": let loadctl pick).
    Raises ValueError for an unknown engine name.
    """
    if requested is not None and requested != "auto" and requested not in ENGINES:
        raise ValueError(
            f"unknown HTTP engine {requested!r}: choose one of {', '.join(ENGINES)} (or auto)"
        )
    if requested == "aiohttp":
        return "aiohttp", None
    if not needs_redirects:
        return DEFAULT_ENGINE, None
    if requested == "fast":
        return "aiohttp", (
            "the fast engine does not follow redirects, which this scenario uses: "
            "running on the aiohttp engine instead (more CPU per request)"
        )
    return "aiohttp", None


def make_client(
    engine: str,
    max_connections: int,
    *,
    cookies: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpClient:
    """A client of `engine` with a keep-alive pool of at most `max_connections`.

    `cookies=True` gives the client its own cookie jar. `ssl_context` is used for
    https targets (default: the system's verifying context).
    """
    if engine == "fast":
        return FastClient(max_connections, cookies=cookies, ssl_context=ssl_context)
    if engine == "aiohttp":
        return AiohttpClient(max_connections, cookies=cookies, ssl_context=ssl_context)
    raise ValueError(f"unknown HTTP engine {engine!r}: choose one of {', '.join(ENGINES)}")
