"""The demo target's aiohttp application: routes, the counting middleware, /api/* effects.

Every request except /_loadctl/* is counted when its headers arrive, waits at
the stall gate, and waits there again before answering (so a stall also holds
requests in flight). /api/* requests then get, in order: the configured
latency, a worker from the capacity model (or 503 when its queue is full),
the injected error (500 at `error_rate`), and finally their handler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from loadctl.target_inventory import Item, generate_items, inventory_stats
from loadctl.target_spec import SpecError
from loadctl.target_state import (
    MAX_KEYS,
    Counters,
    Gate,
    TargetConfig,
    WorkerPool,
    apply_update,
    sleep_for,
    sleep_until,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROL_PREFIX = "/_loadctl/"
MAX_DELAY_MS = 60_000
RECENT_ORDERS = 20


class TargetState:
    """Everything one running target holds."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.gate = Gate()
        self.pool: WorkerPool | None = None
        self.rng = random.Random(config.seed)
        self.secret = secrets.token_bytes(32)
        self.items: tuple[Item, ...] = generate_items()
        self.orders: dict[str, deque[dict[str, Any]]] = {}
        self.order_counts: dict[str, int] = {}
        self.next_order_id = 1
        self._sync_pool()

    def reconfigure(self, config: TargetConfig) -> None:
        self.config = config
        self._sync_pool()

    def _sync_pool(self) -> None:
        workers = self.config.workers
        if workers is None:
            self.pool = None
        elif self.pool is None:
            self.pool = WorkerPool(workers, self.config.queue_limit)
        else:
            self.pool.resize(workers, self.config.queue_limit)

    def reset(self) -> None:
        self.counters.reset()
        self.orders.clear()
        self.order_counts.clear()
        self.next_order_id = 1

    # -- tokens: stateless, an HMAC of the username under a per-process secret --

    def token_for(self, username: str) -> str:
        name = base64.urlsafe_b64encode(username.encode()).decode().rstrip("=")
        return f"{name}.{self._mac(name)}"

    def user_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        name, _, mac = token.strip().partition(".")
        if not name or not hmac.compare_digest(mac, self._mac(name)):
            return None
        try:
            return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def _mac(self, name: str) -> str:
        return hmac.new(self.secret, name.encode(), hashlib.sha256).hexdigest()[:32]


STATE = web.AppKey("loadctl_target_state", TargetState)


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    counters = state.counters
    counters.arrived(request.path)
    counters.in_flight += 1
    try:
        await state.gate.wait()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            await state.gate.wait()
            counters.answered(_route_of(request), exc.status)
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            counters.answered(_route_of(request), 500)
            raise
        await state.gate.wait()
        counters.answered(_route_of(request), response.status)
        return response
    finally:
        counters.in_flight -= 1


