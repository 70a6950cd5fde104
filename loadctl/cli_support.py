"""What the commands that serve until stopped (`loadctl target`, `loadctl
chaos proxy`) share: option mistakes as one line, a raised open-file limit (the agent's too),
a uvloop event loop, and SIGTERM / SIGINT as a clean stop.

Each of those commands also runs on its own (tests and benches start them
with `target_command(prog_name="loadctl target")`), outside `loadctl.cli`'s
error handling, so their usage errors are made one line here.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal

import click


class BadOption(click.ClickException):
    """A bad option value: shown as one "Error: ..." line, exit 2."""

    exit_code = 2


class OneLineCommand(click.Command):
    """Report parse errors (bad values, unknown options) as one line, not usage
    text: "<what is wrong> (see '<command path> --help')"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise BadOption(f"{exc.format_message()} (see '{ctx.command_path} --help')") from None


def raise_open_files_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit toward `wanted` (1,000 users, or as many
    clients, need 1,000+ sockets); returns the limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop (asyncio's if uvloop cannot be imported), for asyncio.Runner."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT (where the running loop can catch them)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
