"""CURVE on the cluster link with real ROUTER/DEALER sockets over tcp://127.0.0.1.

"Nothing gets through" is checked from the server side: the ROUTER receives
no message within a generous window (an admitted peer's first message arrives
in milliseconds on loopback).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from loadctl.agent.security import ClientSecurity
from loadctl.coordinator.security import ServerSecurity
from loadctl.protocol.keys import (
    KeyPair,
    add_agent,
    fresh_keypair,
    init_keys,
    load_agent_keys,
)

ADMIT_TIMEOUT_MS = 5000  # an admitted peer's message must arrive within this
SILENCE_MS = 1000  # a refused peer must send nothing within this


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def bind_router(ctx: zmq.Context[Any], security: ServerSecurity) -> tuple[zmq.Socket[Any], str]:
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    security.apply(router)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def connect_dealer(
    ctx: zmq.Context[Any], endpoint: str, security: ClientSecurity
) -> zmq.Socket[Any]:
    dealer: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    security.apply(dealer)
    dealer.connect(endpoint)
    return dealer


def round_trip(router: zmq.Socket[Any], dealer: zmq.Socket[Any], payload: bytes) -> str | None:
    """Dealer -> router -> dealer; returns the ZAP User-Id the router saw."""
    dealer.send(payload)
    assert router.poll(ADMIT_TIMEOUT_MS), "admitted agent's message never arrived"
    frames = router.recv_multipart(copy=False)
    assert [bytes(f.buffer) for f in frames[1:]] == [payload]
    router.send_multipart([frames[0].bytes, b"ack:" + payload])
    assert dealer.poll(ADMIT_TIMEOUT_MS), "coordinator's reply never arrived"
    assert dealer.recv() == b"ack:" + payload
    try:
        user_id = frames[-1].get("User-Id")
    except zmq.ZMQError:  # no ZAP handler authenticated this peer
        return None
    return user_id if isinstance(user_id, str) else None


def assert_nothing_through(router: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> None:
    dealer.send(b"let me in")
    assert router.poll(SILENCE_MS) == 0, "a message got through"


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys")
    add_agent(tmp_path / "keys", "agent-1")
    return tmp_path / "keys"


def test_allow_listed_agent_exchanges_messages(ctx: zmq.Context[Any], key_dir: Path) -> None:
    server = ServerSecurity.from_dir(str(key_dir))
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        dealer = connect_dealer(ctx, endpoint, ClientSecurity.from_dir(key_dir, "agent-1"))
        for i in range(3):
            # The ZAP user id is the agent's allow-list name, on every message.
            assert round_trip(router, dealer, b"hello %d" % i) == "agent-1"
        assert server.admitted == 1
        assert server.refused == 0
        assert "CURVE" in server.describe() and "agent-1" in server.describe()
        router.close()
        dealer.close()
    finally:
        server.stop()


def test_unknown_agent_is_refused_and_named(
    ctx: zmq.Context[Any], key_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loadctl.coordinator.security")
    server = ServerSecurity.from_dir(str(key_dir))
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        stranger = fresh_keypair()  # a valid pair, but not in allowed/
        coordinator_public = load_agent_keys(key_dir, "agent-1").coordinator_public
        dealer = connect_dealer(ctx, endpoint, ClientSecurity(stranger, coordinator_public))
        assert_nothing_through(router, dealer)

        assert server.refused >= 1
        assert server.admitted == 0
        stranger_z85 = stranger.public.decode()
        assert server.refused_keys[0] == stranger_z85
        refusal = server.refusals()[0]
        assert refusal.address == "127.0.0.1"
        assert refusal.count >= 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(stranger_z85 in m and "127.0.0.1" in m for m in warnings), warnings

        # The allow-listed agent still gets in alongside.
        good = connect_dealer(ctx, endpoint, ClientSecurity.from_dir(key_dir, "agent-1"))
        assert round_trip(router, good, b"ok") == "agent-1"
        for s in (router, dealer, good):
            s.close()
    finally:
        server.stop()


def test_agent_pinning_wrong_server_key_gets_nothing_through(
    ctx: zmq.Context[Any], key_dir: Path
) -> None:
    server = ServerSecurity.from_dir(str(key_dir))
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        own = load_agent_keys(key_dir, "agent-1").own  # allow-listed key ...
        impostor_server = fresh_keypair()  # ... but pinned to someone else's server key
        dealer = connect_dealer(ctx, endpoint, ClientSecurity(own, impostor_server.public))
        assert_nothing_through(router, dealer)
        assert dealer.poll(100) == 0
        # The server cannot decrypt the client's HELLO: libzmq drops the
        # handshake before asking ZAP, so this is not counted as a refusal.
        assert server.admitted == 0
        router.close()
        dealer.close()
    finally:
        server.stop()


def test_plaintext_agent_cannot_talk_to_curve_server(ctx: zmq.Context[Any], key_dir: Path) -> None:
    server = ServerSecurity.from_dir(str(key_dir))
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        dealer = connect_dealer(ctx, endpoint, ClientSecurity(insecure=True))
        assert_nothing_through(router, dealer)
        router.close()
        dealer.close()
    finally:
        server.stop()


def test_insecure_server_and_client_work(ctx: zmq.Context[Any]) -> None:
    server = ServerSecurity(insecure=True)
    server.start(ctx)  # no-op
    router, endpoint = bind_router(ctx, server)
    client = ClientSecurity(insecure=True)
    dealer = connect_dealer(ctx, endpoint, client)
    assert round_trip(router, dealer, b"plain") is None
    assert server.insecure and client.insecure
    assert "INSECURE" in server.describe()
    assert "INSECURE" in client.describe()
    router.close()
    dealer.close()
    server.stop()


def curve_server_socket_without_zap(
    ctx: zmq.Context[Any], keys: KeyPair
) -> tuple[zmq.Socket[Any], str]:
    """A CURVE server configured by hand, the way one would without ServerSecurity."""
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_secretkey = keys.secret
    router.curve_publickey = keys.public
    router.curve_server = True
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def test_refusal_is_the_authenticators_doing(ctx: zmq.Context[Any]) -> None:
    """CURVE alone encrypts; only the ZAP authenticator enforces the allow-list.

    Same server key pair, same unknown (but valid) client key pair, twice:

    1. a CURVE server socket with no ZAP handler in its context admits the
       stranger - libzmq skips authentication when nobody answers ZAP;
    2. with ServerSecurity's authenticator started before bind, the same
       stranger is refused and counted.

    So the refusal in (2) comes from the authenticator, not from CURVE.
    """
    server_keys, stranger = fresh_keypair(), fresh_keypair()
    known = fresh_keypair()

    # 1. No authenticator (a separate context: ZAP handlers are per context).
    bare_ctx: zmq.Context[Any] = zmq.Context()
    try:
        router, endpoint = curve_server_socket_without_zap(bare_ctx, server_keys)
        dealer = connect_dealer(bare_ctx, endpoint, ClientSecurity(stranger, server_keys.public))
        # Admitted, and with no authenticated identity.
        assert round_trip(router, dealer, b"anyone who knows the server key") is None
        router.close()
        dealer.close()
    finally:
        bare_ctx.destroy(linger=0)

    # 2. Authenticator running: the same stranger is refused.
    server = ServerSecurity(server_keys, {"known": known.public})
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        dealer = connect_dealer(ctx, endpoint, ClientSecurity(stranger, server_keys.public))
        assert_nothing_through(router, dealer)
        assert server.refused_keys == [stranger.public.decode()]
        router.close()
        dealer.close()
    finally:
        server.stop()


def test_apply_before_start_is_refused(ctx: zmq.Context[Any]) -> None:
    server = ServerSecurity(fresh_keypair(), {})
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    with pytest.raises(RuntimeError, match="before apply"):
        server.apply(router)
    # A socket from another context than the authenticator's is refused too.
    server.start(ctx)
    with pytest.raises(RuntimeError, match="already started"):
        server.start(ctx)
    other: zmq.Context[Any] = zmq.Context()
    try:
        foreign = other.socket(zmq.ROUTER)
        foreign.linger = 0
        with pytest.raises(RuntimeError, match="another zmq context"):
            server.apply(foreign)
        foreign.close()
    finally:
        other.destroy(linger=0)
        server.stop()
        router.close()


def test_stopped_authenticator_fails_closed(ctx: zmq.Context[Any], key_dir: Path) -> None:
    """ZAP_ENFORCE_DOMAIN: without a handler, even an allow-listed agent is refused
    (instead of libzmq's default of admitting anyone)."""
    server = ServerSecurity.from_dir(str(key_dir))
    server.start(ctx)
    router, endpoint = bind_router(ctx, server)
    server.stop()
    try:
        dealer = connect_dealer(ctx, endpoint, ClientSecurity.from_dir(key_dir, "agent-1"))
        assert_nothing_through(router, dealer)
        dealer.close()
    finally:
        router.close()


def test_revoking_takes_effect_for_new_connections(ctx: zmq.Context[Any], key_dir: Path) -> None:
    server = ServerSecurity.from_dir(str(key_dir))
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        server.set_allowed({})
        assert "(none!)" in server.describe()
        agent = ClientSecurity.from_dir(key_dir, "agent-1")
        dealer = connect_dealer(ctx, endpoint, agent)
        assert_nothing_through(router, dealer)
        assert server.refused_keys == [agent.public_key.decode() if agent.public_key else ""]
        router.close()
        dealer.close()
    finally:
        server.stop()


def test_refusal_warnings_are_rate_limited(
    ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loadctl.coordinator.security")
    server_keys, stranger = fresh_keypair(), fresh_keypair()
    server = ServerSecurity(server_keys, {}, log_interval=60.0)
    server.start(ctx)
    try:
        router, endpoint = bind_router(ctx, server)
        dealers = [
            connect_dealer(ctx, endpoint, ClientSecurity(stranger, server_keys.public))
            for _ in range(5)
        ]
        for d in dealers:
            d.send(b"x")
        assert router.poll(SILENCE_MS) == 0
        assert server.refused >= 5
        assert len(server.refusals()) == 1 and server.refusals()[0].count >= 5
        logged = [r for r in caplog.records if stranger.public.decode() in r.getMessage()]
        assert len(logged) == 1
        for s in [router, *dealers]:
            s.close()
    finally:
        server.stop()


def test_asyncio_context(key_dir: Path) -> None:
    """The coordinator's sockets are zmq.asyncio ones; the security setup is the same."""

    async def main() -> None:
        actx = zmq.asyncio.Context()
        server = ServerSecurity.from_dir(str(key_dir))
        server.start(actx)
        try:
            router = actx.socket(zmq.ROUTER)
            router.linger = 0
            server.apply(router)
            port = router.bind_to_random_port("tcp://127.0.0.1")
            good = actx.socket(zmq.DEALER)
            bad = actx.socket(zmq.DEALER)
            for sock, sec in (
                (good, ClientSecurity.from_dir(key_dir, "agent-1")),
                (bad, ClientSecurity(fresh_keypair(), server.public_key)),
            ):
                sock.linger = 0
                sec.apply(sock)
                sock.connect(f"tcp://127.0.0.1:{port}")
            await bad.send(b"bad")
            await good.send(b"good")
            frames = await asyncio.wait_for(router.recv_multipart(), ADMIT_TIMEOUT_MS / 1000)
            assert frames[1:] == [b"good"]
            assert not await router.poll(SILENCE_MS)
            assert server.refused == 1
            for s in (router, good, bad):
                s.close()
        finally:
            server.stop()
            actx.destroy(linger=0)

    asyncio.run(main())
