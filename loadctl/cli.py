"""The command line: a thin click group; each command lives in its own module.

Commands are imported when used, so `loadctl agent` or `loadctl --version` do
not pay for the coordinator's imports (numpy, rich) at start-up. Usage
mistakes end as one line naming the problem and where to look, exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from loadctl import __version__

# command name -> "module:attribute"; add a command by adding a line here
COMMANDS: dict[str, str] = {
    "run": "loadctl.run_cmd:run_command",
    "coordinator": "loadctl.run_cmd:coordinator_command",
    "agent": "loadctl.agent_cmd:agent_command",
    "demo": "loadctl.demo:demo_command",
    "target": "loadctl.target:target_command",
    "keys": "loadctl.keys_cmd:keys_group",
    "report": "loadctl.report_cmd:report_command",
    "compare": "loadctl.report_cmd:compare_command",
    "capacity": "loadctl.capacity_cmd:capacity_command",
    "chaos": "loadctl.chaos.cli:chaos_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [
            name
            for name, target in COMMANDS.items()
            if importlib.util.find_spec(target.partition(":")[0]) is not None
        ]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="loadctl")
def cli() -> None:
    """loadctl: distributed HTTP load testing for capacity planning."""


def main(argv: list[str] | None = None) -> None:
    try:
        result: Any = cli.main(args=argv, prog_name="loadctl", standalone_mode=False)
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else "loadctl"
        print(f"loadctl: error: {error.format_message()} (see '{where} --help')", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as error:
        print(f"loadctl: error: {error.format_message()}", file=sys.stderr)
        sys.exit(error.exit_code)
    except click.Abort:
        print("loadctl: interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(result, int) and result:
        sys.exit(result)
