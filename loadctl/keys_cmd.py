"""`loadctl keys`: create and list the CURVE keys of the cluster link.

    loadctl keys init [DIR]                 coordinator key pair + layout
    loadctl keys add-agent NAME [--dir DIR] an agent key pair, admitted by the coordinator
    loadctl keys list [--dir DIR]           what is in a key directory

DIR defaults to $LOADCTL_KEYS, else ./loadctl-keys. User errors print one line
on stderr and exit with status 2.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NoReturn

import click

from loadctl.protocol.keys import (
    KEYS_DIR_ENV,
    KeyFileError,
    KeyPaths,
    add_agent,
    default_keys_dir,
    init_keys,
    list_agents,
    load_allowed,
    load_coordinator_keys,
    load_public_key,
)

__all__ = ["keys_group"]

USER_ERROR = 2

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Key directory (default: ${KEYS_DIR_ENV}, else ./loadctl-keys).",
)


def _fail(message: str) -> NoReturn:
    click.echo(f"loadctl keys: error: {message}", err=True)
    raise click.exceptions.Exit(USER_ERROR)


def _resolve(directory: Path | None) -> Path:
    return directory if directory is not None else default_keys_dir()


def _mode(path: Path) -> str:
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):04o}"
    except OSError:
        return "?"


@click.group(name="keys")
def keys_group() -> None:
    """Create and list the CURVE keys that encrypt and authenticate the cluster link.

    The coordinator admits only agents whose public key is in DIR/allowed/;
    each agent pins the coordinator's public key.
    """


@keys_group.command("init")
@click.argument(
    "directory", required=False, type=click.Path(file_okay=False, path_type=Path), default=None
)
def init_cmd(directory: Path | None) -> None:
    """Create DIR (mode 0700) with the coordinator key pair, agents/ and allowed/."""
    root = _resolve(directory)
    try:
        paths = init_keys(root)
    except KeyFileError as e:
        _fail(str(e))
    click.echo(f"created key directory {paths.root} (mode {_mode(paths.root)})")
    click.echo(
        f"  wrote {paths.coordinator_secret}  coordinator SECRET key "
        f"(mode {_mode(paths.coordinator_secret)}): keep it on the coordinator only"
    )
    click.echo(
        f"  wrote {paths.coordinator_public}  coordinator public key: copy it to every agent"
    )
    click.echo(f"  made  {paths.agents_dir}/ and {paths.allowed_dir}/")
    click.echo(f"next: loadctl keys add-agent NAME --dir {paths.root}   (once per agent machine)")


@keys_group.command("add-agent")
@click.argument("name")
@_dir_option
def add_agent_cmd(name: str, directory: Path | None) -> None:
    """Create a key pair for agent NAME and admit its public key (DIR/allowed/NAME.key)."""
    root = _resolve(directory)
    try:
        files = add_agent(root, name)
    except KeyFileError as e:
        _fail(str(e))
    paths = KeyPaths(root)
    click.echo(f"created agent {name!r} in {root}")
    click.echo(
        f"  wrote {files.secret}  agent SECRET key (mode {_mode(files.secret)}): "
        "belongs on that agent only"
    )
    click.echo(f"  wrote {files.public}  agent public key")
    click.echo(f"  wrote {files.allowed}  the coordinator now admits this key")
    click.echo(
        "copy to the agent machine, into the same layout under its key directory "
        "(keep mode 0600 on the secret):"
    )
    click.echo(f"  {files.secret}  ->  <agent DIR>/agents/{name}.key_secret")
    click.echo(f"  {paths.coordinator_public}  ->  <agent DIR>/coordinator.key")
    click.echo(
        f"then delete {files.secret} here if the agent runs elsewhere; "
        "restart the coordinator (or reload its allow-list) to admit the new key"
    )


@keys_group.command("list")
@_dir_option
def list_cmd(directory: Path | None) -> None:
    """Show the coordinator key, the agents created here and the allowed keys."""
    root = _resolve(directory)
    paths = KeyPaths(root)
    if not root.is_dir():
        _fail(f"{root}: no such key directory; run `loadctl keys init {root}`")
    try:
        if paths.coordinator_secret.exists():
            coordinator = load_coordinator_keys(root).public
            where = "pair, this is the coordinator's directory"
        else:
            coordinator = load_public_key(paths.coordinator_public)
            where = "public key only"
        agents = list_agents(root)
        allowed = load_allowed(root) if paths.allowed_dir.is_dir() else {}
    except KeyFileError as e:
        _fail(str(e))

    click.echo(f"key directory {root} (mode {_mode(root)})")
    click.echo(f"coordinator  {coordinator.decode('ascii')}  ({where})")
    allowed_keys = set(allowed.values())
    click.echo(f"agents ({len(agents)}):")
    for name, key in agents.items():
        notes = []
        if not paths.agent_secret(name).exists():
            notes.append("secret moved away")
        if key not in allowed_keys:
            notes.append("NOT admitted")
        suffix = f"  [{', '.join(notes)}]" if notes else ""
        click.echo(f"  {name:<20} {key.decode('ascii')}{suffix}")
    click.echo(f"allowed ({len(allowed)}):")
    for name, key in allowed.items():
        suffix = "" if name in agents else "  [public key added by hand]"
        click.echo(f"  {name:<20} {key.decode('ascii')}{suffix}")
    if not allowed:
        click.echo("  (none: the coordinator admits no agent; run `loadctl keys add-agent NAME`)")


if __name__ == "__main__":  # pragma: no cover
    keys_group(prog_name=os.path.basename(__file__))
