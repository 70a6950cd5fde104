"""The scenario model: valid scenarios parse to the right numbers, every kind of
mistake is a ScenarioError with a path, and scenario files name the line."""

from __future__ import annotations

import copy
import datetime
import math
from pathlib import Path
from typing import Any

import pytest

from loadctl.protocol.codec import decode, encode
from loadctl.protocol.fields import ScenarioError, parse_duration
from loadctl.protocol.messages import Plan, Share
from loadctl.protocol.scenario import Phase, Scenario, ThinkTime
from loadctl.scenario_file import ScenarioFileError, load_scenario, parse_scenario_text


def base(**phase: Any) -> dict[str, Any]:
    """A valid scenario with one phase (constant-rate unless overridden)."""
    first = {"executor": "constant-rate", "rate": 50, "duration": "10s"}
    first.update(phase)
    return {
        "target": "http://127.0.0.1:8080",
        "requests": [{"name": "home", "path": "/"}, {"name": "item", "path": "/item/1"}],
        "phases": [first],
    }


def summary(p: Phase) -> dict[str, Any]:
    """What a phase means, comparable across two parses."""
    out: dict[str, Any] = {
        "name": p.name,
        "executor": p.executor,
        "start": p.start,
        "duration": p.duration,
        "think": p.think,
        "requests": p.requests,
        "flow": p.flow,
        "grace": p.grace,
        "connections": p.connections,
        "max_in_flight": p.max_in_flight,
        "disturbance": p.disturbance,
    }
    if p.rate is not None:
        out["rate"] = (p.rate.stages, p.rate.count())
    if p.users is not None:
        out["users"] = (p.users.stages, p.users.peak)
    return out


def error_of(data: Any, scale: float = 1.0) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict(data, scale=scale)
    return caught.value


# -- valid scenarios ----------------------------------------------------------


def test_constant_rate() -> None:
    s = Scenario.from_dict(base())
    (p,) = s.phases
    assert p.executor == "constant-rate" and p.is_open
    assert p.start == 0.0 and p.duration == 10.0
    assert p.rate is not None and p.rate.count() == 500
    assert p.requests == ("home", "item") and p.flow == "mix"
    assert not p.disturbance
    assert s.target == "http://127.0.0.1:8080"
    assert s.duration == 10.0


def test_ramping_rate() -> None:
    data = base()
    data["phases"] = [
        {
            "executor": "ramping-rate",
            "start_rate": 100,
            "stages": [{"duration": "60s", "target": 500}, {"duration": "30s", "target": 0}],
        }
    ]
    (p,) = Scenario.from_dict(data).phases
    assert p.rate is not None
    assert p.duration == 90.0
    assert p.rate.count() == 18000 + 7500
    assert p.rate.rate_at(30.0) == 300.0
    assert p.name == "ramping-rate-1"


def test_burst_is_a_disturbance() -> None:
    (p,) = Scenario.from_dict(base(executor="burst", rate=1000, duration="2s")).phases
    assert p.rate is not None and p.rate.count() == 2000
    assert p.disturbance


def test_constant_users() -> None:
    data = base()
    data["phases"] = [
        {"executor": "constant-users", "users": 25, "duration": "1m", "think": "500ms"}
    ]
    (p,) = Scenario.from_dict(data).phases
    assert not p.is_open and p.users is not None
    assert p.duration == 60.0
    assert p.users.users_at(30.0) == 25 and p.users.peak == 25
    assert p.think == ThinkTime("constant", 0.5)
    assert p.flow == "sequence"


