"""An async client of the Toxiproxy HTTP API (Toxiproxy 2.x, or `loadctl chaos proxy`).

    async with ToxiproxyClient("http://127.0.0.1:8474") as toxiproxy:
        await toxiproxy.create_proxy("db", "127.0.0.1:25432", "db.internal:5432")
        await toxiproxy.add_toxic("db", "latency", attributes={"latency": 200})
        await toxiproxy.set_enabled("db", False)   # an outage
        await toxiproxy.reset()

A reply other than the documented success status raises `ToxiproxyError`
with the status and the server's message; an unreachable API raises
`ToxiproxyError` with status 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp

DEFAULT_TIMEOUT: Final = 10.0


def _q(name: str) -> str:
    return quote(name, safe="")


class ToxiproxyError(Exception):
    def __init__(self, status: int, message: str, url: str = "") -> None:
        super().__init__(f"{message} (HTTP {status}, {url})" if status else f"{message} ({url})")
        self.status = status
        self.message = message
        self.url = url


class ToxiproxyClient:
    def __init__(self, api_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.api_url = api_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ToxiproxyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": "loadctl-chaos"},
                trust_env=False,
            )
        url = self.api_url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ToxiproxyError(0, f"cannot reach the Toxiproxy API: {reason}", url) from None
        try:
            reply = json.loads(raw) if raw else None
        except ValueError:
            reply = raw.decode(errors="replace")
        if status not in expect:
            message = reply.get("error") if isinstance(reply, dict) else None
            raise ToxiproxyError(status, str(message or reply or "unexpected reply").strip(), url)
        return reply

    # -- the server --

    async def version(self) -> str:
        reply = await self._call("GET", "/version")
        return str(reply.get("version") if isinstance(reply, dict) else reply)

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._call("POST", "/reset", expect=(204,))

    # -- proxies --

    async def proxies(self) -> dict[str, Any]:
        reply: dict[str, Any] = await self._call("GET", "/proxies")
        return reply

    async def get_proxy(self, name: str) -> dict[str, Any]:
        reply: dict[str, Any] = await self._call("GET", f"/proxies/{_q(name)}")
        return reply

    async def create_proxy(
        self, name: str, listen: str, upstream: str, enabled: bool = True
    ) -> dict[str, Any]:
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        reply: dict[str, Any] = await self._call("POST", "/proxies", body, expect=(201,))
        return reply

    async def populate(self, proxies: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        reply = await self._call("POST", "/populate", list(proxies), expect=(201,))
        return list(reply.get("proxies") or []) if isinstance(reply, dict) else []

    async def update_proxy(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set any of listen, upstream, enabled."""
        reply: dict[str, Any] = await self._call("POST", f"/proxies/{_q(name)}", fields)
        return reply

    async def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """`False` takes the proxy down (connections refused), `True` brings it back."""
        return await self.update_proxy(name, enabled=enabled)

    async def delete_proxy(self, name: str) -> None:
        await self._call("DELETE", f"/proxies/{_q(name)}", expect=(204,))

    # -- toxics --

    async def toxics(self, proxy: str) -> list[dict[str, Any]]:
        reply: list[dict[str, Any]] = await self._call("GET", f"/proxies/{_q(proxy)}/toxics")
        return reply

    async def add_toxic(
        self,
        proxy: str,
        type: str,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        if name is not None:
            body["name"] = name
        reply: dict[str, Any] = await self._call("POST", f"/proxies/{_q(proxy)}/toxics", body)
        return reply

    async def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, Any] | None = None,
        toxicity: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = toxicity
        reply: dict[str, Any] = await self._call(
            "POST", f"/proxies/{_q(proxy)}/toxics/{_q(name)}", body
        )
        return reply

    async def remove_toxic(self, proxy: str, name: str, *, missing_ok: bool = False) -> None:
        """Remove a toxic; with `missing_ok`, one already gone is not an error."""
        expect = (204, 404) if missing_ok else (204,)
        await self._call("DELETE", f"/proxies/{_q(proxy)}/toxics/{_q(name)}", expect=expect)
