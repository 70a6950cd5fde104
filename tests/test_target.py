"""The demo target, as a real process on 127.0.0.1, driven by real HTTP clients.

Every load here is bounded (at most a few thousand requests, a few seconds).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from target_process import TARGET_COMMAND, TargetProcess, running_target

DEFAULTS: dict[str, Any] = {
    "latency": "0",
    "error_rate": 0.0,
    "stall_seconds": 0,
    "workers": 0,
    "service_time": "10ms",
    "queue_limit": None,
}


@pytest.fixture(scope="module")
def shared() -> Iterator[TargetProcess]:
    with running_target() as target:
        yield target


@pytest.fixture
def target(shared: TargetProcess) -> TargetProcess:
    """The module's target with default settings and zeroed counts."""
    shared.configure(**DEFAULTS)
    shared.reset()
    return shared


async def _fetch(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, float, float]:
    """(status, latency, completion time on time.monotonic())."""
    start = time.monotonic()
    async with session.request(method, url, **kw) as resp:
        await resp.read()
        end = time.monotonic()
        return resp.status, end - start, end


async def _burst(url: str, count: int, *, concurrency: int, warm: str | None = None) -> list[Any]:
    """`count` GETs of `url` with at most `concurrency` in flight; optionally warm the
    connection pool first with `concurrency` concurrent GETs of `warm`."""
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warm is not None:
            await asyncio.gather(*(_fetch(session, "GET", warm) for _ in range(concurrency)))

        async def one() -> tuple[int, float, float]:
            async with sem:
                return await _fetch(session, "GET", url)

        return await asyncio.gather(*(one() for _ in range(count)))


