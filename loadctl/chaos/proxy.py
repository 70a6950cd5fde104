"""Proxies: a listener, an upstream address, the live connections and the toxics.

A `Proxy` accepts a client, connects to its upstream (reading from the client
pauses meanwhile; if the upstream cannot be reached, the client is closed,
as Toxiproxy does), and joins the two with a `Link` per direction. Toxics
added to the proxy act on new and live connections alike.

Disabling a proxy (`enabled: false`, Toxiproxy's "down") closes its listener
— new connections are refused — and drops every live connection; enabling
it listens again on the same address. Changing `listen` or `upstream`
restarts it the same way.

How a connection ends: each side's end of stream travels through its link
(toxics may delay it: slow_close) and is passed on as a half-close; once both
directions have ended, or one side is gone and the other has been told, both
sockets are closed. A side that vanishes (reset, error) counts as its end of
stream; whatever was on its way to it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final, cast

from loadctl.chaos.errors import (
    PROXY_EXISTS,
    PROXY_NOT_FOUND,
    TOXIC_EXISTS,
    TOXIC_NOT_FOUND,
    ApiError,
    bad_body,
    missing_field,
)
from loadctl.chaos.link import Link
from loadctl.chaos.toxics import toxic_from_json, toxic_update_from_json
from loadctl.protocol.chaos import ToxicSpec

log = logging.getLogger("loadctl.chaos")

BACKLOG: Final = 4096
CONNECT_TIMEOUT: Final = 10.0
DEFAULT_LISTEN: Final = "127.0.0.1:0"


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or ":port" (all interfaces)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{what} must be HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{what}: write an IPv6 address in brackets, [::1]:PORT, got {address!r}")
    return host, int(port_text)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- one connection ------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One socket of a connection: what it reads goes into `reader` (the link
    from it), its write-buffer marks steer `writer` (the link into it).

    With no toxic on `reader` (`reader.direct`), a read is written straight
    into the other socket's transport: the proxy's hot path. Both sockets
    have TCP_NODELAY (uvloop and asyncio set it on every TCP transport)."""

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.reader: Link | None = None
        self.writer: Link | None = None
        self.lost = False
        self._early: list[bytes | None] = []  # read before the links exist (None: EOF)
        self._held = False  # reading paused until the links exist

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def hold(self) -> None:
        """Pause reading until `release` (the links do not exist yet)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._held = True

    def release(self) -> None:
        """The links exist: pass on what was read meanwhile, read again."""
        reader = self.reader
        assert reader is not None
        early, self._early = self._early, []
        for data in early:
            if data is None:
                reader.feed_eof()
            else:
                reader.feed(data)
        if self._held:
            self._held = False
            reader.resume_source()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            # Before the links exist: a client that speaks before the upstream
            # answered (uvloop starts reading after connection_made, so the
            # pause there does not hold), or an upstream's greeting.
            self._early.append(data)
            self.hold()
        elif reader.direct:
            dst = reader.dst
            if not dst.is_closing():
                dst.write(data)
        else:
            reader.feed(data)

    def eof_received(self) -> bool:
        if self.reader is not None:
            self.reader.feed_eof()
        else:
            self._early.append(None)
        return True  # keep the other direction open (half-close)

    def pause_writing(self) -> None:
        if self.writer is not None:
            self.writer.dst_pause(True)

    def resume_writing(self) -> None:
        if self.writer is not None:
            self.writer.dst_pause(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self)


class _ClientSide(_Side):
    def __init__(self, proxy: Proxy) -> None:
        super().__init__(Connection(proxy), "client")
        self.conn.client = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.start()


class Connection:
    """A client socket, its upstream socket, and the two links between them."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client: _ClientSide | None = None
        self.upstream: _Side | None = None
        self.up: Link | None = None  # client → upstream
        self.down: Link | None = None  # upstream → client
        self.closed = False
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self.client is not None
        self.client.hold()
        self.proxy.connections.add(self)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.client is not None and self.client.transport is not None
        host, port = split_address(self.proxy.upstream)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, side = await loop.create_connection(
                    lambda: _Side(self, "upstream"), host or "127.0.0.1", port
                )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "chaos proxy %s: cannot reach upstream %s: %s",
                self.proxy.name,
                self.proxy.upstream,
                exc,
            )
            self.close()
            return
        finally:
            self._connecting = None
        if self.closed:
            transport.close()
            return
        self.upstream = side
        client = self.client.transport
        toxics = self.proxy.toxics
        self.up = Link(self, "upstream", client, transport, toxics)
        self.down = Link(self, "downstream", transport, client, toxics)
        # Both sides know their links before either passes on early data, so
        # flow control (pause_writing on either side) holds from the start.
        self.client.reader, self.client.writer = self.up, self.down
        side.reader, side.writer = self.down, self.up
        self.client.release()
        side.release()
        if side.lost:  # gone already
            self.side_lost(side)

    def links(self) -> Iterable[Link]:
        return [link for link in (self.up, self.down) if link is not None]

    def link(self, stream: str) -> Link | None:
        return self.up if stream == "upstream" else self.down

    # -- endings --

    def side_lost(self, side: _Side) -> None:
        if side.writer is not None:
            side.writer.drop()
        if side.reader is not None:
            side.reader.feed_eof()
        if self.up is None:  # the client left before the upstream answered
            self.close()
        else:
            self.link_finished()

    def link_finished(self) -> None:
        if self.closed or self.up is None or self.down is None:
            return
        if self.up.finished and self.down.finished:
            self.close()

    def _transports(self) -> list[asyncio.Transport]:
        return [
            side.transport
            for side in (self.client, self.upstream)
            if side is not None and side.transport is not None
        ]

    def close(self, abort: bool = False) -> None:
        """Close both sockets (after what is buffered is sent, unless `abort`)."""
        if self.closed:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        if self._connecting is not None and self._connecting is not asyncio.current_task():
            self._connecting.cancel()
        for link in self.links():
            link.drop()
        for transport in self._transports():
            if abort:
                transport.abort()
            elif not transport.is_closing():
                transport.close()

    def reset(self) -> None:
        """Reset both sockets: SO_LINGER 0, so closing sends a TCP RST."""
        for transport in self._transports():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close(abort=True)