def test_weights_in_a_sequence_are_noted_for_the_summary() -> None:
    """A users phase sends its requests in sequence unless it says `flow: mix`: weights
    given to them then do nothing, which the run's notes say; a mix, an arrival-rate
    phase or equal weights get no note."""
    users = {"executor": "constant-users", "users": 2, "duration": "1s"}
    data = base()
    data["phases"] = [dict(users)]
    data["requests"][0]["weight"] = 3
    (note,) = Scenario.from_dict(data).notes()
    assert (
        "phase constant-users-1:" in note and "weights do not count" in note and "flow: mix" in note
    )
    data["phases"][0]["flow"] = "mix"
    assert Scenario.from_dict(data).notes() == []
    assert Scenario.from_dict({**base(), "requests": data["requests"]}).notes() == []
    assert Scenario.from_dict({**base(), "phases": [users]}).notes() == []  # weights alike


def test_ramping_users() -> None:
    data = base()
    data["phases"] = [
        {
            "executor": "ramping-users",
            "start_users": 10,
            "stages": [{"duration": "10s", "target": 110}, {"duration": "5s", "target": 0}],
            "think": "uniform:1s:3s",
            "flow": "mix",
            "connections": "per-user",
        }
    ]
    (p,) = Scenario.from_dict(data).phases
    assert p.users is not None
    assert p.duration == 15.0
    assert [p.users.users_at(t) for t in (0.0, 5.0, 10.0, 12.5)] == [10, 60, 110, 55]
    assert p.think == ThinkTime("uniform", 1.0, 3.0) and p.think.mean == 2.0
    assert p.flow == "mix" and p.connections == "per-user"


def test_phases_follow_each_other_and_explicit_starts_run_beside() -> None:
    data = base()
    data["phases"] = [
        {"name": "a", "executor": "constant-rate", "rate": 10, "duration": "10s"},
        {"name": "b", "executor": "constant-users", "users": 5, "duration": "20s"},
        {"name": "side", "executor": "burst", "rate": 100, "duration": "3s", "start": "12s"},
        {"name": "c", "executor": "constant-rate", "rate": 10, "duration": "5s"},
        {"name": "late", "executor": "constant-rate", "rate": 1, "duration": "1m", "start": 0},
    ]
    s = Scenario.from_dict(data)
    assert [(p.name, p.start, p.end) for p in s.phases] == [
        ("a", 0.0, 10.0),
        ("b", 10.0, 30.0),
        ("side", 12.0, 15.0),
        ("c", 30.0, 35.0),  # follows b, not the parallel phase
        ("late", 0.0, 60.0),
    ]
    assert s.duration == 60.0


def test_scale_multiplies_rates_and_users() -> None:
    data = base()
    data["phases"] = [
        {"name": "r", "executor": "constant-rate", "rate": 200, "duration": "10s"},
        {
            "name": "rr",
            "executor": "ramping-rate",
            "start_rate": 100,
            "stages": [{"duration": "60s", "target": 500}],
        },
        {"name": "u", "executor": "constant-users", "users": 1000, "duration": "5s"},
        {"name": "one", "executor": "constant-users", "users": 3, "duration": "5s"},
        {
            "name": "ru",
            "executor": "ramping-users",
            "start_users": 0,
            "stages": [{"duration": "10s", "target": 100}, {"duration": "10s", "target": 5}],
        },
    ]
    full = {p.name: p for p in Scenario.from_dict(data).phases}
    tenth = {p.name: p for p in Scenario.from_dict(data, scale=0.1).phases}
    assert full["r"].rate is not None and tenth["r"].rate is not None
    assert (full["r"].rate.count(), tenth["r"].rate.count()) == (2000, 200)
    assert tenth["rr"].rate is not None and tenth["rr"].rate.count() == 1800
    assert tenth["rr"].rate.rate_at(0.0) == pytest.approx(10.0)
    assert tenth["u"].users is not None and tenth["u"].users.peak == 100
    assert tenth["one"].users is not None and tenth["one"].users.peak == 1  # never 0 of 3
    ru = tenth["ru"].users
    assert ru is not None
    assert [(s.start_users, s.end_users) for s in ru.stages] == [(0, 10), (10, 1)]
    assert tenth["u"].duration == full["u"].duration  # time is not scaled
    double = {p.name: p for p in Scenario.from_dict(data, scale=2).phases}
    assert double["r"].rate is not None and double["r"].rate.count() == 4000


