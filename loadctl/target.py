"""`loadctl target`: the built-in demo target service (an inventory-shaped HTTP API).

Used by `loadctl demo`, by the test suite as the real HTTP target and by the
benchmarks. The app lives in `target_app`, its state in `target_state`, latency
specs in `target_spec`; this module runs it (in-process or as the CLI command).

Endpoints::

    GET  /health                       {"status": "ok"}
    GET  /metrics                      Prometheus text: requests by route and status
    GET  /delay/{ms}                   answers after ms milliseconds (0..60000)
    GET  /api/inventory/stats          aggregate stats over the inventory (?top=K&category=C)
    GET  /api/inventory/items/{id}     one item (ids 1..400), else 404
    POST /api/login                    {"username", "password": "pw-<username>"} → {"token"}
    GET  /api/orders                   needs "Authorization: Bearer <token>", else 401
    POST /api/orders                   {"item": ...} with the bearer token → 201
    GET  /_loadctl/counts              what the target saw (not counting /_loadctl/*)
    POST /_loadctl/reset               zero the counts
    GET  /_loadctl/config              current settings
    POST /_loadctl/config              {"latency", "error_rate", "stall_seconds",
                                        "workers", "service_time", "queue_limit"}
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from loadctl.cli_support import (
    BadOption,
    OneLineCommand,
    new_event_loop,
    raise_open_files_limit,
    stop_on_signals,
)
from loadctl.target_spec import SPEC_EXAMPLES, Distribution, SpecError, parse_distribution
from loadctl.target_state import MAX_WORKERS, TargetConfig, check_error_rate

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["TargetConfig", "build_app", "serve", "start_target", "target_command"]

_F = TypeVar("_F", bound=Callable[..., Any])

LISTENING = "loadctl target listening on"
BACKLOG = 4096  # a burst of new connections must not overflow the accept queue
SHUTDOWN_TIMEOUT = 1.0


def build_app(config: TargetConfig | None = None) -> web.Application:
    """The demo target as an aiohttp application (see `target_app`)."""
    # aiohttp is imported on use, so `loadctl --help` and option errors stay fast.
    from loadctl.target_app import build_app as build

    return build(config)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def start_target(
    config: TargetConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run the target on the current event loop; yield its base URL; stop on exit.

    `port=0` picks a free port. Raises OSError if the address cannot be bound.
    """
    from aiohttp import web

    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=BACKLOG)
        await site.start()
        address: Any = runner.addresses[0]
        yield _url(str(address[0]), int(address[1]))
    finally:
        await runner.cleanup()


async def serve(
    config: TargetConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_listening: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set or SIGTERM / SIGINT arrives."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    async with start_target(config, host, port) as url:
        if on_listening is not None:
            on_listening(url)
        await stop.wait()


# -- the command --


def _spec_option(flag: str, default: str, help_text: str) -> Callable[[_F], _F]:
    """An option whose value is a latency SPEC, parsed into a Distribution."""

    def convert(ctx: click.Context, param: click.Parameter, value: str) -> Distribution:
        try:
            return parse_distribution(value)
        except SpecError as exc:
            raise BadOption(f"{flag}: {exc}") from None

    return click.option(
        flag, default=default, show_default=True, metavar="SPEC", callback=convert, help=help_text
    )


def _count_option(flag: str, low: int, metavar: str, help_text: str) -> Callable[[_F], _F]:
    """An optional whole number from `low` to MAX_WORKERS (workers, queue places)."""
    return click.option(
        flag, type=click.IntRange(low, MAX_WORKERS), default=None, metavar=metavar, help=help_text
    )


def _error_rate(ctx: click.Context, param: click.Parameter, value: float) -> float:
    try:
        return check_error_rate(value)
    except SpecError as exc:
        raise BadOption(f"--error-rate: {exc}") from None


@click.command(
    "target",
    cls=OneLineCommand,
    epilog=f"SPEC is one of {SPEC_EXAMPLES}. Everything can be changed at runtime with "
    'POST /_loadctl/config {"latency": SPEC, "error_rate": F, "stall_seconds": S, '
    '"workers": N, "service_time": SPEC, "queue_limit": Q}.',
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@_spec_option("--latency", "0", "Added latency of /api/* requests.")
@click.option(
    "--error-rate",
    default=0.0,
    show_default=True,
    type=float,
    metavar="F",
    callback=_error_rate,
    help="Probability (0..1) that an /api/* request answers 500.",
)
@_count_option(
    "--workers",
    1,
    "N",
    "Capacity model: N workers serve /api/* (capacity = N / mean service time).",
)
@_spec_option("--service-time", "10ms", "Time a worker spends per request (with --workers).")
@_count_option(
    "--queue-limit",
    0,
    "Q",
    "With --workers: beyond Q waiting requests, answer 503 at once (default: unbounded).",
)
@click.option("--seed", type=int, default=None, help="Seed for latency and error sampling.")
def target_command(
    host: str,
    port: int,
    latency: Distribution,
    error_rate: float,
    workers: int | None,
    service_time: Distribution,
    queue_limit: int | None,
    seed: int | None,
) -> None:
    """Run the demo target: an inventory-shaped HTTP service with tunable latency,
    errors, stalls and capacity, counting what it receives."""
    if queue_limit is not None and workers is None:
        raise BadOption("--queue-limit needs --workers (the queue is the workers' queue)")
    config = TargetConfig(
        latency=latency,
        error_rate=error_rate,
        workers=workers,
        service_time=service_time,
        queue_limit=queue_limit,
        seed=seed,
    )
    raise_open_files_limit()

    def announce(url: str) -> None:
        click.echo(f"{LISTENING} {url}")
        sys.stdout.flush()

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(config, host, port, on_listening=announce))
    except socket.gaierror as exc:
        raise click.ClickException(
            f"cannot resolve --host {host}: {exc.strerror or exc} (try 127.0.0.1)"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {reason} "
            "(pick another --port, or --port 0 for a free one)"
        ) from None
    except KeyboardInterrupt:
        pass
