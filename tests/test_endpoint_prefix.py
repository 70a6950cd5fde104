"""A target URL with a path: request paths are relative to it, in both engines.

`target: http://host:port/api` and `path: /items` send `GET /api/items`, as a
k6 or Locust user of a base URL expects. A recording HTTP/1.1 server (a
thread in the test) keeps the request-target of every request it receives;
the engines send to it directly, and then a real cluster (`loadctl run`, two
agent processes) does, with the fast engine and with aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
from collections import Counter
from typing import Any

import pytest

from loadctl.agent.engine_fast import serialise_request
from loadctl.agent.engines import ENGINES, make_client
from loadctl.agent.http import Endpoint, HttpRequest

from cluster import run_scenario
from target_process import serving


# -- the rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "path", "sent"),
    [
        ("http://h:8080", "/items", "/items"),
        ("http://h:8080/", "/items", "/items"),
        ("http://h:8080", "/", "/"),
        ("http://h:8080", "", "/"),
        ("http://h:8080", "items", "/items"),
        ("http://h:8080", "?q=1", "/?q=1"),
        ("http://h:8080/api", "/items", "/api/items"),
        ("http://h:8080/api/", "/items", "/api/items"),
        ("http://h:8080/api", "items", "/api/items"),
        ("http://h:8080/api", "/items?q=1&r=2", "/api/items?q=1&r=2"),
        ("http://h:8080/api", "/", "/api/"),
        ("http://h:8080/api", "", "/api"),
        ("http://h:8080/api", "?q=1", "/api?q=1"),
        ("http://h:8080/api/v2", "/users/7", "/api/v2/users/7"),
        ("https://h/api", "/x", "/api/x"),
    ],
)
def test_the_joining_rule(target: str, path: str, sent: str) -> None:
    endpoint = Endpoint.parse(target)
    assert endpoint.join(path) == sent
    request = HttpRequest(endpoint, "GET", path)
    assert request.target == sent
    assert request.url == endpoint.base_url + sent
    wire = serialise_request(request)
    assert wire.startswith(f"GET {sent} HTTP/1.1\r\n".encode())
    assert f"\r\nHost: {endpoint.authority}\r\n".encode() in wire


def test_the_prefix_is_not_part_of_the_server() -> None:
    a, b = Endpoint.parse("http://h:81/api"), Endpoint.parse("http://h:81/other/")
    assert (a.prefix, b.prefix) == ("/api", "/other")
    assert a != b and a.origin == b.origin == Endpoint("http", "h", 81)
    assert a.base_url == "http://h:81" and a.authority == "h:81"


# -- a server that records what it is sent ------------------------------------------------------
class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def seen(self) -> Counter[str]:
        with self.lock:
            return Counter(self.paths)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the engines use it
    server: Recorder

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _record

    def log_message(self, format: str, *args: Any) -> None:
        pass


def recorder() -> contextlib.AbstractContextManager[Recorder]:
    return serving(Recorder())


# -- the engines ---------------------------------------------------------------------------------
SENT = [
    ("/items", "/api/items"),
    ("/items?q=1", "/api/items?q=1"),
    ("/", "/api/"),
    ("", "/api"),
    ("items", "/api/items"),
    ("/a b/é", "/api/a%20b/%C3%A9"),
]


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_send_under_the_prefix(engine: str) -> None:
    with recorder() as server:
        endpoint = Endpoint.parse(f"http://127.0.0.1:{server.port}/api/")

        async def main() -> list[int]:
            client = make_client(engine, 4)
            try:
                statuses = []
                for path, _ in SENT:
                    reply = await client.send(HttpRequest(endpoint, "GET", path), 5)
                    statuses.append(reply.status)
                post = HttpRequest(endpoint, "POST", "/orders", body=b"{}")
                statuses.append((await client.send(post, 5)).status)
                return statuses
            finally:
                await client.close()

        assert asyncio.run(main()) == [200] * (len(SENT) + 1)
        with server.lock:
            assert server.paths == [sent for _, sent in SENT] + ["/api/orders"]


# -- a real cluster ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_a_cluster_sends_under_the_targets_path(engine: str) -> None:
    """Open-model requests (built once) and users-phase requests (rendered per user)
    both go under /api; the target's count matches the result's."""
    with recorder() as server:
        scenario = {
            "target": f"http://127.0.0.1:{server.port}/api",
            "defaults": {"timeout": "5s", "engine": engine},
            "requests": [
                {"name": "items", "path": "/items?page=2"},
                {"name": "root", "path": "/"},
                {"name": "user", "path": "/users/${user_id}"},
                {"name": "order", "method": "POST", "path": "/orders", "body": {"item": 7}},
            ],
            "phases": [
                {
                    "name": "open",
                    "executor": "constant-rate",
                    "rate": 40,
                    "duration": "1s",
                    "requests": ["items", "root", "order"],
                },
                {
                    "name": "users",
                    "executor": "constant-users",
                    "users": 2,
                    "duration": "1s",
                    "think": "100ms",
                    "flow": "sequence",
                    "requests": ["user"],
                },
            ],
        }
        run = run_scenario(scenario, agents=2, timeout=90)
        assert run.code == 0, run.stderr[-3000:]
        seen = server.seen()
    assert run.data["totals"]["requests"] == sum(seen.values()), seen
    assert set(seen) == {
        "/api/items?page=2",
        "/api/",
        "/api/orders",
        "/api/users/0",
        "/api/users/1",
    }
    assert seen["/api/items?page=2"] + seen["/api/"] + seen["/api/orders"] == 40
    assert run.data["requests"]["user"]["requests"] == seen["/api/users/0"] + seen["/api/users/1"]
