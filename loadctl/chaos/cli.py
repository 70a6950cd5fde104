"""`loadctl chaos proxy`: run the fault proxy and its Toxiproxy-compatible API.

    loadctl chaos proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8080
    loadctl chaos proxy --config proxies.json --api 127.0.0.1:8474

On start it prints one line per proxy, then the API's line last:

    loadctl chaos proxy target listening on 127.0.0.1:9000 (upstream 127.0.0.1:8080)
    loadctl chaos api listening on http://127.0.0.1:8474
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from loadctl.chaos.errors import ApiError
from loadctl.chaos.proxy import ProxyCollection, join_address, split_address
from loadctl.cli_support import (
    BadOption,
    OneLineCommand,
    new_event_loop,
    raise_open_files_limit,
    stop_on_signals,
)

PROXY_LINE = "loadctl chaos proxy"
API_LINE = "loadctl chaos api listening on"
DEFAULT_API = "127.0.0.1:8474"


def _address(option: str) -> Any:
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            split_address(value, option)
        except ValueError as exc:
            raise BadOption(str(exc)) from None
        return value

    return check


def _read_config(path: Path) -> list[Any]:
    """Toxiproxy's config file: a JSON (or YAML) list of proxies."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read --config {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise click.ClickException(f"--config {path}: not valid JSON/YAML: {exc}") from None
    if not isinstance(data, list):
        raise click.ClickException(
            f"--config {path}: expected a list of proxies "
            '([{"name": ..., "listen": ..., "upstream": ...}])'
        )
    return data


async def serve(
    proxies: list[Any], api: str, stop: asyncio.Event | None = None, announce: bool = True
) -> None:
    """Populate the proxies, serve the API until SIGTERM/SIGINT or `stop`."""
    from aiohttp import web

    from loadctl.chaos.api import build_api

    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    collection = ProxyCollection()
    try:
        for proxy in await collection.populate(proxies):
            if announce:
                state = "listening on" if proxy.enabled else "disabled, would listen on"
                click.echo(
                    f"{PROXY_LINE} {proxy.name} {state} {proxy.listen} (upstream {proxy.upstream})"
                )
        host, port = split_address(api)
        runner = web.AppRunner(build_api(collection), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host or None, port)
            await site.start()
            address: Any = runner.addresses[0]
            if announce:
                click.echo(f"{API_LINE} http://{join_address(str(address[0]), int(address[1]))}")
                sys.stdout.flush()
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        collection.stop_all()


@click.group("chaos")
def chaos_group() -> None:
    """Fault injection: a TCP proxy with Toxiproxy's toxics and API."""


@chaos_group.command(
    "proxy",
    cls=OneLineCommand,
    epilog="Toxics: latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data, "
    "and loss (a share of connections stalled or reset). Drive it with any Toxiproxy client "
    "or a scenario's chaos: list; see docs/chaos.md.",
)
@click.option(
    "--listen", metavar="HOST:PORT", callback=_address("--listen"), help="Where clients connect."
)
@click.option(
    "--upstream",
    metavar="HOST:PORT",
    callback=_address("--upstream"),
    help="Where the proxy connects to (the service under test).",
)
@click.option("--name", default="target", show_default=True, help="The proxy's name on the API.")
@click.option(
    "--api",
    default=DEFAULT_API,
    show_default=True,
    metavar="HOST:PORT",
    callback=_address("--api"),
    help="Where the Toxiproxy-compatible HTTP API listens (port 0: a free one).",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Toxiproxy's config file: a JSON list of {name, listen, upstream[, enabled]}.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log proxy events to stderr.")
def proxy_command(
    listen: str | None,
    upstream: str | None,
    name: str,
    api: str,
    config: Path | None,
    verbose: bool,
) -> None:
    """Run a fault proxy in front of a service, with an HTTP API to add faults."""
    proxies: list[Any] = _read_config(config) if config is not None else []
    if listen is not None or upstream is not None:
        if listen is None or upstream is None:
            raise BadOption("--listen and --upstream go together (or use --config FILE)")
        proxies.append({"name": name, "listen": listen, "upstream": upstream})
    if not proxies:
        raise BadOption("say what to proxy: --listen HOST:PORT --upstream HOST:PORT, or --config")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    raise_open_files_limit()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(proxies, api))
    except ApiError as err:
        hint = " (pick another port, or port 0 for a free one)" if err.status == 500 else ""
        where = f" in --config {config}" if config is not None and err.status != 500 else ""
        raise click.ClickException(
            f"cannot start the proxies{where}: {err.message}{hint}"
        ) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on --api {api}: {exc.strerror or exc} "
            "(pick another port, or port 0 for a free one)"
        ) from None
    except KeyboardInterrupt:
        pass
