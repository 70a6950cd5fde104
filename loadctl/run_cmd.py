"""`loadctl coordinator`, `loadctl run` and `loadctl demo`."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from loadctl import exits
from loadctl.cluster import run_cluster
from loadctl.coordinator.run import Controller, Coordinator, CoordinatorOptions
from loadctl.endpoints import check_endpoint, is_local
from loadctl.logs import setup_logging
from loadctl.protocol.scenario import Scenario
from loadctl.scenario_file import ScenarioFileError, load_scenario


def _load(path: str, scale: float) -> Scenario:
    try:
        return load_scenario(path, scale)
    except ScenarioFileError as error:
        exits.fail(str(error))


def _server_security(keys: Path | None, insecure: bool, bind: str) -> object:
    if keys is not None:
        from loadctl.coordinator.security import ServerSecurity
        from loadctl.protocol.keys import KeyFileError

        try:
            return ServerSecurity.from_dir(str(keys))
        except KeyFileError as error:
            exits.fail(str(error))
    if not insecure and not is_local(bind):
        exits.fail(
            f"binding {bind} without keys would let anyone on the network drive this "
            "cluster: run `loadctl keys init DIR` and pass --keys DIR, or pass --insecure"
        )
    return None


scale_option = click.option(
    "--scale", default=1.0, show_default=True, help="Multiply every rate and user count."
)
out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Result directory (default: loadctl-results/<time>-<run>).",
)
quiet_option = click.option("--quiet", is_flag=True, help="Print only the summary.")
metrics_option = click.option(
    "--metrics-port",
    "metrics_port",
    default="9646",
    show_default=True,
    metavar="[HOST:]PORT",
    help="Serve Prometheus /metrics during the run here (0: off).",
)


def _metrics(value: str, default_host: str) -> tuple[str, int]:
    from loadctl.cluster import metrics_address

    try:
        return metrics_address(value, default_host)
    except ValueError as error:
        exits.fail(str(error))


@click.command("coordinator")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--agents", default=1, show_default=True, help="Agents to wait for.")
@click.option("--bind", default="tcp://0.0.0.0:5555", show_default=True)
@click.option(
    "--keys",
    type=click.Path(path_type=Path),
    default=None,
    help="Key directory from `loadctl keys init` (CURVE; required off loopback).",
)
@click.option("--insecure", is_flag=True, help="Bind without authentication (logged loudly).")
@click.option(
    "--wait",
    "wait_timeout",
    default=60.0,
    show_default=True,
    help="Seconds to wait for the agents.",
)
@click.option("--dry-run", is_flag=True, help="Validate the scenario, options and keys; exit.")
@scale_option
@out_option
@quiet_option
@metrics_option
@click.option("-v", "--verbose", is_flag=True)
def coordinator_command(
    scenario: str,
    agents: int,
    bind: str,
    keys: Path | None,
    insecure: bool,
    wait_timeout: float,
    dry_run: bool,
    scale: float,
    out_dir: Path | None,
    quiet: bool,
    metrics_port: str,
    verbose: bool,
) -> None:
    """Split SCENARIO across --agents agents that connect to --bind, run it, report."""
    problem = check_endpoint(bind)
    if problem:
        exits.fail(problem)
    if agents < 1:
        exits.fail("--agents must be at least 1")
    parsed = _load(scenario, scale)
    security = _server_security(keys, insecure, bind)
    if security is None and not is_local(bind) and parsed.defaults.tls_cert is not None:
        exits.fail(
            "defaults.tls.cert: its private key travels to the agents in their plans, and "
            f"{bind} has no keys, so anyone on the network could read it: run "
            "`loadctl keys init DIR` and pass --keys DIR"
        )
    metrics_host, metrics = _metrics(metrics_port, "127.0.0.1" if is_local(bind) else "0.0.0.0")
    if dry_run:
        click.echo(
            f"coordinator: {parsed.name}: {len(parsed.phases)} phase(s), "
            f"{parsed.duration:g} s, {agents} agent(s) on {bind}, "
            f"{'CURVE' if security else 'plaintext'}: ok"
        )
        return
    setup_logging(verbose, prefix="coordinator")
    if security is None and not is_local(bind):
        import logging

        logging.getLogger("loadctl.coordinator").warning(
            "binding %s WITHOUT authentication or encryption (--insecure)", bind
        )
    options = CoordinatorOptions(
        bind=bind, agents=agents, wait_timeout=wait_timeout, security=security
    )
    outcome = run_cluster(
        parsed, options, out_dir, quiet, metrics_port=metrics, metrics_host=metrics_host
    )
    sys.exit(outcome.code)


def run_local(
    scenario: Scenario,
    agents: int,
    out_dir: Path | None,
    quiet: bool,
    verbose: bool = False,
    metrics: tuple[str, int] = ("127.0.0.1", 9646),
    controller: Controller | None = None,
    extra_result: Callable[[Coordinator], dict[str, Any]] | None = None,
) -> int:
    """Coordinator in this process plus `agents` local agent processes on an ipc socket."""
    from loadctl.launcher import loadctl_command, process_group

    setup_logging(verbose, prefix="coordinator")
    with tempfile.TemporaryDirectory(prefix="loadctl-") as private:  # mode 0700
        endpoint = f"ipc://{private}/coordinator.sock"
        with process_group() as group:
            for i in range(agents):
                group.start(
                    loadctl_command(
                        "agent",
                        "--coordinator",
                        endpoint,
                        "--id",
                        f"local-{i}",
                        *(["-v"] if verbose else []),
                    )
                )
            options = CoordinatorOptions(
                bind=endpoint, agents=agents, wait_timeout=30.0, controller=controller
            )
            outcome = run_cluster(
                scenario,
                options,
                out_dir,
                quiet,
                metrics_port=metrics[1],
                metrics_host=metrics[0],
                extra_result=extra_result,
            )
            group.wait_all_quietly(10.0)
    return outcome.code


@click.command("run")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--agents", default=0, help="Local agent processes (default: one per core).")
@scale_option
@out_option
@quiet_option
@metrics_option
@click.option("-v", "--verbose", is_flag=True)
def run_command(
    scenario: str,
    agents: int,
    scale: float,
    out_dir: Path | None,
    quiet: bool,
    metrics_port: str,
    verbose: bool,
) -> None:
    """Run SCENARIO with a local coordinator and local agent processes."""
    import os

    parsed = _load(scenario, scale)
    count = agents if agents > 0 else (os.cpu_count() or 1)
    metrics = _metrics(metrics_port, "127.0.0.1")
    sys.exit(run_local(parsed, count, out_dir, quiet, verbose, metrics))