def test_requests_and_defaults() -> None:
    data = base()
    data["defaults"] = {"timeout": "2s", "interval": "500ms", "engine": "fast", "connections": 8}
    data["requests"] = [
        {"path": "/a"},
        {"name": "post", "method": "POST", "path": "/b", "body": {"k": [1, 2]}, "weight": 3},
        {"name": "put", "method": "PUT", "path": "/c", "body": "raw", "headers": {"X-N": 5}},
    ]
    s = Scenario.from_dict(data)
    assert s.defaults.timeout == 2.0 and s.defaults.interval == 0.5
    assert s.defaults.engine == "fast" and s.defaults.connections == 8
    a, post, put = s.requests
    assert a.name == "/a" and a.method == "GET" and a.weight == 1
    assert post.body == b'{"k":[1,2]}' and ("Content-Type", "application/json") in post.headers
    assert post.weight == 3
    assert put.body == b"raw" and put.headers == (("X-N", "5"),)
    assert s.phases[0].requests == ("/a", "post", "put")
    assert s.request("post") is post


def test_tls_defaults() -> None:
    assert Scenario.from_dict(base()).defaults.tls_verify is True
    data = base()
    data["defaults"] = {"tls": {"ca": "/etc/staging-ca.pem"}}
    d = Scenario.from_dict(data).defaults
    assert d.tls_verify is True and d.tls_ca == "/etc/staging-ca.pem"
    data["defaults"] = {"tls": {"verify": False}}
    d = Scenario.from_dict(data).defaults
    assert d.tls_verify is False and d.tls_ca is None and d.tls_cert is None
    data["defaults"] = {"tls": {"cert": "client.pem", "key": "client.key"}}
    d = Scenario.from_dict(data).defaults
    assert d.tls_verify is True and (d.tls_cert, d.tls_key) == ("client.pem", "client.key")


@pytest.mark.parametrize(
    ("tls", "path", "words"),
    [
        ({"verify": "no"}, ("defaults", "tls", "verify"), "expected true or false"),
        ({"verify": False, "ca": "ca.pem"}, ("defaults", "tls", "ca"), "of no use"),
        ({"ca": " "}, ("defaults", "tls", "ca"), "PEM file"),
        ({"cafile": "ca.pem"}, ("defaults", "tls", "cafile"), "unknown key"),
        ({"key": "client.key"}, ("defaults", "tls", "key"), "needs its certificate"),
        ({"cert": ""}, ("defaults", "tls", "cert"), "client's certificate"),
        ("off", ("defaults", "tls"), "expected a mapping"),
    ],
)
def test_tls_mistakes(tls: Any, path: tuple[Any, ...], words: str) -> None:
    data = base()
    data["defaults"] = {"tls": tls}
    error = error_of(data)
    assert error.path == path and words in str(error)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), ("10", 10.0),
     (3, 3.0), (0.5, 0.5), ("100us", 1e-4), (" 7 s ", 7.0), (".5s", 0.5)],
)  # fmt: skip
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_wire_round_trip_gives_the_same_phases() -> None:
    data = base()
    data["phases"] = [
        {"name": "a", "executor": "ramping-rate", "stages": [{"duration": "3s", "target": 30}]},
        {"name": "b", "executor": "ramping-users", "stages": [{"duration": "3s", "target": 7}]},
        {"name": "c", "executor": "burst", "rate": 9, "duration": 1, "start": "1s"},
    ]
    data["description"] = "three phases"
    s = Scenario.from_dict(data, scale=0.5)
    again = Scenario.from_wire(s.wire())
    assert [summary(p) for p in again.phases] == [summary(p) for p in s.phases]
    assert again.scale == 0.5
    # and the way it really travels: in a Plan, through the codec
    plan = decode(encode(Plan("run", s.wire(), Share(0, (1,), 0), 0.0, 1.0)))
    assert isinstance(plan, Plan)
    wired = Scenario.from_wire(plan.scenario)
    assert [summary(p) for p in wired.phases] == [summary(p) for p in s.phases]
    assert wired.requests == s.requests and wired.target == s.target


