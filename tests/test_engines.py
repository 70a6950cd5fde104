"""Both HTTP engines against real servers on 127.0.0.1.

A real aiohttp.web server (plain and TLS) and a scripted raw TCP server (for
replies aiohttp would never send: 1xx, EOF-delimited bodies, replies cut
short, connections dropped before replying) run on a background thread
(tests/http_servers.py); the clients run in uvloop in the test thread. Every
load here is bounded and local.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time

import pytest
import uvloop
from engine_clients import every_path, header, new_client, run, wire_size, with_client
from http_servers import RAW_SEEN, Servers, payload

from loadctl.agent.engine_fast import Exchange, FastClient, serialise_request
from loadctl.agent.engines import make_client
from loadctl.agent.fast_conn import BIG_BODY, Pool, Prepared
from loadctl.agent.http import (
    ConnectFailed,
    Endpoint,
    HttpClient,
    HttpRequest,
    Reply,
    RequestTimeout,
    SendError,
    outcome_of_status,
)

from cluster import free_port

# -- both engines ------------------------------------------------------------


@every_path
def test_get_and_post_echo_headers_and_body(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> tuple[Reply, Reply]:
        get = HttpRequest(
            servers.http, "GET", "/echo?x=1", headers=(("X-Custom", "yes"),), want_body=True
        )
        post = HttpRequest(
            servers.http,
            "POST",
            "/echo",
            headers=(("Content-Type", "application/json"),),
            body=b'{"a": 1}',
            want_body=True,
        )
        return await client.send(get, 5), await client.send(post, 5)

    get, post = with_client(engine, body)
    assert get.status == 200 and get.body == b""
    assert header(get, "X-Method") == "GET" and header(get, "X-Path") == "/echo?x=1"
    sent = json.loads(header(get, "X-Headers") or "{}")
    assert sent["x-custom"] == "yes"
    assert sent["host"] == servers.http.authority
    assert sent["user-agent"].startswith("loadctl/")
    assert post.status == 200 and post.body == b'{"a": 1}'
    assert header(post, "X-Method") == "POST"
    sent = json.loads(header(post, "X-Headers") or "{}")
    assert sent["content-type"] == "application/json" and sent["content-length"] == "8"
    assert post.bytes_in > len(post.body)


@every_path
def test_status_classes(servers: Servers, engine: str) -> None:
    codes = [200, 201, 204, 301, 304, 404, 418, 500, 503]

    async def body(client: HttpClient) -> list[Reply]:
        return [
            await client.send(HttpRequest(servers.http, "GET", f"/status/{c}"), 5) for c in codes
        ]

    replies = with_client(engine, body)
    assert [r.status for r in replies] == codes
    assert [outcome_of_status(r.status) for r in replies] == [
        "2xx", "2xx", "2xx", "3xx", "3xx", "4xx", "4xx", "5xx", "5xx"
    ]  # fmt: skip


@every_path
def test_content_length_and_chunked_replies(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> list[Reply]:
        out = []
        for path in ("/bytes/0", "/bytes/5000", "/chunked/5000", "/chunked/0"):
            out.append(await client.send(HttpRequest(servers.http, "GET", path, want_body=True), 5))
            out.append(await client.send(HttpRequest(servers.http, "GET", path), 5))
        return out

    replies = with_client(engine, body)
    assert all(r.status == 200 for r in replies)
    empty, empty_lean, sized, sized_lean, chunked, chunked_lean, chunked0, _ = replies
    assert empty.body == b"" and empty.bytes_in == empty_lean.bytes_in
    assert sized.body == payload(5000) and sized_lean.body == b"" and sized_lean.headers == []
    assert sized.bytes_in == sized_lean.bytes_in == wire_size(servers.http, "/bytes/5000")
    assert header(chunked, "Transfer-Encoding") == "chunked"
    assert chunked.body == payload(5000) and chunked_lean.bytes_in == chunked.bytes_in
    assert chunked.bytes_in > 5000 and chunked0.body == b""


def test_next_request_started_from_the_reply_callback(servers: Servers) -> None:
    """send_soon's callback may start the next request on the same connection while
    the parser that read the reply has not returned yet; after a HEAD that parser
    stops in an error state and must be replaced, whichever parser the next request
    chose (a want_body request uses the other one)."""
    test = "chain-soon"
    kinds = [("HEAD", False), ("GET", True), ("GET", False), ("HEAD", True), ("GET", False)]
    requests = [
        HttpRequest(servers.http, m, "/bytes/100", headers=(("X-Test", test),), want_body=w)
        for m, w in kinds * 2
    ]

    class Chain(Exchange):
        def __init__(self, client: FastClient, done: asyncio.Future[None]) -> None:
            super().__init__()
            self.fast, self.done_fut = client, done
            self.statuses: list[int] = []

        def replied(self, status: int, nbytes: int) -> None:
            self.statuses.append(status)
            if len(self.statuses) < len(requests):  # from inside the parser callback
                self.fast.send_soon(self.fast.prepare(requests[len(self.statuses)]), 5, self)
            else:
                self.done_fut.set_result(None)

        def failed(self, error: SendError) -> None:
            self.done_fut.set_exception(error)

    async def main() -> list[int]:
        client = FastClient(1)
        try:
            warm = HttpRequest(servers.http, "GET", "/bytes/1", headers=(("X-Test", test),))
            await client.send(warm, 5)  # an idle connection: the chain runs on callbacks
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            chain = Chain(client, done)
            client.send_soon(client.prepare(requests[0]), 5, chain)
            await asyncio.wait_for(done, 30)
            return chain.statuses
        finally:
            await client.close()

    assert run(main) == [200] * len(requests)
    assert servers.requests[test] == len(requests) + 1
    assert len(servers.peers[test]) == 1  # one keep-alive connection throughout


@every_path
def test_head_has_no_body_and_the_connection_stays_usable(servers: Servers, engine: str) -> None:
    test = f"head-{engine}"

    async def body(client: HttpClient) -> list[Reply]:
        head = HttpRequest(servers.http, "HEAD", "/bytes/100", headers=(("X-Test", test),))
        head_full = HttpRequest(
            servers.http, "HEAD", "/bytes/100", headers=(("X-Test", test),), want_body=True
        )
        get = HttpRequest(
            servers.http, "GET", "/bytes/100", headers=(("X-Test", test),), want_body=True
        )
        return [await client.send(r, 5) for r in (head, get, head_full, get, head, get)]

    replies = with_client(engine, body, max_connections=1)
    assert [r.status for r in replies] == [200] * 6
    assert replies[2].body == b"" and header(replies[2], "Content-Length") == "100"
    assert replies[1].body == replies[3].body == replies[5].body == payload(100)
    assert replies[0].bytes_in == replies[2].bytes_in == replies[4].bytes_in
    assert replies[0].bytes_in <= replies[1].bytes_in - 100  # the head only
    assert len(servers.peers[test]) == 1  # one keep-alive connection throughout


@every_path
def test_server_closed_keep_alive_then_more_requests(servers: Servers, engine: str) -> None:
    test = f"close-{engine}"
    headers = (("X-Test", test),)

    async def body(client: HttpClient) -> list[Reply]:
        close = HttpRequest(servers.http, "GET", "/close", headers=headers, want_body=True)
        get = HttpRequest(servers.http, "GET", "/bytes/10", headers=headers)
        out = []
        for _ in range(5):
            out.append(await client.send(close, 5))
            out.append(await client.send(get, 5))
            out.append(await client.send(get, 5))
        return out

    replies = with_client(engine, body, max_connections=2)
    assert [r.status for r in replies] == [200] * 15
    assert all(r.body == b"bye" for r in replies[::3])
    assert all(header(r, "Connection") == "close" for r in replies[::3])
    assert servers.requests[test] == 15
    # each "Connection: close" costs a connection; the GETs after it share one
    assert len(servers.peers[test]) == 6


@every_path
def test_timeout_then_the_pool_still_works(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> tuple[float, list[Reply]]:
        slow = HttpRequest(servers.http, "GET", "/sleep/2")
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.send(slow, 0.3)
        elapsed = time.monotonic() - started
        # several at once, with a pool of 2: all time out, none leaks a slot
        results = await asyncio.gather(
            *(client.send(slow, 0.2) for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, RequestTimeout) for r in results)
        fast = HttpRequest(servers.http, "GET", "/bytes/10")
        return elapsed, list(await asyncio.gather(*(client.send(fast, 5) for _ in range(20))))

    elapsed, replies = with_client(engine, body, max_connections=2)
    assert 0.25 <= elapsed < 1.9  # the server answers at 2 s
    assert all(r.status == 200 for r in replies)


@every_path
def test_connection_refused_is_a_connect_error(servers: Servers, engine: str) -> None:
    closed = Endpoint("http", "127.0.0.1", free_port())

    async def body(client: HttpClient) -> Reply:
        for _ in range(3):  # failures must not leak pool slots (limit is 1)
            with pytest.raises(ConnectFailed):
                await client.send(HttpRequest(closed, "GET", "/"), 5)
        return await client.send(HttpRequest(servers.http, "GET", "/bytes/1"), 5)

    assert with_client(engine, body, max_connections=1).status == 200


@every_path
def test_keep_alive_connections_are_reused(servers: Servers, engine: str) -> None:
    test = f"reuse-{engine}"
    request = HttpRequest(servers.http, "GET", "/bytes/10", headers=(("X-Test", test),))

    async def body(client: HttpClient) -> None:
        for _ in range(50):
            await client.send(request, 5)

        async def worker() -> None:
            for _ in range(25):
                await client.send(request, 5)

        await asyncio.gather(*(worker() for _ in range(8)))

    with_client(engine, body, max_connections=4)
    assert servers.requests[test] == 250
    assert 1 <= len(servers.peers[test]) <= 4


@every_path
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_thousand_requests_32_concurrent(servers: Servers, engine: str, loop: str) -> None:
    test = f"bulk-{engine}-{loop}"
    request = HttpRequest(servers.http, "GET", "/bytes/100", headers=(("X-Test", test),))
    expected = wire_size(servers.http, "/bytes/100")
    replies: list[Reply] = []

    async def main() -> None:
        client = new_client(engine, 32)
        queue = iter(range(1000))

        async def worker() -> None:
            for _ in queue:
                replies.append(await client.send(request, 10))

        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(32))), 60)
        finally:
            await client.close()

    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())
    assert len(replies) == 1000
    assert all(r.status == 200 and r.bytes_in == expected for r in replies)
    assert servers.requests[test] == 1000
    assert len(servers.peers[test]) <= 32


@every_path
def test_large_bodies(servers: Servers, engine: str) -> None:
    big = payload(1 << 20)

    async def body(client: HttpClient) -> tuple[Reply, Reply, Reply]:
        down = await client.send(
            HttpRequest(servers.http, "GET", f"/bytes/{1 << 20}", want_body=True), 10
        )
        lean = await client.send(HttpRequest(servers.http, "GET", f"/bytes/{1 << 20}"), 10)
        up = await client.send(
            HttpRequest(servers.http, "POST", "/echo", body=big, want_body=True), 10
        )
        return down, lean, up

    down, lean, up = with_client(engine, body)
    assert down.body == big and lean.body == b""
    assert down.bytes_in == lean.bytes_in == wire_size(servers.http, f"/bytes/{1 << 20}")
    assert up.status == 200 and up.body == big


@every_path
def test_want_body_returns_headers_and_body(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> tuple[Reply, Reply]:
        full = await client.send(HttpRequest(servers.http, "GET", "/bytes/64", want_body=True), 5)
        lean = await client.send(HttpRequest(servers.http, "GET", "/bytes/64"), 5)
        return full, lean

    full, lean = with_client(engine, body)
    assert full.body == payload(64) and header(full, "Content-Length") == "64"
    assert header(full, "Server") is not None
    assert lean.headers == [] and lean.body == b"" and lean.bytes_in == full.bytes_in


@every_path
def test_informational_reply_is_skipped(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> Reply:
        return await client.send(HttpRequest(servers.raw, "GET", "/continue", want_body=True), 5)

    reply = with_client(engine, body)
    assert reply.status == 200 and reply.body == b"ok"


@every_path
def test_body_ending_at_eof(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> list[Reply]:
        return [
            await client.send(HttpRequest(servers.raw, "GET", "/eof", want_body=True), 5)
            for _ in range(3)
        ]

    replies = with_client(engine, body, max_connections=1)
    assert all(r.status == 200 and r.body == payload(3000) for r in replies)


@every_path
@pytest.mark.parametrize("path", ["/cut", "/cut-chunked", "/garbage"])
def test_reply_cut_short_or_garbled_is_an_error(servers: Servers, engine: str, path: str) -> None:
    async def body(client: HttpClient) -> Reply:
        with pytest.raises(SendError) as caught:
            await client.send(HttpRequest(servers.raw, "GET", path), 5)
        assert type(caught.value) is SendError  # "error", neither timeout nor connect_error
        return await client.send(HttpRequest(servers.http, "GET", "/bytes/1"), 5)

    assert with_client(engine, body, max_connections=1).status == 200


@every_path
@pytest.mark.parametrize("path", ["/noreply", "/reset"])
def test_no_reply_on_a_fresh_connection_is_not_resent(
    servers: Servers, engine: str, path: str
) -> None:
    """Closed (or reset) without a reply on a new connection: ConnectFailed, and the
    server saw the request once. (aiohttp alone would send it again.)"""

    async def body(client: HttpClient) -> None:
        for _ in range(3):
            with pytest.raises(ConnectFailed):
                await client.send(HttpRequest(servers.raw, "GET", path), 5)

    before = RAW_SEEN[path]
    with_client(engine, body, max_connections=1)
    assert RAW_SEEN[path] - before == 3


@every_path
def test_idle_connection_closed_by_the_server(servers: Servers, engine: str) -> None:
    # The server sends an unsolicited 408 on the idle connection and closes it.
    async def body(client: HttpClient) -> list[Reply]:
        replies = []
        for method in ("GET", "POST", "GET"):
            replies.append(await client.send(HttpRequest(servers.raw, method, "/idle-408"), 5))
            await asyncio.sleep(0.2)
        return replies

    replies = with_client(engine, body, max_connections=1)
    assert [r.status for r in replies] == [200] * 3


@every_path
def test_stale_keep_alive_retried_for_idempotent_only(servers: Servers, engine: str) -> None:
    # /drop-second answers the first request of a connection and drops the
    # connection, unanswered, at the second: a keep-alive race, every time.
    async def body(client: HttpClient) -> list[Reply]:
        get = HttpRequest(servers.raw, "GET", "/drop-second")
        post = HttpRequest(servers.raw, "POST", "/drop-second", body=b"x")
        replies = [await client.send(get, 5) for _ in range(4)]  # each retried once
        with pytest.raises(ConnectFailed):
            await client.send(post, 5)  # not idempotent: never resent
        return replies

    replies = with_client(engine, body, max_connections=1)
    assert [r.status for r in replies] == [200] * 4


@every_path
def test_https_with_a_self_signed_certificate(servers: Servers, engine: str) -> None:
    if servers.https is None or servers.https_ca is None:
        pytest.skip("the openssl command is not installed: no self-signed certificate for TLS")
    https = servers.https
    context = ssl.create_default_context(cafile=servers.https_ca)

    async def body(client: HttpClient) -> list[Reply]:
        request = HttpRequest(https, "GET", "/bytes/2000", want_body=True)
        return list(await asyncio.gather(*(client.send(request, 5) for _ in range(20))))

    replies = with_client(engine, body, max_connections=4, ssl_context=context)
    assert all(r.status == 200 and r.body == payload(2000) for r in replies)

    async def untrusted(client: HttpClient) -> None:
        with pytest.raises(ConnectFailed):
            await client.send(HttpRequest(https, "GET", "/bytes/1"), 5)

    with_client(engine, untrusted)  # the default context does not trust the certificate


@every_path
def test_cancelled_send_frees_its_connection(servers: Servers, engine: str) -> None:
    async def body(client: HttpClient) -> Reply:
        task = asyncio.ensure_future(client.send(HttpRequest(servers.http, "GET", "/sleep/2"), 5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await client.send(HttpRequest(servers.http, "GET", "/bytes/1"), 5)

    assert with_client(engine, body, max_connections=1).status == 200


@every_path
def test_pool_limit_queues_requests(servers: Servers, engine: str) -> None:
    test = f"limit-{engine}"
    request = HttpRequest(servers.http, "GET", "/sleep/0.05", headers=(("X-Test", test),))

    async def body(client: HttpClient) -> list[Reply]:
        return list(await asyncio.gather(*(client.send(request, 10) for _ in range(12))))

    replies = with_client(engine, body, max_connections=3)
    assert [r.status for r in replies] == [200] * 12
    assert len(servers.peers[test]) <= 3


@every_path
def test_one_pool_limit_across_endpoints(servers: Servers, engine: str) -> None:
    # With one connection for two endpoints, each request must take over the
    # slot of the other endpoint's idle or busy connection.
    async def body(client: HttpClient) -> list[Reply]:
        a = HttpRequest(servers.http, "GET", "/bytes/10")
        b = HttpRequest(servers.raw, "GET", "/continue")
        sequential = [await client.send(r, 5) for r in (a, b, a, b)]
        concurrent = await asyncio.gather(*(client.send(r, 5) for r in (a, b) * 10))
        return sequential + list(concurrent)

    replies = with_client(engine, body, max_connections=1)
    assert len(replies) == 24 and all(r.status == 200 for r in replies)


# -- the fast engine alone ---------------------------------------------------


def test_fast_timed_out_connection_is_not_reused(servers: Servers) -> None:
    async def main() -> tuple[int, int]:
        client = FastClient(1)
        try:
            await client.send(HttpRequest(servers.http, "GET", "/bytes/1"), 5)
            before = client.connections
            with pytest.raises(RequestTimeout):
                await client.send(HttpRequest(servers.http, "GET", "/sleep/2"), 0.1)
            await asyncio.sleep(0.05)
            return before, client.connections
        finally:
            await client.close()

    assert run(main) == (1, 0)


def test_fast_request_serialisation() -> None:
    ep = Endpoint.parse("http://example.test:8080")
    wire = serialise_request(
        HttpRequest(
            ep, "post", "/a b?q=é", headers=(("X-A", "1"), ("content-length", "99")), body=b"hi"
        )
    )
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /a%20b?q=%C3%A9 HTTP/1.1"
    assert b"Host: example.test:8080" in lines and b"X-A: 1" in lines
    assert b"Content-Length: 2" in lines and b"content-length: 99" not in lines
    assert body == b"hi"
    assert b"Content-Length" not in serialise_request(HttpRequest(ep, "GET", "/"))
    with pytest.raises(SendError):
        serialise_request(HttpRequest(ep, "GET", "/", headers=(("X-Bad", "a\r\nInjected: 1"),)))


# -- choosing and making engines -----------------------------------------------


def test_make_client_refuses_an_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown HTTP engine"):
        make_client("curl", 4)


@pytest.mark.parametrize(
    "path", ["/a", "/items/42?u=7", "/a b/é?q=x y", "/tab\there", "", "no-slash", "/%41"]
)
@pytest.mark.parametrize("body", [b"", b"hi", b"x" * (BIG_BODY + 1)])
def test_a_new_path_on_a_prepared_request_is_what_a_whole_preparation_gives(
    path: str, body: bytes
) -> None:
    """Callback users send a templated path by swapping the request line of the step's
    prepared static form (`Prepared.with_path`): byte for byte the same request."""
    ep = Endpoint.parse("http://example.test:8080/base")
    pool = Pool(ep, None)
    static = HttpRequest(ep, "post", "/items/${id}", headers=(("X-A", "1"),), body=body)
    swapped = Prepared(static, pool).with_path(path)
    whole = Prepared(dataclasses.replace(static, path=path), pool)
    assert (swapped.wire, swapped.big_body) == (whole.wire, whole.big_body)
    assert swapped.wire.startswith(b"POST /base/") or path in ("", "no-slash")
    assert (swapped.is_head, swapped.idempotent, swapped.reads, swapped.pool) == (
        whole.is_head,
        whole.idempotent,
        whole.reads,
        whole.pool,
    )
    assert (swapped.line_end, swapped.head_len, swapped.target, swapped.url) == (
        whole.line_end,
        whole.head_len,
        whole.target,
        whole.url,
    )
