"""The chaos API in Toxiproxy 2.x's documented shapes (raw HTTP with urllib),
the `loadctl chaos proxy` command, the scenario's `chaos:` parser, and the
coordinator's ChaosTimeline driving a real proxy process.

Everything runs on 127.0.0.1; the proxies here forward nothing but a few
test connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from loadctl.chaos.client import ToxiproxyClient, ToxiproxyError
from loadctl.coordinator.chaos import ChaosTimeline, FaultRecord
from loadctl.protocol.chaos import FaultWindow, chaos_of, parse_chaos
from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.scenario import Scenario

from cluster import free_port
from test_chaos_proxy import CHAOS_COMMAND, ChaosProcess, running_chaos

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chaos.yaml"


def connects(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def shared() -> Iterator[ChaosProcess]:
    # The upstream is a closed port: these tests look at the API, not at traffic.
    with running_chaos("--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{free_port()}") as c:
        yield c


@pytest.fixture
def chaos(shared: ChaosProcess) -> Iterator[ChaosProcess]:
    shared.ok("POST", "/reset")
    yield shared
    for name in list(shared.ok("GET", "/proxies")):
        if name != "target":
            shared.ok("DELETE", f"/proxies/{name}")
    shared.ok("POST", "/reset")


# -- the API's shapes and statuses ---------------------------------------------


def test_version_and_proxy_index(chaos: ChaosProcess) -> None:
    status, version = chaos.call("GET", "/version")
    assert status == 200 and isinstance(version["version"], str)
    status, proxies = chaos.call("GET", "/proxies")
    assert status == 200
    assert proxies == {
        "target": {
            "name": "target",
            "listen": chaos.listen,
            "upstream": proxies["target"]["upstream"],
            "enabled": True,
            "toxics": [],
        }
    }


def test_proxy_create_show_update_delete(chaos: ChaosProcess) -> None:
    upstream = chaos.ok("GET", "/proxies/target")["upstream"]
    status, created = chaos.call(
        "POST", "/proxies", {"name": "db", "listen": "127.0.0.1:0", "upstream": upstream}
    )
    assert status == 201
    assert set(created) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert created["name"] == "db" and created["enabled"] is True and created["toxics"] == []
    host, port = created["listen"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0  # port 0: the one it got
    assert connects(created["listen"])

    assert chaos.call("POST", "/proxies", {"name": "db", "upstream": upstream}) == (
        409,
        {"error": "proxy already exists", "status": 409},
    )
    assert chaos.call("POST", "/proxies", {"name": "x"}) == (
        400,
        {"error": "missing required field: upstream", "status": 400},
    )
    assert chaos.call("POST", "/proxies", {"upstream": upstream}) == (
        400,
        {"error": "missing required field: name", "status": 400},
    )
    status, err = chaos.call("POST", "/proxies", raw=b"{nope")
    assert status == 400 and err["error"].startswith("bad request body")
    assert chaos.call("GET", "/proxies/nope") == (
        404,
        {"error": "proxy not found", "status": 404},
    )

    assert chaos.call("GET", "/proxies/db") == (200, created)
    status, down = chaos.call("POST", "/proxies/db", {"enabled": False})
    assert status == 200 and down == {**created, "enabled": False}
    assert not connects(created["listen"])  # refused: an outage
    status, up = chaos.call("PATCH", "/proxies/db", {"enabled": True})
    assert status == 200 and up["enabled"] is True and up["listen"] == created["listen"]
    assert connects(created["listen"])  # the same address again

    new_port = free_port()
    status, moved = chaos.call("POST", "/proxies/db", {"listen": f"127.0.0.1:{new_port}"})
    assert status == 200 and moved["listen"] == f"127.0.0.1:{new_port}" and moved["enabled"]
    assert connects(moved["listen"]) and not connects(created["listen"])

    assert chaos.call("DELETE", "/proxies/db") == (204, None)
    assert chaos.call("GET", "/proxies/db")[0] == 404
    assert chaos.call("DELETE", "/proxies/db")[0] == 404
    assert not connects(moved["listen"])


def test_a_disabled_proxy_can_be_created_and_listens_once_enabled(chaos: ChaosProcess) -> None:
    listen = f"127.0.0.1:{free_port()}"
    body = {"name": "later", "listen": listen, "upstream": "127.0.0.1:1", "enabled": False}
    status, created = chaos.call("POST", "/proxies", body)
    assert status == 201 and created["enabled"] is False and created["listen"] == listen
    assert not connects(listen)
    assert chaos.call("POST", "/proxies/later", {"enabled": True})[1]["enabled"] is True
    assert connects(listen)


def test_toxic_crud(chaos: ChaosProcess) -> None:
    base = "/proxies/target/toxics"
    assert chaos.call("GET", base) == (200, [])

    status, latency = chaos.call("POST", base, {"type": "latency", "attributes": {"latency": 100}})
    assert status == 200
    assert latency == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 100, "jitter": 0},
    }
    status, cut = chaos.call(
        "POST",
        base,
        {
            "name": "cut",
            "type": "limit_data",
            "stream": "upstream",
            "toxicity": 0.5,
            "attributes": {"bytes": 10},
        },
    )
    assert status == 200
    assert cut == {
        "name": "cut",
        "type": "limit_data",
        "stream": "upstream",
        "toxicity": 0.5,
        "attributes": {"bytes": 10},
    }
    assert chaos.call("POST", base, {"type": "latency"}) == (
        409,
        {"error": "toxic already exists", "status": 409},
    )
    assert chaos.call("POST", base, {"type": "nope"}) == (
        400,
        {"error": "invalid toxic type", "status": 400},
    )
    assert chaos.call("POST", base, {"type": "latency", "stream": "sideways"}) == (
        400,
        {"error": "stream was invalid, can be either upstream or downstream", "status": 400},
    )
    status, err = chaos.call("POST", base, {"type": "latency", "attributes": {"latency": -1}})
    assert status == 400 and "latency" in err["error"]
    assert chaos.call("POST", "/proxies/nope/toxics", {"type": "latency"})[0] == 404

    # Listed upstream first, then downstream, as Toxiproxy does; also in the proxy.
    assert chaos.call("GET", base) == (200, [cut, latency])
    assert chaos.ok("GET", "/proxies/target")["toxics"] == [cut, latency]
    assert chaos.call("GET", f"{base}/cut") == (200, cut)
    assert chaos.call("GET", f"{base}/nope") == (
        404,
        {"error": "toxic not found", "status": 404},
    )

    # An update sets attributes and toxicity; what it does not give keeps its value.
    status, updated = chaos.call(
        "POST", f"{base}/latency_downstream", {"attributes": {"jitter": 5}}
    )
    assert status == 200 and updated["attributes"] == {"latency": 100, "jitter": 5}
    status, updated = chaos.call("PATCH", f"{base}/latency_downstream", {"toxicity": 0.25})
    assert status == 200 and updated == {
        **latency,
        "toxicity": 0.25,
        "attributes": {"latency": 100, "jitter": 5},
    }
    assert chaos.call("POST", f"{base}/nope", {"toxicity": 0.1})[0] == 404

    assert chaos.call("DELETE", f"{base}/cut") == (204, None)
    assert chaos.call("DELETE", f"{base}/cut") == (
        404,
        {"error": "toxic not found", "status": 404},
    )
    assert [t["name"] for t in chaos.ok("GET", base)] == ["latency_downstream"]


def test_every_toxic_type_takes_its_attributes(chaos: ChaosProcess) -> None:
    cases: dict[str, dict[str, Any]] = {
        "latency": {"latency": 1, "jitter": 2},
        "bandwidth": {"rate": 3},
        "slow_close": {"delay": 4},
        "timeout": {"timeout": 5},
        "reset_peer": {"timeout": 6},
        "slicer": {"average_size": 7, "size_variation": 2, "delay": 9},
        "limit_data": {"bytes": 10},
        "loss": {"percent": 2.5, "mode": "stall"},
    }
    for kind, attributes in cases.items():
        body = {"type": kind, "name": kind, "attributes": attributes}
        status, toxic = chaos.call("POST", "/proxies/target/toxics", body)
        assert status == 200 and toxic["attributes"] == attributes, (kind, toxic)
    assert chaos.call("POST", "/proxies/target/toxics", {"type": "bandwidth"})[1]["attributes"] == {
        "rate": 0
    }
    status, err = chaos.call(
        "POST", "/proxies/target/toxics", {"type": "loss", "attributes": {"mode": "sometimes"}}
    )
    assert status == 400 and "mode" in err["error"]


def test_reset_enables_everything_and_removes_every_toxic(chaos: ChaosProcess) -> None:
    chaos.ok("POST", "/proxies/target/toxics", {"type": "latency"})
    chaos.ok("POST", "/proxies/target", {"enabled": False})
    assert not connects(chaos.listen)
    assert chaos.call("POST", "/reset") == (204, None)
    proxy = chaos.ok("GET", "/proxies/target")
    assert proxy["enabled"] is True and proxy["toxics"] == []
    assert connects(chaos.listen)


def test_populate_creates_keeps_and_replaces(chaos: ChaosProcess) -> None:
    target = chaos.ok("GET", "/proxies/target")
    chaos.ok("POST", "/proxies/target/toxics", {"type": "latency"})
    one = {"name": "one", "listen": f"127.0.0.1:{free_port()}", "upstream": "127.0.0.1:1"}
    two = {"name": "two", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:2", "enabled": False}
    same = {k: target[k] for k in ("name", "listen", "upstream")}
    status, reply = chaos.call("POST", "/populate", [one, two, same])
    assert status == 201 and set(reply) == {"proxies"}
    by_name = {p["name"]: p for p in reply["proxies"]}
    assert list(by_name) == ["one", "two", "target"]
    assert by_name["one"]["listen"] == one["listen"] and by_name["one"]["enabled"] is True
    assert by_name["two"]["enabled"] is False
    assert len(by_name["target"]["toxics"]) == 1  # unchanged: kept, toxics and all
    assert set(chaos.ok("GET", "/proxies")) == {"target", "one", "two"}

    status, err = chaos.call("POST", "/populate", [{"name": "three"}])
    assert status == 400 and err["error"] == "missing required field: upstream at proxy 1"
    assert "three" not in chaos.ok("GET", "/proxies")
    assert chaos.call("POST", "/populate", {"name": "x"})[0] == 400


def test_browsers_are_refused(chaos: ChaosProcess) -> None:
    status, text = chaos.call("GET", "/proxies", headers={"User-Agent": "Mozilla/5.0 (X11)"})
    assert status == 403 and "not allowed" in text
    assert chaos.call("GET", "/nothing/here")[0] == 404


# -- the command ---------------------------------------------------------------


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAOS_COMMAND, *args], capture_output=True, text=True, timeout=20, check=False
    )


def test_the_command_reports_mistakes_in_one_line() -> None:
    for args, code, words in [
        (("--listen", "nope", "--upstream", "127.0.0.1:1"), 2, "--listen must be HOST:PORT"),
        (("--listen", "127.0.0.1:0"), 2, "--listen and --upstream go together"),
        ((), 2, "say what to proxy"),
        (("--config", "/nonexistent/proxies.json"), 1, "cannot read --config"),
    ]:
        done = _command(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == code and len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith("Error:") and words in lines[0], (args, lines)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _command(
            "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1", "--api", "127.0.0.1:0"
        )
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
        assert "cannot start the proxies" in done.stderr and "in use" in done.stderr


def test_the_command_populates_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps(
            [
                {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"},
                {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:2"},
            ]
        )
    )
    with running_chaos("--config", str(config)) as chaos:
        assert set(chaos.listens) == {"a", "b"}
        proxies = chaos.ok("GET", "/proxies")
        assert {n: p["listen"] for n, p in proxies.items()} == chaos.listens


# -- the scenario's chaos: list ------------------------------------------------


def _error(items: Any, run_duration: float | None = None) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_chaos(items, ("chaos",), run_duration)
    return info.value


def test_the_example_catalogue_parses() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    scenario = Scenario.from_dict(data)
    windows = chaos_of(data, scenario.duration)
    kinds = [w.toxic.type if w.toxic else "down" for w in windows]
    assert kinds.count("latency") == 4 and kinds.count("loss") == 3
    assert kinds.count("down") == 1 and kinds.count("reset_peer") == 6
    assert {"bandwidth", "slicer"} <= set(kinds)
    assert all(w.end <= scenario.duration for w in windows)
    assert [w.at for w in windows] == sorted(w.at for w in windows)
    names = [w.toxic.name for w in windows if w.toxic]
    assert len(names) == len(set(names))


def test_a_window_parses_with_defaults_and_units() -> None:
    [w] = parse_chaos(
        [
            {
                "at": "1m",
                "duration": "250ms",
                "proxy": "db",
                "toxic": {"type": "latency", "attributes": {"latency": "1.5s", "jitter": 10}},
            }
        ]
    )
    assert (w.at, w.duration, w.end, w.proxy, w.api) == (
        60,
        0.25,
        60.25,
        "db",
        "http://127.0.0.1:8474",
    )
    assert w.toxic is not None and w.toxic.to_json() == {
        "name": "loadctl_1_latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 1500, "jitter": 10},
    }
    [down, reset] = parse_chaos(
        [
            {"at": 0, "duration": 5, "proxy": "p", "toxic": "down", "api": "http://h:1/"},
            {"at": 1, "duration": 1, "proxy": "p", "toxic": "reset_peer"},
        ]
    )
    assert down.is_down and down.toxic is None and down.api == "http://h:1"
    assert reset.toxic is not None and reset.toxic.attributes == {"timeout": 0}
    [slicer] = parse_chaos(
        [
            {
                "at": 0,
                "duration": 1,
                "proxy": "p",
                "toxic": {
                    "type": "slicer",
                    "stream": "upstream",
                    "toxicity": 0.5,
                    "name": "mine",
                    "attributes": {"average_size": 10, "delay": "2ms"},
                },
            }
        ]
    )
    assert slicer.toxic is not None and slicer.toxic.name == "mine"
    assert slicer.toxic.attributes == {"average_size": 10, "size_variation": 0, "delay": 2000}


def test_repeats_expand_into_windows() -> None:
    windows = parse_chaos(
        [
            {
                "at": "10s",
                "duration": "1s",
                "proxy": "p",
                "toxic": {"type": "timeout"},
                "repeat": {"every": "4s", "times": 3},
            }
        ]
    )
    assert [(w.at, w.duration) for w in windows] == [(10, 1), (14, 1), (18, 1)]
    assert [w.toxic.name for w in windows if w.toxic] == [
        "loadctl_1_timeout_downstream_1",
        "loadctl_1_timeout_downstream_2",
        "loadctl_1_timeout_downstream_3",
    ]
    assert windows[1].label == "#1 timeout downstream on p (2/3)"


def test_chaos_mistakes_name_their_path() -> None:
    ok = {"at": "1s", "duration": "2s", "proxy": "p", "toxic": "down"}
    cases: list[tuple[Any, str, str]] = [
        ({"chaos": 1}, "chaos", "expected a list"),
        ([{**ok, "proxy": None}], "chaos[0].proxy", "expected text"),
        ([{k: v for k, v in ok.items() if k != "proxy"}], "chaos[0].proxy", "missing"),
        ([{**ok, "duration": "0s"}], "chaos[0].duration", "longer than zero"),
        ([{**ok, "at": "soon"}], "chaos[0].at", "duration like"),
        ([{**ok, "durration": "1s"}], "chaos[0].durration", "did you mean 'duration'"),
        ([{**ok, "api": "127.0.0.1:8474"}], "chaos[0].api", "http://"),
        ([{**ok, "toxic": "lag"}], "chaos[0].toxic", "not a toxic"),
        ([{**ok, "toxic": {"type": "lag"}}], "chaos[0].toxic.type", "unknown toxic type"),
        ([{**ok, "toxic": {"type": "down"}}], "chaos[0].toxic.type", "toxic: down"),
        (
            [{**ok, "toxic": {"type": "latency", "stream": "up"}}],
            "chaos[0].toxic.stream",
            "not one of",
        ),
        (
            [{**ok, "toxic": {"type": "latency", "toxicity": 1.5}}],
            "chaos[0].toxic.toxicity",
            "probability",
        ),
        (
            [{**ok, "toxic": {"type": "latency", "attributes": {"latncy": 5}}}],
            "chaos[0].toxic.attributes.latncy",
            "no attribute 'latncy'",
        ),
        (
            [{**ok, "toxic": {"type": "latency", "attributes": {"latency": -5}}}],
            "chaos[0].toxic.attributes.latency",
            "≥ 0",
        ),
        (
            [{**ok, "toxic": {"type": "bandwidth", "attributes": {"rate": 1.5}}}],
            "chaos[0].toxic.attributes.rate",
            "whole number",
        ),
        (
            [{**ok, "toxic": {"type": "loss", "attributes": {"percent": 150}}}],
            "chaos[0].toxic.attributes.percent",
            "at most 100",
        ),
        (
            [{**ok, "toxic": {"type": "loss", "attributes": {"mode": "some"}}}],
            "chaos[0].toxic.attributes.mode",
            "one of mixed, stall, reset",
        ),
        ([{**ok, "repeat": {"every": "1s", "times": 3}}], "chaos[0].repeat.every", "overlap"),
        ([ok, {**ok, "at": "2s"}], "chaos[1]", "two outages of proxy 'p'"),
    ]
    for items, where, words in cases:
        err = _error(items["chaos"] if isinstance(items, dict) else items)
        assert err.where() == where and words in err.message, (items, str(err))
    err = _error([{**ok, "at": "70s"}], run_duration=60)
    assert err.where() == "chaos[0].at" and "after the run ends" in err.message
    err = _error([{**ok, "repeat": {"every": "30s", "times": 3}}], run_duration=60)
    assert err.where() == "chaos[0].repeat"
    # Toxics of different names may overlap, and so may faults on different proxies.
    lat = {"type": "latency"}
    parse_chaos([{**ok, "toxic": lat}, {**ok, "toxic": {**lat, "stream": "upstream"}}])
    parse_chaos([ok, {**ok, "proxy": "q"}])


# -- the client and the timeline -----------------------------------------------


def run(main: Any) -> Any:
    return uvloop.run(main())


def test_the_client_speaks_the_api(chaos: ChaosProcess) -> None:
    async def main() -> None:
        async with ToxiproxyClient(chaos.api) as client:
            assert (await client.version()).startswith("loadctl")
            created = await client.create_proxy("c", "127.0.0.1:0", "127.0.0.1:1")
            assert created["enabled"] is True
            toxic = await client.add_toxic("c", "latency", attributes={"latency": 5}, name="slow")
            assert toxic["name"] == "slow" and toxic["stream"] == "downstream"
            updated = await client.update_toxic("c", "slow", attributes={"latency": 7})
            assert updated["attributes"]["latency"] == 7
            assert [t["name"] for t in await client.toxics("c")] == ["slow"]
            assert (await client.set_enabled("c", False))["enabled"] is False
            await client.remove_toxic("c", "slow")
            await client.remove_toxic("c", "slow", missing_ok=True)
            with pytest.raises(ToxiproxyError) as info:
                await client.remove_toxic("c", "slow")
            assert info.value.status == 404 and info.value.message == "toxic not found"
            await client.reset()
            assert (await client.get_proxy("c"))["enabled"] is True
            [p] = await client.populate([{"name": "d", "upstream": "127.0.0.1:1"}])
            assert p["name"] == "d"
            assert set(await client.proxies()) == {"target", "c", "d"}
            await client.delete_proxy("d")
        async with ToxiproxyClient(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
            with pytest.raises(ToxiproxyError) as info:
                await dead.reset()
            assert info.value.status == 0

    run(main)


def _window(at: float, duration: float, api: str, toxic: Any, proxy: str = "target") -> Any:
    return {"at": at, "duration": duration, "proxy": proxy, "api": api, "toxic": toxic}


def test_the_timeline_applies_each_fault_on_time_and_removes_it(chaos: ChaosProcess) -> None:
    windows = parse_chaos(
        [
            _window(0.3, 0.6, chaos.api, {"type": "latency", "attributes": {"latency": 100}}),
            _window(0.5, 0.5, chaos.api, "down"),
            _window(0.4, 0.3, chaos.api, {"type": "timeout", "stream": "upstream"}),
        ]
    )
    events: list[tuple[str, str]] = []

    async def main() -> tuple[list[tuple[float, list[str], bool]], list[FaultRecord]]:
        start = time.time() + 0.2
        timeline = ChaosTimeline(
            windows, start, on_event=lambda kind, r: events.append((kind, r.window.label))
        )
        seen: list[tuple[float, list[str], bool]] = []
        async with ToxiproxyClient(chaos.api) as client:
            timeline.start()
            while time.time() < start + 1.3:
                proxy = await client.get_proxy("target")
                seen.append(
                    (time.time() - start, [t["type"] for t in proxy["toxics"]], proxy["enabled"])
                )
                await asyncio.sleep(0.01)
            await timeline.wait()
            await timeline.close()
        return seen, timeline.records

    seen, records = run(main)

    def span(test: Any) -> tuple[float, float]:
        times = [t for t, toxics, enabled in seen if test(toxics, enabled)]
        return min(times), max(times)

    for test, at, end in [
        (lambda toxics, enabled: "latency" in toxics, 0.3, 0.9),
        (lambda toxics, enabled: "timeout" in toxics, 0.4, 0.7),
        (lambda toxics, enabled: not enabled, 0.5, 1.0),
    ]:
        first, last = span(test)
        assert at <= first < at + 0.08 and end - 0.08 < last <= end + 0.03, (at, end, first, last)
    assert seen[-1][1:] == ([], True)
    by_at = {r.window.at: r for r in records}
    for at, record in by_at.items():
        assert record.error is None and record.applied_at is not None
        assert record.removed_at is not None and not record.active
        planned = record.applied_at - (record.removed_at - record.window.duration)
        assert abs(planned) < 0.05, (at, planned)
    assert sorted(kind for kind, _ in events) == ["applied"] * 3 + ["removed"] * 3


def test_the_timeline_removes_its_faults_when_cancelled(chaos: ChaosProcess) -> None:
    windows = parse_chaos(
        [
            _window(0, 60, chaos.api, {"type": "latency", "attributes": {"latency": 100}}),
            _window(0, 60, chaos.api, "down"),
            _window(30, 5, chaos.api, {"type": "timeout"}),  # never starts
        ]
    )

    async def main() -> tuple[dict[str, Any], dict[str, Any], ChaosTimeline]:
        timeline = ChaosTimeline(windows, time.time())

        async def the_run() -> None:
            async with timeline:
                await asyncio.sleep(100)

        task = asyncio.ensure_future(the_run())
        async with ToxiproxyClient(chaos.api) as client:
            for _ in range(200):
                during = await client.get_proxy("target")
                if during["toxics"] and not during["enabled"]:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await client.get_proxy("target")
        return during, after, timeline

    during, after, timeline = run(main)
    assert [t["type"] for t in during["toxics"]] == ["latency"] and not during["enabled"]
    assert after["toxics"] == [] and after["enabled"] is True
    assert timeline.active == []
    assert [r.applied_at is not None for r in timeline.records] == [True, True, False]


def test_the_timeline_removes_its_faults_after_an_error(chaos: ChaosProcess) -> None:
    windows = parse_chaos([_window(0, 60, chaos.api, {"type": "bandwidth"})])

    async def main() -> dict[str, Any]:
        with contextlib.suppress(RuntimeError):
            async with ChaosTimeline(windows, time.time()) as timeline:
                while not timeline.active:
                    await asyncio.sleep(0.01)
                raise RuntimeError("the run failed")
        async with ToxiproxyClient(chaos.api) as client:
            return await client.get_proxy("target")

    assert run(main)["toxics"] == []


def test_the_timeline_reports_faults_it_cannot_apply(chaos: ChaosProcess) -> None:
    chaos.ok("POST", "/proxies/target/toxics", {"type": "latency", "name": "theirs"})
    dead_api = f"http://127.0.0.1:{free_port()}"
    windows = parse_chaos(
        [
            _window(0, 0.2, chaos.api, {"type": "latency"}, proxy="nope"),
            _window(0, 0.2, chaos.api, {"type": "latency", "name": "theirs"}),
            _window(0, 0.2, dead_api, "down"),
        ]
    )

    async def main() -> tuple[list[str], list[FaultRecord]]:
        timeline = ChaosTimeline(windows, time.time(), api_timeout=1.0)
        problems = await timeline.preflight()
        timeline.start()
        await timeline.wait()
        await timeline.close()
        return problems, timeline.records

    problems, records = run(main)
    assert any("no proxy 'nope'" in p for p in problems), problems
    assert any(dead_api in p for p in problems), problems
    assert all(r.error and "could not" in r.error and r.applied_at is None for r in records)
    # A toxic it did not add (the name was taken) is not removed.
    assert [t["name"] for t in chaos.ok("GET", "/proxies/target/toxics")] == ["theirs"]


def test_fault_windows_are_plain_values() -> None:
    [w] = parse_chaos([{"at": 1, "duration": 2, "proxy": "p", "toxic": "down"}])
    assert isinstance(w, FaultWindow) and w.key == ("http://127.0.0.1:8474", "p")