def test_from_wire_rejects_a_bad_scale() -> None:
    s = Scenario.from_dict(base())
    for scale in ("2", True, None, 0, -1.0, math.nan, math.inf):
        with pytest.raises(ScenarioError):
            Scenario.from_wire({"source": s.wire()["source"], "scale": scale})


# -- mistakes -----------------------------------------------------------------


def phase_error(**changes: Any) -> ScenarioError:
    data = base()
    phase = data["phases"][0]
    for key, value in changes.items():
        if value is None:
            phase.pop(key, None)
        else:
            phase[key] = value
    return error_of(data)


def test_unknown_keys_suggest_the_right_one() -> None:
    e = phase_error(raet=50)
    assert e.path == ("phases", 0, "raet")
    assert "did you mean 'rate'" in str(e)
    e = phase_error(grce="5s")
    assert e.path == ("phases", 0, "grce") and "did you mean 'grace'" in str(e)
    data = base()
    data["requests"][0]["methd"] = "GET"
    e = error_of(data)
    assert e.path == ("requests", 0, "methd") and "did you mean 'method'" in str(e)
    data = base()
    data["defualts"] = {}
    e = error_of(data)
    assert e.path == ("defualts",) and "did you mean 'defaults'" in str(e)
    data = base()
    data["zzz"] = 1
    e = error_of(data)
    assert e.path == ("zzz",) and "unknown key 'zzz'" in str(e)


def test_think_time_is_not_for_arrival_rates() -> None:
    e = phase_error(think="1s")
    assert e.path == ("phases", 0, "think") and "unknown key" in str(e)


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"rate": "fast"}, ("phases", 0, "rate"), "expected a number"),
        ({"rate": True}, ("phases", 0, "rate"), "expected a number"),
        ({"rate": [50]}, ("phases", 0, "rate"), "expected a number"),
        ({"rate": 0}, ("phases", 0, "rate"), "greater than 0"),
        ({"rate": -5}, ("phases", 0, "rate"), "greater than 0"),
        ({"rate": math.nan}, ("phases", 0, "rate"), "finite"),
        ({"rate": math.inf}, ("phases", 0, "rate"), "finite"),
        ({"duration": -5}, ("phases", 0, "duration"), "negative"),
        ({"duration": "-5s"}, ("phases", 0, "duration"), "duration like"),
        ({"duration": "0s"}, ("phases", 0, "duration"), "longer than zero"),
        ({"duration": 0}, ("phases", 0, "duration"), "longer than zero"),
        ({"duration": "5 parsecs"}, ("phases", 0, "duration"), "duration like"),
        ({"duration": math.inf}, ("phases", 0, "duration"), "duration like"),
        ({"duration": [1]}, ("phases", 0, "duration"), "duration like"),
        ({"rate": None}, ("phases", 0, "rate"), "missing required key 'rate'"),
        ({"duration": None}, ("phases", 0, "duration"), "missing required key"),
        ({"executor": "constant-rte"}, ("phases", 0, "executor"), "not one of"),
        ({"executor": None}, ("phases", 0, "executor"), "missing required key"),
        ({"executor": 3}, ("phases", 0, "executor"), "expected text"),
        ({"requests": ["home", "nope"]}, ("phases", 0, "requests", 1), "no request named 'nope'"),
        ({"requests": []}, ("phases", 0, "requests"), "at least one"),
        ({"requests": "home"}, ("phases", 0, "requests"), "expected a list"),
        ({"flow": "sequence"}, ("phases", 0, "flow"), "weighted mix"),
        ({"start": "-1s"}, ("phases", 0, "start"), "duration like"),
        ({"max_in_flight": 0}, ("phases", 0, "max_in_flight"), "at least 1"),
        ({"max_in_flight": 2.5}, ("phases", 0, "max_in_flight"), "whole number"),
        ({"disturbance": "yes"}, ("phases", 0, "disturbance"), "true or false"),
        ({"connections": "pooled"}, ("phases", 0, "connections"), "not one of"),
    ],
)
def test_phase_mistakes(changes: dict[str, Any], path: tuple[Any, ...], words: str) -> None:
    e = phase_error(**changes)
    assert e.path == path
    assert words in str(e)
    assert str(e).startswith(e.where() + ": ")


