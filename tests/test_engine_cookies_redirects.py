"""Cookies and redirects, on both engines (and the fast engine's callback entry),
against the real servers of tests/http_servers.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from engine_clients import every_path, header, new_client, wire_size, with_client
from http_servers import Servers, payload

from loadctl.agent.http import HttpClient, HttpRequest, Reply, SendError


@every_path
def test_cookies_are_kept_per_client_and_sent_back(servers: Servers, engine: str) -> None:
    """Set by one reply, sent with the next requests to that server (merged into a
    request's own Cookie header), replaced when set again; a client without a jar
    keeps none, and neither does another client."""

    def get(**kwargs: Any) -> HttpRequest:
        return HttpRequest(servers.http, "GET", "/cookie/get", want_body=True, **kwargs)

    async def body(client: HttpClient) -> list[bytes]:
        got = []
        await client.send(HttpRequest(servers.http, "GET", "/cookie/set/abc"), 5)
        got.append((await client.send(get(), 5)).body)
        got.append((await client.send(get(headers=(("Cookie", "other=1"),)), 5)).body)
        await client.send(HttpRequest(servers.http, "GET", "/cookie/set/xyz"), 5)
        got.append((await client.send(get(), 5)).body)
        other = new_client(engine, 2, cookies=True)
        try:
            got.append((await other.send(get(), 5)).body)
        finally:
            await other.close()
        return got

    assert with_client(engine, body, cookies=True) == [b"abc", b"abc", b"xyz", b"-"]

    async def jarless(client: HttpClient) -> Reply:
        await client.send(HttpRequest(servers.http, "GET", "/cookie/set/abc"), 5)
        return await client.send(get(), 5)

    assert with_client(engine, jarless).body == b"-"  # no jar unless asked for


def test_a_cookie_and_the_requests_own_cookie_header_go_as_one_header(servers: Servers) -> None:
    async def body(client: HttpClient) -> Reply:
        await client.send(HttpRequest(servers.http, "GET", "/cookie/set/abc"), 5)
        own = (("Cookie", "other=1"), ("X-Test", "1"))
        return await client.send(
            HttpRequest(servers.http, "GET", "/echo", headers=own, want_body=True), 5
        )

    echoed = json.loads(header(with_client("fast", body, cookies=True), "X-Headers") or "{}")
    assert echoed["cookie"] == "other=1; session=abc"


@every_path
def test_redirects_are_followed_when_asked(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> tuple[Reply, Reply]:
        followed = await client.send(
            HttpRequest(servers.http, "GET", "/redirect", want_body=True, follow_redirects=True), 5
        )
        not_followed = await client.send(HttpRequest(servers.http, "GET", "/redirect"), 5)
        return followed, not_followed

    followed, not_followed = with_client(engine, body)
    assert followed.status == 200 and followed.body == payload(10)
    assert not_followed.status == 302
    # Every reply of the chain counts, the redirect's body too, on both engines.
    hops = wire_size(servers.http, "/redirect") + wire_size(servers.http, "/bytes/10")
    assert followed.bytes_in == hops


@every_path
@pytest.mark.parametrize(
    ("method", "code", "lands_as", "kept"),
    [
        ("GET", "", "GET", True),
        ("POST", "", "GET", False),
        ("POST", "303", "GET", False),
        ("POST", "308", "POST", True),
    ],
)
def test_a_chain_of_redirects_by_aiohttps_rules(
    servers: Servers, engine: str, method: str, code: str, lands_as: str, kept: bool
) -> None:
    """Four hops (relative, absolute, to another origin) then a 307 to /echo: a POST
    becomes a GET at a 302 or 303 and loses its body, stays a POST with its body at
    a 308 (and the 307), a GET keeps what it had; Authorization does not reach the
    other origin."""
    path = f"/hops/{code + '-' if code else ''}4"
    headers = (("Authorization", "Bearer t"), ("X-Keep", "1"))
    request = HttpRequest(
        servers.http, method, path, headers, b"payload", want_body=True, follow_redirects=True
    )

    async def body(client: HttpClient) -> Reply:
        return await client.send(request, 5)

    reply = with_client(engine, body)
    assert reply.status == 200
    assert header(reply, "X-Method") == lands_as
    assert reply.body == (b"payload" if kept else b"")
    echoed = json.loads(header(reply, "X-Headers") or "{}")
    assert echoed["x-keep"] == "1" and "authorization" not in echoed
    assert echoed["host"].startswith("localhost:")  # it went to the other origin


@every_path
def test_redirects_without_end_or_location(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> tuple[Reply, str]:
        nowhere = await client.send(
            HttpRequest(servers.http, "GET", "/hops/none", follow_redirects=True), 5
        )
        try:
            await client.send(
                HttpRequest(servers.http, "GET", "/hops/loop", follow_redirects=True), 5
            )
        except SendError as exc:
            return nowhere, str(exc)
        return nowhere, ""

    nowhere, loop_error = with_client(engine, body)
    assert nowhere.status == 302  # a redirect without a Location is the reply
    assert "redirect" in loop_error.lower()