def _run(args: list[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TARGET_COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# -- endpoints and counting --


def test_endpoints_answer_and_are_counted(target: TargetProcess) -> None:
    assert target.request("GET", "/health") == (200, {"status": "ok"})

    status, stats = target.request("GET", "/api/inventory/stats")
    assert status == 200
    assert stats["items"] == 400
    assert stats["total_quantity"] > 0 and stats["total_value"] > 0
    assert len(stats["top_by_value"]) == 10
    values = [t["value"] for t in stats["top_by_value"]]
    assert values == sorted(values, reverse=True)
    assert sum(c["items"] for c in stats["by_category"].values()) == 400
    status, stats3 = target.request("GET", "/api/inventory/stats?top=3&category=books")
    assert status == 200 and len(stats3["top_by_value"]) == 3
    assert stats3["items"] == stats["by_category"]["books"]["items"]

    status, item = target.request("GET", "/api/inventory/items/7")
    assert status == 200 and item["id"] == 7 and {"sku", "price", "quantity"} <= set(item)
    assert target.request("GET", "/api/inventory/items/7")[1] == item  # deterministic
    assert target.request("GET", "/api/inventory/items/401")[0] == 404
    assert target.request("GET", "/api/inventory/items/abc")[0] == 404

    start = time.monotonic()
    assert target.request("GET", "/delay/80") == (200, {"delayed_ms": 80})
    assert time.monotonic() - start >= 0.080
    assert target.request("GET", "/delay/999999")[0] == 400
    assert target.request("GET", "/no/such/path")[0] == 404

    target.counts()  # control-plane requests are never counted
    target.config()
    counts = target.counts()
    assert counts["total"] == 10
    assert counts["paths"] == {
        "/health": 1,
        "/api/inventory/stats": 2,
        "/api/inventory/items/7": 2,
        "/api/inventory/items/401": 1,
        "/api/inventory/items/abc": 1,
        "/delay/80": 1,
        "/delay/999999": 1,
        "/no/such/path": 1,
    }
    assert counts["statuses"] == {"200": 6, "400": 1, "404": 3}
    assert counts["unauthorized"] == 0
    assert counts["first_ts"] <= counts["last_ts"] <= time.time()
    assert time.time() - counts["first_ts"] < 10

    # /metrics is valid Prometheus text, by route template and status.
    status, text = target.request("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    samples = {
        (s.labels.get("path"), s.labels.get("status")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "loadctl_target_requests_total"
    }
    assert samples[("/api/inventory/items/{id}", "200")] == 2
    assert samples[("/api/inventory/items/{id}", "404")] == 2
    assert samples[("/health", "200")] == 1
    assert samples[("<unmatched>", "404")] == 1

    empty = target.reset()
    assert empty == target.counts()
    assert empty["total"] == 0 and empty["paths"] == {} and empty["statuses"] == {}
    assert empty["first_ts"] is None and empty["last_ts"] is None


def test_counts_at_arrival_even_if_the_client_leaves(target: TargetProcess) -> None:
    async def leave_early() -> None:
        timeout = aiohttp.ClientTimeout(total=0.15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(asyncio.TimeoutError):
                await _fetch(session, "GET", target.url + "/delay/500")

    asyncio.run(leave_early())
    counts = target.counts()
    assert counts["total"] == 1 and counts["paths"] == {"/delay/500": 1}
    assert counts["statuses"] == {}  # not answered yet
    time.sleep(0.6)
    assert target.counts()["statuses"] == {"200": 1}  # the handler ran to the end


def test_login_orders_and_unauthorized(target: TargetProcess) -> None:
    assert target.request("POST", "/api/login", {"username": "alice", "password": "nope"})[0] == 401
    assert target.request("POST", "/api/login", {"username": "alice"})[0] == 401
    assert target.request("POST", "/api/login", {"password": "pw-"})[0] == 400
    status, reply = target.request(
        "POST", "/api/login", {"username": "alice", "password": "pw-alice"}
    )
    assert status == 200
    alice = {"Authorization": f"Bearer {reply['token']}"}
    status, reply = target.request("POST", "/api/login", {"username": "bob", "password": "pw-bob"})
    bob = {"Authorization": f"Bearer {reply['token']}"}
    _, _, bob_mac = reply["token"].partition(".")
    alice_name = alice["Authorization"].split()[1].partition(".")[0]
    forged = {"Authorization": f"Bearer {alice_name}.{bob_mac}"}  # bob's MAC, alice's name

    assert target.request("GET", "/api/orders")[0] == 401
    assert target.request("GET", "/api/orders", headers=forged)[0] == 401
    assert target.request("GET", "/api/orders", headers={"Authorization": "Bearer x"})[0] == 401
    assert target.request("POST", "/api/orders", {"item": "lamp"})[0] == 401
    assert target.request("POST", "/api/orders", {"nothing": 1}, headers=alice)[0] == 400

    for item in ("lamp", "rake", "lamp"):
        status, order = target.request("POST", "/api/orders", {"item": item}, headers=alice)
        assert status == 201 and order["item"] == item and order["username"] == "alice"
    assert target.request("POST", "/api/orders", {"item": 42}, headers=bob)[0] == 201

    status, mine = target.request("GET", "/api/orders", headers=alice)
    assert status == 200 and mine["count"] == 3
    assert [o["item"] for o in mine["orders"]] == ["lamp", "rake", "lamp"]
    assert target.request("GET", "/api/orders", headers=bob)[1]["count"] == 1

    counts = target.counts()
    assert counts["unauthorized"] == 6
    assert counts["statuses"]["401"] == 6
    assert counts["logins"] == {"alice": 1, "bob": 1}
    assert counts["order_items"] == {"lamp": 2, "rake": 1, "42": 1}


# -- latency, errors, stalls --


def test_fixed_latency_from_the_command_line() -> None:
    with running_target("--latency", "20ms") as target:
        assert target.config()["latency"] == "20ms"
        fast = []
        slow = []
        for _ in range(10):
            start = time.monotonic()
            assert target.request("GET", "/api/inventory/items/3")[0] == 200
            slow.append(time.monotonic() - start)
            start = time.monotonic()
            assert target.request("GET", "/health")[0] == 200
            fast.append(time.monotonic() - start)
        assert min(slow) >= 0.020
        assert 0.020 <= statistics.median(slow) <= 0.030
        assert statistics.median(fast) < 0.015  # latency applies to /api/* only


def test_latency_specs_at_runtime(target: TargetProcess) -> None:
    reply = target.configure(latency="uniform:5ms:15ms")
    assert reply["latency"] == "uniform:5ms:15ms"
    times = []
    for _ in range(8):
        start = time.monotonic()
        target.request("GET", "/api/inventory/items/1")
        times.append(time.monotonic() - start)
    assert min(times) >= 0.005 and statistics.median(times) < 0.030
    for spec in ("lognormal:2ms:0.5", "exp:2ms", "fixed:1ms", "250us", "0"):
        assert target.configure(latency=spec)["latency"] == spec
        assert target.request("GET", "/api/inventory/items/1")[0] == 200
    for bad in ("fast", "uniform:9ms:1ms", "lognormal:0ms:1", "exp", "20", "-5ms", 20):
        status, reply = target.request("POST", "/_loadctl/config", {"latency": bad})
        assert status == 400 and "latency" in reply["error"], bad
    for bad_body in ({"error_rate": 2}, {"workers": -1}, {"stall_seconds": "x"}, {"nope": 1}):
        assert target.request("POST", "/_loadctl/config", bad_body)[0] == 400
    assert target.config()["latency"] == "0"  # rejected updates change nothing


def test_error_rate_is_roughly_honoured(target: TargetProcess) -> None:
    target.configure(error_rate=0.1)
    results = asyncio.run(_burst(target.url + "/api/inventory/items/5", 2000, concurrency=50))
    errors = sum(1 for status, _, _ in results if status == 500)
    assert {status for status, _, _ in results} <= {200, 500}
    assert 130 <= errors <= 270  # 200 expected, ±5 standard deviations
    counts = target.counts()
    assert counts["total"] == 2000
    assert counts["statuses"] == {"200": 2000 - errors, "500": errors}
    target.configure(error_rate=0)
    assert target.request("GET", "/health")[0] == 200


def test_stall_freezes_new_and_in_flight_requests(target: TargetProcess) -> None:
    target.configure(latency="200ms")

    async def scenario() -> dict[str, float]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            in_flight = asyncio.create_task(
                _fetch(session, "GET", target.url + "/api/inventory/items/1")
            )
            await asyncio.sleep(0.05)
            status, control_latency, stalled_at = await _fetch(
                session, "POST", target.url + "/_loadctl/config", json={"stall_seconds": 1.0}
            )
            assert status == 200
            await asyncio.sleep(0.1)
            arriving = asyncio.create_task(_fetch(session, "GET", target.url + "/health"))
            await asyncio.sleep(0.1)
            counts_status, counts_latency, _ = await _fetch(
                session, "GET", target.url + "/_loadctl/counts"
            )
            assert counts_status == 200
            (s1, _, done1), (s2, _, done2) = await asyncio.gather(in_flight, arriving)
            assert s1 == s2 == 200
            return {
                "control": control_latency,
                "counts": counts_latency,
                "in_flight": done1 - stalled_at,
                "arriving": done2 - stalled_at,
            }

    t = asyncio.run(scenario())
    assert t["control"] < 0.2 and t["counts"] < 0.2  # the control plane never stalls
    # Without the stall, the in-flight request would have ended ~0.15 s after it began.
    assert 0.9 <= t["in_flight"] <= 1.6
    assert 0.9 <= t["arriving"] <= 1.6
    assert target.config()["stall_remaining"] == 0
    assert target.counts()["paths"] == {"/api/inventory/items/1": 1, "/health": 1}


# -- capacity model --


def test_capacity_model_queues_and_sheds() -> None:
    with running_target("--workers", "8", "--service-time", "10ms") as target:
        config = target.config()
        assert config["workers"] == 8 and config["capacity_rps"] == 800

        # 200 at once: capacity 800/s, so the last answers ~0.25 s after the first is sent.
        results = asyncio.run(
            _burst(
                target.url + "/api/inventory/items/2",
                200,
                concurrency=200,
                warm=target.url + "/health",
            )
        )
        assert all(status == 200 for status, _, _ in results)
        first_sent = min(done - latency for _, latency, done in results)
        done = sorted(done for _, _, done in results)
        assert 0.25 <= done[-1] - first_sent <= 1.0, done[-1] - first_sent  # 1.0: loaded CI
        # Answers leave at the workers' pace (without the model they all land within ~15 ms).
        assert done[-1] - done[0] >= 0.12, done[-1] - done[0]
        assert target.counts()["statuses"] == {"200": 400}

        # With a queue limit, the excess is refused at once. A slower service (160/s)
        # keeps the burst well above capacity even if the client sends slowly.
        target.configure(queue_limit=20, service_time="50ms")
        target.reset()
        results = asyncio.run(
            _burst(
                target.url + "/api/inventory/items/2",
                200,
                concurrency=200,
                warm=target.url + "/health",
            )
        )
        ok = [lat for status, lat, _ in results if status == 200]
        shed = [lat for status, lat, _ in results if status == 503]
        assert len(ok) + len(shed) == 200
        assert len(ok) >= 28 and len(shed) >= 50, (len(ok), len(shed))
        assert statistics.median(shed) < statistics.median(ok)
        assert max(ok) < 0.6  # at most 8 + 20 ahead: ~0.2 s of queueing and service
        counts = target.counts()
        assert counts["statuses"] == {"200": 200 + len(ok), "503": len(shed)}

        # The model is switched off at runtime.
        target.configure(workers=0)
        assert target.config()["capacity_rps"] is None


# -- the command line --


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(sig: signal.Signals) -> None:
    with running_target() as target:
        assert target.request("GET", "/health")[0] == 200
        target.proc.send_signal(sig)
        assert target.proc.wait(5) == 0
        assert "Traceback" not in target.stderr_text()


BAD_OPTIONS = [
    ["--latency", "bogus"],
    ["--latency", "uniform:15ms:5ms"],
    ["--service-time", "lognormal:10ms:x"],
    ["--error-rate", "1.5"],
    ["--error-rate", "lots"],
    ["--port", "abc"],
    ["--workers", "0"],
    ["--queue-limit", "5"],
    ["--no-such-option"],
]


def test_bad_options_exit_2_with_one_line() -> None:
    procs = [
        subprocess.Popen(
            [*TARGET_COMMAND, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in BAD_OPTIONS
    ]
    for args, proc in zip(BAD_OPTIONS, procs, strict=True):
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 2, (args, err)
        assert out == "", args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, err)
        assert args[0].split("=")[0] in lines[0] or "queue" in lines[0], (args, err)


def test_port_in_use_is_one_line(shared: TargetProcess) -> None:
    result = _run(["--host", "127.0.0.1", "--port", str(shared.port)])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0], result.stderr
