"""The command line: a thin click group; each command lives in its own module."""

from __future__ import annotations

import click

from loadctl import __version__
from loadctl.agent_cmd import agent_command
from loadctl.demo import demo_command
from loadctl.keys_cmd import keys_group
from loadctl.run_cmd import coordinator_command, run_command
from loadctl.target import target_command


@click.group()
@click.version_option(__version__, prog_name="loadctl")
def cli() -> None:
    """loadctl: distributed HTTP load testing for capacity planning."""


for command in (
    run_command,
    coordinator_command,
    agent_command,
    demo_command,
    target_command,
    keys_group,
):
    cli.add_command(command)


def main() -> None:
    cli()
