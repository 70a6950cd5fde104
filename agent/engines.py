"""Choosing and making the agent's HTTP engine.

"fast" (raw uvloop transports + httptools, see `engine_fast`) is the default:
it costs a fraction of aiohttp's CPU per request, and does what the scenarios
ask of aiohttp (cookies, redirects). "aiohttp" runs when a scenario asks for it.
"""

from __future__ import annotations

import ssl
from typing import Final

from loadctl.agent.engine_aiohttp import AiohttpClient
from loadctl.agent.engine_fast import FastClient
from loadctl.agent.http import HttpClient

ENGINES: Final = ("fast", "aiohttp")
DEFAULT_ENGINE: Final = "fast"


def choose_engine(requested: str | None) -> str:
    """The engine to run: `requested` (None or "auto": let loadctl pick, the fast one).
    Raises ValueError for an unknown engine name."""
    if requested is None or requested == "auto":
        return DEFAULT_ENGINE
    if requested not in ENGINES:
        raise ValueError(
            f"unknown HTTP engine {requested!r}: choose one of {', '.join(ENGINES)} (or auto)"
        )
    return requested


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