def users_phase(**changes: Any) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "executor": "ramping-users",
        "stages": [{"duration": "10s", "target": 10}],
        "think": "1s",
    }
    phase.update(changes)
    data = base()
    data["phases"] = [phase]
    return data


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"think": "uniform:3s:1s"}, ("phases", 0, "think"), "low ≤ high"),
        ({"think": "uniform:1s"}, ("phases", 0, "think"), "uniform:1s:3s"),
        ({"think": "gauss:1s"}, ("phases", 0, "think"), "uniform:1s:3s"),
        ({"think": "exp:"}, ("phases", 0, "think"), "duration like"),
        ({"think": "exp:soon"}, ("phases", 0, "think"), "duration like"),
        ({"think": -1}, ("phases", 0, "think"), "negative"),
        ({"think": True}, ("phases", 0, "think"), "duration like"),
        ({"think": None}, ("phases", 0, "think"), "duration like"),
        ({"stages": []}, ("phases", 0, "stages"), "at least one"),
        ({"stages": [{"duration": "5s"}]}, ("phases", 0, "stages", 0, "target"), "missing"),
        ({"stages": [{"target": 5}]}, ("phases", 0, "stages", 0, "duration"), "missing"),
        ({"stages": [{"duration": 0, "target": 5}]}, ("phases", 0, "stages", 0, "duration"),
         "longer than zero"),
        ({"stages": [{"duration": 1, "target": -5}]}, ("phases", 0, "stages", 0, "target"),
         "at least 0"),
        ({"stages": [{"duration": 1, "target": 2.5}]}, ("phases", 0, "stages", 0, "target"),
         "whole number"),
        ({"stages": [{"duration": 1, "target": 5, "ramp": "linear"}]},
         ("phases", 0, "stages", 0, "ramp"), "unknown key"),
        ({"stages": ["10s"]}, ("phases", 0, "stages", 0), "expected a mapping"),
        ({"start_users": -1}, ("phases", 0, "start_users"), "at least 0"),
        ({"start_users": 1.5}, ("phases", 0, "start_users"), "whole number"),
    ],
)  # fmt: skip
def test_users_phase_mistakes(changes: dict[str, Any], path: tuple[Any, ...], words: str) -> None:
    e = error_of(users_phase(**changes))
    assert e.path == path
    assert words in str(e)


def test_constant_users_needs_a_user() -> None:
    data = base()
    data["phases"] = [{"executor": "constant-users", "users": 0, "duration": "5s"}]
    assert error_of(data).path == ("phases", 0, "users")
    data["phases"][0]["users"] = 2.5
    assert "whole number" in str(error_of(data))


def test_duplicate_names() -> None:
    data = base()
    data["requests"].append({"name": "home", "path": "/other"})
    e = error_of(data)
    assert e.path == ("requests", 2, "name") and "used twice" in str(e)
    data = base()
    data["requests"].append({"path": "/"})  # named after its path
    data["requests"].append({"path": "/"})
    e = error_of(data)
    assert e.path == ("requests", 3, "name") and "'/'" in str(e)
    data = base()
    data["phases"][0]["name"] = "warm"
    data["phases"].append(dict(data["phases"][0]))
    e = error_of(data)
    assert e.path == ("phases", 1, "name") and "'warm' is used twice" in str(e)
    data = base()
    data["phases"].append(dict(data["phases"][0], name="constant-rate-1"))  # the first's default
    e = error_of(data)
    assert e.path == ("phases", 1, "name") and "used twice" in str(e)


