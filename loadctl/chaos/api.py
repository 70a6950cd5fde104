"""The HTTP API of `loadctl chaos proxy`, compatible with Toxiproxy 2.x's.

Same routes, JSON shapes and status codes, so Toxiproxy's clients (Go,
Ruby, Python, Java, testcontainers...) drive it unchanged:

    GET    /version                          200 {"version": ...}
    POST   /reset                            204 (every proxy enabled, every toxic removed)
    GET    /proxies                          200 {name: proxy, ...}
    POST   /proxies                          201 proxy | 400 missing field | 409 exists
    POST   /populate                         201 {"proxies": [proxy, ...]} (create or replace)
    GET    /proxies/{proxy}                  200 proxy | 404
    POST   /proxies/{proxy}  (or PATCH)      200 proxy: set enabled, listen, upstream
    DELETE /proxies/{proxy}                  204
    GET    /proxies/{proxy}/toxics           200 [toxic, ...]
    POST   /proxies/{proxy}/toxics           200 toxic | 400 bad type/stream | 409 exists
    GET    /proxies/{proxy}/toxics/{toxic}   200 toxic | 404
    POST   /proxies/{proxy}/toxics/{toxic}   200 toxic: set attributes, toxicity (or PATCH)
    DELETE /proxies/{proxy}/toxics/{toxic}   204

    proxy: {"name", "listen", "upstream", "enabled", "toxics": [toxic, ...]}
    toxic: {"name", "type", "stream", "toxicity", "attributes": {...}}
    error: {"error": "proxy not found", "status": 404}

As in Toxiproxy, a request whose User-Agent is a browser's ("Mozilla/...")
is refused (403): a web page must not be able to drive the proxy.
Differences: a proxy created without `listen` listens on 127.0.0.1 on a free
port (Toxiproxy: every interface), and bad attribute values (negative, not
whole numbers) are refused with 400 rather than taken as they come.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from loadctl import __version__
from loadctl.chaos.errors import ApiError, bad_body
from loadctl.chaos.proxy import ProxyCollection, proxies_json

VERSION: Final = f"loadctl-{__version__}"
COLLECTION: Final = web.AppKey("collection", ProxyCollection)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


def _error(err: ApiError) -> web.Response:
    return _json(err.to_json(), err.status)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_body(str(exc) if raw else "EOF") from None


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(status=403, text="User agent not allowed\n")
    try:
        return await handler(request)
    except ApiError as err:
        return _error(err)


def _collection(request: web.Request) -> ProxyCollection:
    return request.app[COLLECTION]


async def version(request: web.Request) -> web.StreamResponse:
    return _json({"version": VERSION})


async def reset(request: web.Request) -> web.StreamResponse:
    await _collection(request).reset()
    return web.Response(status=204)


async def proxy_index(request: web.Request) -> web.StreamResponse:
    return _json(_collection(request).to_json())


async def proxy_create(request: web.Request) -> web.StreamResponse:
    proxy = await _collection(request).create(await _body(request))
    return _json(proxy.to_json(), 201)


async def populate(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    try:
        proxies = await _collection(request).populate(body)
    except ApiError as err:
        return _json({**err.to_json(), "proxies": []}, err.status)
    return _json({"proxies": proxies_json(proxies)}, 201)


async def proxy_show(request: web.Request) -> web.StreamResponse:
    return _json(_collection(request).get(request.match_info["proxy"]).to_json())


async def proxy_update(request: web.Request) -> web.StreamResponse:
    collection = _collection(request)
    name = request.match_info["proxy"]
    collection.get(name)  # 404 before reading the body, as Toxiproxy
    proxy = await collection.update(name, await _body(request))
    return _json(proxy.to_json())


async def proxy_delete(request: web.Request) -> web.StreamResponse:
    _collection(request).delete(request.match_info["proxy"])
    return web.Response(status=204)


async def toxic_index(request: web.Request) -> web.StreamResponse:
    return _json(_collection(request).get(request.match_info["proxy"]).toxics_json())


async def toxic_create(request: web.Request) -> web.StreamResponse:
    collection = _collection(request)
    name = request.match_info["proxy"]
    collection.get(name)
    toxic = collection.add_toxic(name, await _body(request))
    return _json(toxic.to_json())


async def toxic_show(request: web.Request) -> web.StreamResponse:
    proxy = _collection(request).get(request.match_info["proxy"])
    return _json(proxy.find_toxic(request.match_info["toxic"]).to_json())


async def toxic_update(request: web.Request) -> web.StreamResponse:
    proxy = _collection(request).get(request.match_info["proxy"])
    proxy.find_toxic(request.match_info["toxic"])
    toxic = proxy.update_toxic(request.match_info["toxic"], await _body(request))
    return _json(toxic.to_json())


async def toxic_delete(request: web.Request) -> web.StreamResponse:
    proxy = _collection(request).get(request.match_info["proxy"])
    proxy.remove_toxic(request.match_info["toxic"])
    return web.Response(status=204)


def build_api(collection: ProxyCollection) -> web.Application:
    app = web.Application(middlewares=[_middleware])
    app[COLLECTION] = collection
    r = app.router
    r.add_get("/version", version)
    r.add_post("/reset", reset)
    r.add_get("/proxies", proxy_index)
    r.add_post("/proxies", proxy_create)
    r.add_post("/populate", populate)
    r.add_get("/proxies/{proxy}", proxy_show)
    r.add_post("/proxies/{proxy}", proxy_update)
    r.add_patch("/proxies/{proxy}", proxy_update)
    r.add_delete("/proxies/{proxy}", proxy_delete)
    r.add_get("/proxies/{proxy}/toxics", toxic_index)
    r.add_post("/proxies/{proxy}/toxics", toxic_create)
    r.add_get("/proxies/{proxy}/toxics/{toxic}", toxic_show)
    r.add_post("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_patch("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_delete("/proxies/{proxy}/toxics/{toxic}", toxic_delete)
    return app