def api(handler: Handler) -> Handler:
    """Apply the configured latency, capacity model and error rate before `handler`."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        config = state.config
        await sleep_for(config.latency.sample(state.rng))
        pool = state.pool
        if pool is not None:
            end = pool.book(config.service_time.sample(state.rng))
            if end is None:
                return _error(503, "queue full")
            await sleep_until(end)
        if config.error_rate > 0 and state.rng.random() < config.error_rate:
            return _error(500, "injected failure")
        return await handler(request)

    return wrapped


# -- plain endpoints --


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def delay(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["ms"]
    if not raw.isdigit() or int(raw) > MAX_DELAY_MS:
        return _error(400, f"delay must be whole milliseconds from 0 to {MAX_DELAY_MS}")
    ms = int(raw)
    await sleep_for(ms / 1000)
    return web.json_response({"delayed_ms": ms})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    c = state.counters
    lines = [
        "# HELP loadctl_target_requests_total Requests answered, by route and status.",
        "# TYPE loadctl_target_requests_total counter",
    ]
    for (route, status), n in sorted(c.routes.items()):
        lines.append(
            f'loadctl_target_requests_total{{path="{_label(route)}",status="{status}"}} {n}'
        )
    lines += [
        "# HELP loadctl_target_requests_received_total Requests received (counted at arrival).",
        "# TYPE loadctl_target_requests_received_total counter",
        f"loadctl_target_requests_received_total {c.total}",
        "# HELP loadctl_target_unauthorized_total Requests answered 401.",
        "# TYPE loadctl_target_unauthorized_total counter",
        f"loadctl_target_unauthorized_total {c.unauthorized}",
        "# HELP loadctl_target_in_flight Requests being handled now.",
        "# TYPE loadctl_target_in_flight gauge",
        f"loadctl_target_in_flight {c.in_flight}",
    ]
    pool = state.pool
    if pool is not None:
        lines += [
            "# HELP loadctl_target_queue_waiting Requests waiting for a worker.",
            "# TYPE loadctl_target_queue_waiting gauge",
            f"loadctl_target_queue_waiting {pool.waiting()}",
        ]
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


# -- inventory --


async def stats(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        top = int(request.query.get("top", "10"))
    except ValueError:
        return _error(400, "top must be a whole number")
    if not 1 <= top <= 100:
        return _error(400, "top must be between 1 and 100")
    category = request.query.get("category")
    return web.json_response(inventory_stats(state.items, top=top, category=category))


async def item(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    raw = request.match_info["id"]
    if not raw.isdigit() or not 1 <= int(raw) <= len(state.items):
        return _error(404, f"no item {raw!r} (ids are 1 to {len(state.items)})")
    return web.json_response(state.items[int(raw) - 1].to_json())


# -- authenticated area --


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await _json_object(request)
    if body is None:
        return _error(400, 'body must be JSON {"username": ..., "password": ...}')
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username or len(username) > 200:
        return _error(400, "username must be a non-empty string")
    if not isinstance(password, str) or not hmac.compare_digest(
        password.encode(), f"pw-{username}".encode()
    ):
        return _error(401, "bad username or password")
    state.counters.login(username)
    return web.json_response({"token": state.token_for(username), "username": username})


async def list_orders(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    user = state.user_of(request)
    if user is None:
        return _error(401, "missing or invalid bearer token")
    recent = list(state.orders.get(user, ()))
    return web.json_response(
        {"username": user, "count": state.order_counts.get(user, 0), "orders": recent}
    )


async def create_order(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    user = state.user_of(request)
    if user is None:
        return _error(401, "missing or invalid bearer token")
    body = await _json_object(request)
    value = None if body is None else body.get("item")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return _error(400, 'body must be JSON {"item": ...} with a string or integer item')
    item_key = str(value)
    order = {"order_id": state.next_order_id, "item": value, "username": user}
    state.next_order_id += 1
    state.counters.order(item_key)
    state.order_counts[user] = state.order_counts.get(user, 0) + 1
    recent = state.orders.get(user)
    if recent is None and len(state.orders) < MAX_KEYS:
        recent = state.orders[user] = deque(maxlen=RECENT_ORDERS)
    if recent is not None:
        recent.append(order)
    return web.json_response(order, status=201)


# -- control plane (not counted) --


async def get_counts(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE].counters.to_json())


async def post_reset(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.reset()
    return web.json_response(state.counters.to_json())


def _config_json(state: TargetState) -> dict[str, Any]:
    return {**state.config.to_json(), "stall_remaining": round(state.gate.remaining, 3)}


async def get_config(request: web.Request) -> web.StreamResponse:
    return web.json_response(_config_json(request.app[STATE]))


async def post_config(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await _json_object(request)
    if body is None:
        return _error(400, "body must be a JSON object")
    try:
        config, stall = apply_update(state.config, body)
    except SpecError as exc:
        return _error(400, str(exc))
    state.reconfigure(config)
    if stall is not None:
        state.gate.stall(stall)
    return web.json_response(_config_json(state))


def build_app(config: TargetConfig | None = None) -> web.Application:
    """The demo target as an aiohttp application (run it with `target.start_target`)."""
    app = web.Application(middlewares=[observe])
    state = TargetState(config or TargetConfig())
    app[STATE] = state
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/delay/{ms}", delay)
    app.router.add_get("/api/inventory/stats", api(stats))
    app.router.add_get("/api/inventory/items/{id}", api(item))
    app.router.add_post("/api/login", api(login))
    app.router.add_get("/api/orders", api(list_orders))
    app.router.add_post("/api/orders", api(create_order))
    app.router.add_get("/_loadctl/counts", get_counts)
    app.router.add_post("/_loadctl/reset", post_reset)
    app.router.add_get("/_loadctl/config", get_config)
    app.router.add_post("/_loadctl/config", post_config)

    async def release_stall(app: web.Application) -> None:
        app[STATE].gate.release()  # let stalled requests finish before shutdown

    app.on_shutdown.append(release_stall)
    return app