@pytest.mark.parametrize(
    "target",
    [
        "ftp://127.0.0.1/",
        "127.0.0.1:8080",
        "localhost",
        "http://",
        "https:///path",
        "http://host:99999",
        "http://host:port",
        "http://host:0",
        "http://[::1",
        "",
    ],
)
def test_bad_target(target: str) -> None:
    data = base()
    data["target"] = target
    e = error_of(data)
    assert e.path == ("target",)
    assert "http:// or https:// URL" in str(e)


@pytest.mark.parametrize(
    "target", ["http://127.0.0.1:8080", "https://example.test", "http://[::1]:81/", "http://h/"]
)
def test_good_target(target: str) -> None:
    data = base()
    data["target"] = target
    assert Scenario.from_dict(data).target == target.rstrip("/")


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"target": None}, ("target",)),
        ({"phases": None}, ("phases",)),
        ({"phases": []}, ("phases",)),
        ({"phases": [["constant-rate"]]}, ("phases", 0)),
        ({"requests": [{"name": "x"}]}, ("requests", 0, "path")),
        ({"requests": [{"path": "no-slash"}]}, ("requests", 0, "path")),
        ({"requests": [{"path": "/", "method": "FETCH"}]}, ("requests", 0, "method")),
        ({"requests": [{"path": "/", "weight": 0}]}, ("requests",)),
        ({"requests": [{"path": "/", "weight": -1}]}, ("requests", 0, "weight")),
        ({"requests": [{"path": "/", "body": 5}]}, ("requests", 0, "body")),
        ({"requests": [{"path": "/", "headers": {"X": [1]}}]}, ("requests", 0, "headers", "X")),
        ({"requests": [{"path": "/", "timeout": "0s"}]}, ("requests", 0, "timeout")),
        ({"defaults": {"interval": "50ms"}}, ("defaults", "interval")),
        ({"defaults": {"engine": "turbo"}}, ("defaults", "engine")),
        ({"defaults": {"timeout": 0}}, ("defaults", "timeout")),
        ({"defaults": []}, ("defaults",)),
        ({"name": 5}, ("name",)),
        ({"description": {1: "numbers as keys"}}, ("description", "1")),
        ({"variables": {"when": datetime.date(2024, 1, 1)}}, ("variables", "when")),
        ({"data": {"big": 2**70}}, ("data", "big")),
    ],
)
def test_scenario_mistakes(change: dict[str, Any], path: tuple[Any, ...]) -> None:
    data = base()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict(data)
    assert caught.value.path == path
    if key == "requests" and value is not None and len(path) > 1:
        assert path[1] == 0  # blamed on the request, not the list


@pytest.mark.parametrize("data", [None, [], "target: x", 5])
def test_not_a_mapping(data: Any) -> None:
    e = error_of(data)
    assert e.path == () and e.where() == "(top level)"


@pytest.mark.parametrize("scale", [0, -1, math.nan, math.inf])
def test_bad_scale(scale: float) -> None:
    assert error_of(base(), scale=scale).path == ("scale",)


def test_valid_data_is_not_modified() -> None:
    data = base()
    before = copy.deepcopy(data)
    Scenario.from_dict(data)
    assert data == before


# -- scenario files: the line to fix ------------------------------------------

FILE = """\
name: demo
target: http://127.0.0.1:8080
defaults:
  timeout: 5s
requests:
  - name: home
    path: /
  - name: item
    path: /item/1
phases:
  - name: warm
    executor: constant-rate
    rate: 10
    duration: 5s
  - name: users
    executor: ramping-users
    think: 1s
    stages:
      - duration: 10s
        target: 20
      - duration: 10s
        target: 0
"""