# -- a proxy -------------------------------------------------------------------


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: list[ToxicSpec] = []
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": self.toxics_json(),
        }

    def toxics_json(self) -> list[dict[str, Any]]:
        # Toxiproxy lists the upstream chain, then the downstream one.
        ordered = sorted(self.toxics, key=lambda t: t.stream != "upstream")
        return [t.to_json() for t in ordered]

    # -- listening --

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = split_address(self.listen)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: _ClientSide(self),
                host or None,
                port,
                backlog=BACKLOG,
                reuse_address=True,
            )
        except OSError as exc:
            raise ApiError(500, f"listen tcp {self.listen}: {exc.strerror or exc}") from None
        self._server = server
        sockname = server.sockets[0].getsockname()
        self.listen = join_address(str(sockname[0]) if host else host, int(sockname[1]))
        self.enabled = True
        log.info("chaos proxy %s: %s -> %s", self.name, self.listen, self.upstream)

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        if not self.enabled:
            return
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.close(abort=True)
        log.info("chaos proxy %s: disabled", self.name)

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        if listen != self.listen or upstream != self.upstream:
            self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled:
            self.stop()

    # -- toxics --

    def find_toxic(self, name: str) -> ToxicSpec:
        for spec in self.toxics:
            if spec.name == name:
                return spec
        raise ApiError(*TOXIC_NOT_FOUND)

    def add_toxic(self, spec: ToxicSpec) -> ToxicSpec:
        if any(t.name == spec.name for t in self.toxics):
            raise ApiError(*TOXIC_EXISTS)
        self.toxics.append(spec)
        for conn in self.connections:
            link = conn.link(spec.stream)
            if link is not None:
                link.add(spec)
        return spec

    def update_toxic(self, name: str, body: Any) -> ToxicSpec:
        old = self.find_toxic(name)
        spec = toxic_update_from_json(old, body)
        self.toxics[self.toxics.index(old)] = spec
        for conn in self.connections:
            link = conn.link(spec.stream)
            if link is not None:
                link.replace(spec)
        return spec

    def remove_toxic(self, name: str) -> None:
        spec = self.find_toxic(name)
        self.toxics.remove(spec)
        for conn in self.connections:
            link = conn.link(spec.stream)
            if link is not None:
                link.remove(name)

    def reset_toxics(self) -> None:
        self.toxics.clear()
        for conn in self.connections:
            for link in conn.links():
                link.clear()


