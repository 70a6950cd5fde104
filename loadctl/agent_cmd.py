"""`loadctl agent`: K agent processes on this machine, each its own loop and identity."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import click

from loadctl import exits
from loadctl.cli_support import raise_open_files_limit
from loadctl.endpoints import check_endpoint, is_local
from loadctl.logs import setup_logging


def _security(keys: Path | None, name: str | None, insecure: bool, endpoint: str) -> object:
    from loadctl.protocol.keys import KeyFileError

    if keys is not None:
        from loadctl.agent.security import ClientSecurity

        if not name:
            exits.fail(
                "--keys needs --name NAME (the agent key made by `loadctl keys add-agent NAME`)"
            )
        try:
            return ClientSecurity.from_dir(keys, name)
        except KeyFileError as error:
            exits.fail(str(error))
    if not insecure and not is_local(endpoint):
        exits.fail(
            f"{endpoint} is not on this machine: pass --keys DIR --name NAME "
            "(see `loadctl keys`), or --insecure to talk to it unauthenticated"
        )
    return None


@click.command("agent")
@click.option(
    "--coordinator",
    "endpoint",
    required=True,
    metavar="ENDPOINT",
    help="The coordinator, e.g. tcp://10.0.0.5:5555.",
)
@click.option(
    "--processes",
    default="1",
    show_default=True,
    metavar="K|auto",
    help="Agent processes on this machine; auto = one per core.",
)
@click.option(
    "--keys",
    type=click.Path(path_type=Path),
    default=None,
    help="Key directory (CURVE): this agent's key pair and the coordinator's public key.",
)
@click.option("--name", default=None, help="This agent's key name in --keys.")
@click.option("--insecure", is_flag=True, help="Talk to a remote coordinator without CURVE.")
@click.option(
    "--connect-timeout",
    default=15.0,
    show_default=True,
    help="Seconds to wait for the coordinator to answer.",
)
@click.option(
    "--deadman",
    default=2.0,
    show_default=True,
    help="Stop all load after this many seconds without the coordinator.",
)
@click.option(
    "--reconnect",
    is_flag=True,
    help="Serve run after run, reconnecting with backoff, instead of exiting.",
)
@click.option("--id", "agent_id", default="", help="Agent id (default: host-pid-random).")
@click.option("--dry-run", is_flag=True, help="Check the options and keys, then exit.")
@click.option("-v", "--verbose", is_flag=True)
def agent_command(
    endpoint: str,
    processes: str,
    keys: Path | None,
    name: str | None,
    insecure: bool,
    connect_timeout: float,
    deadman: float,
    reconnect: bool,
    agent_id: str,
    dry_run: bool,
    verbose: bool,
) -> None:
    """Run load for a coordinator (exits 0 when the run ends, 3 if the coordinator is lost)."""
    problem = check_endpoint(endpoint)
    if problem:
        exits.fail(problem)
    if deadman <= 0 or deadman > 60:
        exits.fail(
            "--deadman must be between 0 and 60 seconds: an agent without its coordinator must stop"
        )
    if connect_timeout <= 0:
        exits.fail("--connect-timeout must be more than 0 seconds")
    if keys is not None and insecure:
        exits.fail("--keys and --insecure contradict each other: pick one")
    count = len(os.sched_getaffinity(0)) if processes == "auto" else _positive(processes)
    if count > 1 and agent_id:
        exits.fail(
            "--id names one agent process; with --processes above 1 leave it out "
            "(each process gets its own id)"
        )
    security = _security(keys, name, insecure, endpoint)
    if dry_run:
        click.echo(
            f"agent: {count} process(es) for {endpoint}, {'CURVE' if security else 'plaintext'}: ok"
        )
        return
    if count > 1:
        sys.exit(_supervise(count))
    setup_logging(verbose, prefix=f"agent[{os.getpid()}]")
    raise_open_files_limit()
    if insecure and security is None:
        import logging

        logging.getLogger("loadctl.agent").warning(
            "running WITHOUT authentication or encryption (--insecure)"
        )
    sys.exit(_run_one(endpoint, security, connect_timeout, deadman, reconnect, agent_id))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        exits.fail(f"--processes takes a whole number ≥ 1 or 'auto', got {text!r}")
    return value


def _run_one(
    endpoint: str,
    security: object,
    connect_timeout: float,
    deadman: float,
    reconnect: bool,
    agent_id: str,
) -> int:
    import uvloop

    from loadctl.agent.session import AgentFailure, AgentOptions, AgentSession

    options = AgentOptions(
        endpoint, agent_id, connect_timeout, deadman, serve=reconnect, security=security
    )

    async def main() -> int:
        session = AgentSession(options)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
        try:
            return await session.run()
        except asyncio.CancelledError:
            return exits.INTERRUPTED
        except AgentFailure as error:
            print(f"loadctl agent: error: {error}", file=sys.stderr, flush=True)
            return exits.RUN_FAILED

    return uvloop.run(main())


def _supervise(count: int) -> int:
    """Start `count` single-process agents and wait; signals are passed on."""
    from loadctl.launcher import ProcessGroup, loadctl_command

    group = ProcessGroup()
    args = [a for a in sys.argv[1:]]
    args = _replace_option(args, "--processes", "1")
    for _ in range(count):
        group.start(loadctl_command(*args))

    def forward(signum: int, frame: object) -> None:
        for p in group.alive():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        codes = group.wait_all()
    finally:
        group.stop()
    return max(codes, key=lambda c: (c != 0, c))


def _replace_option(args: list[str], option: str, value: str) -> list[str]:
    out: list[str] = []
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == option:
            skip = i + 1 < len(args)
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return [*out, option, value]