LINES = FILE.splitlines()


def line_of(text: str) -> int:
    """1-based line of the first line containing `text` in FILE."""
    return next(i for i, line in enumerate(LINES, 1) if text in line)


def file_error(old: str, new: str) -> str:
    assert old in FILE
    with pytest.raises(ScenarioFileError) as caught:
        parse_scenario_text(FILE.replace(old, new, 1), "s.yaml")
    return str(caught.value)


def test_the_file_parses() -> None:
    s = parse_scenario_text(FILE, "s.yaml")
    assert [p.name for p in s.phases] == ["warm", "users"]
    assert s.phases[1].start == 5.0


@pytest.mark.parametrize(
    ("old", "new", "line_text", "words"),
    [
        ("    rate: 10", "    rate: fast", "rate: 10", "phases[0].rate: expected a number"),
        ("    rate: 10", "    raet: 10", "rate: 10", "did you mean 'rate'"),
        ("    duration: 5s", "    duration: -5", "duration: 5s", "negative"),
        ("executor: ramping-users", "executor: ramping-usrs", "ramping-users", "not one of"),
        ("target: 20", "target: 2.5", "target: 20", "phases[1].stages[0].target"),
        ("      - duration: 10s\n        target: 0", "      - duration: 0s\n        target: 0",
         "target: 0", "phases[1].stages[1].duration"),
        ("    think: 1s", "    think: uniform:3s:1s", "think: 1s", "low ≤ high"),
        ("target: http://127.0.0.1:8080", "target: ftp://x", "target: http", "URL"),
        ("  timeout: 5s", "  timeout: 0s", "timeout: 5s", "defaults.timeout"),
        ("  - name: item", "  - name: home", "name: item", "requests[1].name: request name"),
        ("  - name: users", "  - name: warm", "name: users", "phases[1].name"),
    ],
)  # fmt: skip
def test_file_errors_name_the_line(old: str, new: str, line_text: str, words: str) -> None:
    message = file_error(old, new)
    line = line_of(line_text)
    if "stages[1]" in words:
        line = LINES.index("      - duration: 10s", line_of("target: 20")) + 1
    assert message.startswith(f"s.yaml:{line}: "), message
    assert words in message


def test_unknown_request_in_a_phase_names_its_line() -> None:
    text = FILE.replace("    duration: 5s\n", "    duration: 5s\n    requests: [home, nope]\n", 1)
    with pytest.raises(ScenarioFileError) as caught:
        parse_scenario_text(text, "s.yaml")
    message = str(caught.value)
    assert message.startswith(f"s.yaml:{line_of('duration: 5s') + 1}: ")
    assert "no request named 'nope'" in message


def test_missing_key_names_the_enclosing_line() -> None:
    message = file_error("    rate: 10\n", "")
    assert message.startswith(f"s.yaml:{line_of('- name: warm')}: "), message
    assert "missing required key 'rate'" in message


def test_yaml_errors_name_the_line() -> None:
    message = file_error("    rate: 10", "    rate: [10")
    assert message.startswith("s.yaml:")
    assert "not valid YAML" in message


def test_yaml_dates_are_refused_with_their_line() -> None:
    text = FILE.replace("name: demo\n", "name: demo\ndescription: 2024-01-01\n")
    with pytest.raises(ScenarioFileError) as caught:
        parse_scenario_text(text, "s.yaml")
    assert str(caught.value).startswith("s.yaml:2: description: ")
    assert "quote it" in str(caught.value)


def test_load_scenario_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(FILE)
    assert load_scenario(path, scale=0.5).scale == 0.5
    with pytest.raises(ScenarioFileError, match="no such file"):
        load_scenario(tmp_path / "missing.yaml")