# -- all proxies ---------------------------------------------------------------


def _proxy_fields(body: Any, base: Proxy | None = None) -> tuple[str, str, str, bool]:
    """(name, listen, upstream, enabled) from a proxy body; `base` gives the defaults."""
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    fields: dict[str, Any] = {
        "name": base.name if base else "",
        "listen": base.listen if base else DEFAULT_LISTEN,
        "upstream": base.upstream if base else "",
        "enabled": base.enabled if base else True,
    }
    for key, default in fields.items():
        value = body.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, type(default)):
            kind = "true or false" if key == "enabled" else "a string"
            raise bad_body(f"{key} must be {kind}")
        fields[key] = value
    if not fields["listen"]:
        fields["listen"] = DEFAULT_LISTEN
    for key in ("listen", "upstream"):
        if fields[key]:
            try:
                split_address(fields[key], key)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
    return fields["name"], fields["listen"], fields["upstream"], fields["enabled"]


class ProxyCollection:
    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(*PROXY_NOT_FOUND)
        return proxy

    def to_json(self) -> dict[str, Any]:
        return {name: p.to_json() for name, p in self.proxies.items()}

    async def create(self, body: Any) -> Proxy:
        name, listen, upstream, enabled = _proxy_fields(body)
        if not name:
            raise missing_field("name")
        if not upstream:
            raise missing_field("upstream")
        if "/" in name:
            raise bad_body("a proxy name cannot contain '/'")
        if name in self.proxies:
            raise ApiError(*PROXY_EXISTS)
        proxy = Proxy(name, listen, upstream)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def populate(self, body: Any) -> list[Proxy]:
        """Create or replace each proxy of a list (all checked before any change);
        one whose listen and upstream are unchanged is kept, with its toxics."""
        if not isinstance(body, list):
            raise bad_body("expected a JSON array of proxies")
        wanted: list[tuple[str, str, str, bool]] = []
        for i, item in enumerate(body):
            name, listen, upstream, enabled = _proxy_fields(item)
            if not name:
                raise missing_field(f"name at proxy {i + 1}")
            if not upstream:
                raise missing_field(f"upstream at proxy {i + 1}")
            if any(w[0] == name for w in wanted):
                raise bad_body(f"duplicate proxy name {name!r}")
            wanted.append((name, listen, upstream, enabled))
        out = []
        for name, listen, upstream, enabled in wanted:
            existing = self.proxies.get(name)
            if existing is not None and (existing.listen, existing.upstream) == (listen, upstream):
                out.append(existing)
                continue
            if existing is not None:
                existing.stop()
                del self.proxies[name]
            proxy = Proxy(name, listen, upstream)
            if enabled:
                await proxy.start()
            self.proxies[name] = proxy
            out.append(proxy)
        return out

    async def update(self, name: str, body: Any) -> Proxy:
        proxy = self.get(name)
        _, listen, upstream, enabled = _proxy_fields(body, proxy)
        await proxy.update(listen, upstream, enabled)
        return proxy

    def delete(self, name: str) -> None:
        proxy = self.get(name)
        proxy.stop()
        del self.proxies[name]

    def add_toxic(self, name: str, body: Any) -> ToxicSpec:
        return self.get(name).add_toxic(toxic_from_json(body))

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self.proxies.values():
            await proxy.start()
            proxy.reset_toxics()

    def stop_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()


def proxies_json(proxies: Iterable[Proxy]) -> list[Mapping[str, Any]]:
    return [p.to_json() for p in proxies]
