"""Journeys without a network: templates, JSON paths, extraction, checks, scenario
validation, data sharding and feeders, flow loading."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from loadctl.agent.feeders import NO_ROW, Feeder
from loadctl.agent.flows import FlowError, load_flow
from loadctl.agent.http import Endpoint, HttpRequest, Reply
from loadctl.agent.journey import (
    ReplyView,
    Step,
    UserState,
    fixed_names,
    initial_vars,
    render,
    render_json,
)
from loadctl.agent.requests import prepare, steps
from loadctl.coordinator.feeders import load_payload
from loadctl.protocol.feeders import DataSource, parse_rows, shard
from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.json_path import json_lookup, parse_json_path
from loadctl.protocol.messages import Share
from loadctl.protocol.scenario import Scenario
from loadctl.protocol.templates import Ref, parse_template
from loadctl.scenario_file import ScenarioFileError, load_scenario

TARGET = "http://127.0.0.1:9"


def scenario(*requests: dict[str, Any], **extra: Any) -> Scenario:
    phases = extra.pop(
        "phases",
        [{"executor": "constant-users", "users": 2, "duration": "1s", "data": "users"}],
    )
    data = extra.pop("data", {"users": {"file": "users.csv"}})
    return Scenario.from_dict(
        {"target": TARGET, "requests": list(requests), "phases": phases, "data": data, **extra}
    )


def error_of(*requests: dict[str, Any], **extra: Any) -> str:
    with pytest.raises(ScenarioError) as caught:
        scenario(*requests, **extra)
    return str(caught.value)


def reply(
    status: int = 200, body: Any = b"", headers: list[tuple[str, str]] | None = None
) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Reply(status, len(raw), headers or [], raw)


def step_of(spec: dict[str, Any], **extra: Any) -> Step:
    return steps(scenario(spec, **extra))[spec.get("name", spec["path"])]


# -- templates ----------------------------------------------------------------------------


def test_template_parts_escape_and_errors() -> None:
    assert parse_template("/a/${x}/b${row.id}") == ("/a/", Ref("x"), "/b", Ref("row", "id"))
    assert parse_template("cost: $${x}") == ("cost: ${x}",)
    assert parse_template("no refs") == ("no refs",)
    for bad in ("${x", "${1x}", "${a.b}", "${row.}"):
        with pytest.raises(ScenarioError):
            parse_template(bad)


def test_render_builtins_vars_rows_and_encoding() -> None:
    state = UserState(7, iteration=3, vars={"q": "a b&c/d"}, row={"name": "Zoë"})
    tpl = parse_template("/s?q=${q}&u=${user_id}&i=${iteration}&n=${row.name}&x=${unset}")
    assert render(tpl, state, encode=True) == "/s?q=a%20b%26c%2Fd&u=7&i=3&n=Zo%C3%AB&x="
    assert render(parse_template("${q}"), state) == "a b&c/d"
    now = parse_template("${now} ${now_ms} ${now_iso} ${uuid} ${random}")
    parts = render(now, state).split(" ")
    assert parts[0].isdigit() and parts[1].isdigit() and parts[2].endswith("Z")
    assert len(parts[3]) == 36 and parts[4].isdigit()


def test_json_body_keeps_types_and_stays_valid_json() -> None:
    state = UserState(1, vars={"n": 5, "quote": 'say "hi"'}, row={"item": "sku-1"})
    spec = {
        "name": "order",
        "method": "POST",
        "path": "/o",
        "body": {"n": "${n}", "text": "${quote}!", "item": "${row.item}", "list": ["${user_id}"]},
    }
    built = step_of(spec, variables={"n": 5, "quote": "x"}).build(state)
    assert json.loads(built.body) == {"n": 5, "text": 'say "hi"!', "item": "sku-1", "list": [1]}
    assert ("Content-Type", "application/json") in built.headers
    assert render_json([parse_template("${n}")], state) == [5]


def test_static_requests_are_built_once_and_templated_ones_per_user() -> None:
    sc = scenario(
        {"name": "plain", "path": "/health"},
        {"name": "mine", "path": "/u/${user_id}", "headers": {"X-Row": "${row.id}"}},
    )
    table = steps(sc)
    assert table["plain"].build(UserState(1)) is table["plain"].static
    built = table["mine"].build(UserState(4, row={"id": "r9"}))
    assert built.path == "/u/4" and ("X-Row", "r9") in built.headers
    requests = prepare(sc)
    assert "plain" in requests and "mine" not in requests  # rendered at each lookup


def test_a_step_templated_only_with_the_users_own_names_is_rendered_once_per_user() -> None:
    """`fixed_names`: the user's id and the scenario's variables, less any a step
    extracts (its value changes when the extraction runs), never the row's fields or
    the built-ins that change per request."""
    sc = scenario(
        {"name": "mine", "path": "/u/${user_id}/${region}"},
        {"name": "login", "path": "/login", "extract": [{"var": "token", "json": "$.t"}]},
        {"name": "authed", "path": "/me", "headers": {"Authorization": "Bearer ${token}"}},
        {"name": "each", "path": "/i/${iteration}"},
        {"name": "row", "path": "/r/${row.id}"},
        {"name": "plain", "path": "/health"},
        variables={"region": "eu", "token": "none"},
    )
    fixed = fixed_names(sc, initial_vars(sc))
    assert fixed == {"user_id", "region"}
    table = steps(sc)
    assert [n for n, step in table.items() if step.per_user(fixed)] == ["mine"]
    assert table["mine"].build(UserState(4, vars={"region": "eu"})).path == "/u/4/eu"


def test_the_lane_takes_a_step_whose_checks_are_all_status_or_latency_checks() -> None:
    """`Step.lane_checks`: the statuses every status check accepts, a byte each, the
    checks each such reply passes, and the least latency_under; nothing for a step
    that does more."""
    both = step_of(
        {"name": "a", "path": "/a", "check": [{"status": [200, "3xx"]}, {"status": "2xx"}]}
    )
    table = both.lane_checks
    assert table is not None and table[1:] == (2, math.inf) and len(table[0]) == 600
    assert [s for s in range(600) if table[0][s]] == [200]
    one = step_of({"name": "b", "path": "/b", "check": [{"status": [201, "4xx"]}]}).lane_checks
    assert one is not None and [s for s in range(600) if one[0][s]] == [201, *range(400, 500)]
    timed = [{"latency_under": "200ms"}, {"status": 200}, {"latency_under": "50ms"}]
    fast = step_of({"name": "f", "path": "/f", "check": timed}).lane_checks
    assert fast is not None and fast[1:] == (3, 0.05)
    assert [s for s in range(600) if fast[0][s]] == [200]
    any_status = step_of({"name": "t", "path": "/t", "check": timed[:1]}).lane_checks
    assert any_status is not None and any_status[0] == bytes([1] * 600)
    for spec in (
        {"name": "c", "path": "/c"},  # nothing to check
        {"name": "c", "path": "/c", "check": [{"status": 200}, {"body_contains": "ok"}]},
        {"name": "c", "path": "/c", "check": [{"status": 200}], "once": True},
        {"name": "c", "path": "/c", "check": [{"status": 200}], "abort_on_fail": True},
        {
            "name": "c",
            "path": "/c",
            "check": [{"status": 200}],
            "extract": [{"var": "v", "json": "$.v"}],
        },
    ):
        assert step_of(spec).lane_checks is None, spec


# -- JSON paths, extraction, checks ---------------------------------------------------------


def test_json_path_subset() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": 2}]}, "odd key": True, "list": [1, 2, 3]}
    assert json_lookup(doc, parse_json_path("$.a.b[1].c")) == 2
    assert json_lookup(doc, parse_json_path("$['odd key']")) is True
    assert json_lookup(doc, parse_json_path("$.list[-1]")) == 3
    assert json_lookup(doc, parse_json_path("$")) == doc
    missing = json_lookup(doc, parse_json_path("$.a.x"))
    assert missing is json_lookup(doc, parse_json_path("$.list[9]"))  # MISSING
    for bad in ("a.b", "$.a[", "$..a", "$.a[x]"):
        with pytest.raises(ScenarioError):
            parse_json_path(bad)


def test_extractions_json_regex_header_cookie() -> None:
    spec = {
        "name": "x",
        "path": "/x",
        "extract": [
            {"var": "token", "json": "$.token"},
            {"var": "id", "regex": "id=(\\d+)"},
            {"var": "rid", "header": "x-request-id"},
            {"var": "sess", "cookie": "session"},
            {"var": "none", "json": "$.absent", "default": "fallback"},
        ],
    }
    step = step_of(spec)
    assert step.static.want_body
    body = b'{"token": "t-1", "note": "id=42"}'
    headers = [("X-Request-Id", "abc"), ("Set-Cookie", "session=s3cr3t; Path=/; HttpOnly")]
    state = UserState(0)
    verdict = step.evaluate(ReplyView(reply(200, body, headers), 0.01), state)
    assert verdict.passed == 5 and verdict.failed == 0
    assert state.vars == {
        "token": "t-1",
        "id": "42",
        "rid": "abc",
        "sess": "s3cr3t",
        "none": "fallback",
    }
    # nothing found: each extraction without a default is a failed check
    verdict = step.evaluate(ReplyView(reply(200, b"<html>"), 0.01), UserState(0))
    assert verdict.failed == 4 and verdict.passed == 1
    assert "extract token" in verdict.failures


def test_checks_pass_and_fail() -> None:
    spec = {
        "name": "x",
        "path": "/x",
        "check": [
            {"status": [200, "3xx"]},
            {"json": "$.items", "exists": True},
            {"json": "$.gone", "exists": False},
            {"json": "$.status", "equals": "ok"},
            {"json": "$.n", "equals": 5},
            {"json": "$.who", "equals": "${row.name}"},
            {"body_contains": "ok"},
            {"header": "X-Id"},
            {"header": "X-Id", "equals": "7"},
            {"latency_under": "200ms", "name": "fast enough"},
        ],
    }
    step = step_of(spec)
    good = reply(200, {"items": [], "status": "ok", "n": 5.0, "who": "ann"}, [("x-id", "7")])
    state = UserState(0, row={"name": "ann"})
    assert step.evaluate(ReplyView(good, 0.05), state).failed == 0
    bad = reply(404, {"status": "down", "gone": 1, "n": "6", "who": "bob"})
    verdict = step.evaluate(ReplyView(bad, 0.5), state)
    assert verdict.passed == 0 and verdict.failed == 10
    assert "fast enough" in verdict.failures and "status in (200, 3xx)" in verdict.failures
    assert step.failed(ReplyView(bad, 0.5), verdict)
    # no reply at all (timeout, connection refused): every check fails
    assert step.evaluate(ReplyView(None, 5.0), state).failed == 10


# -- scenario validation ------------------------------------------------------------------


def test_unknown_variables_and_misplaced_journeys_are_refused() -> None:
    assert "did you mean ${token}" in error_of(
        {"name": "a", "path": "/a", "extract": [{"var": "token", "json": "$.t"}]},
        {"name": "b", "path": "/b", "headers": {"Authorization": "Bearer ${tokn}"}},
    )
    assert "built-in" in error_of({"path": "/a", "extract": [{"var": "uuid", "json": "$.t"}]})
    rate = [{"executor": "constant-rate", "rate": 10, "duration": "1s"}]
    assert "arrival-rate" in error_of({"path": "/a", "check": [{"status": 200}]}, phases=rate)
    assert "no users" in error_of({"path": "/a/${user_id}"}, phases=rate)
    scenario({"path": "/a/${uuid}?t=${now_ms}"}, phases=rate)  # built-ins without a user: fine
    no_data = [{"executor": "constant-users", "users": 1, "duration": "1s"}]
    assert "no data source" in error_of({"path": "/a/${row.id}"}, phases=no_data)
    wrong = [{"executor": "constant-users", "users": 1, "duration": "1s", "data": "nope"}]
    assert "no data source 'nope'" in error_of({"path": "/a"}, phases=wrong)
    assert "exactly one of" in error_of({"path": "/a", "extract": [{"var": "x"}]})
    assert "unknown key" in error_of({"path": "/a", "check": [{"status": 200, "bogus": 1}]})
    assert "mode" in error_of({"path": "/a"}, data={"users": {"file": "u.csv", "mode": "x"}})
    assert "format" in error_of({"path": "/a"}, data={"users": {"file": "u.txt"}})
    assert "flow" in error_of(
        {"path": "/a"},
        phases=[{"executor": "constant-users", "users": 1, "duration": "1s", "flow": "not a flow"}],
    )


def test_python_flow_phase_needs_no_requests() -> None:
    sc = Scenario.from_dict(
        {
            "target": TARGET,
            "phases": [
                {"executor": "constant-users", "users": 1, "duration": "1s", "flow": "f.py:go"}
            ],
        }
    )
    assert sc.requests == () and sc.phases[0].flow == "f.py:go"
    with pytest.raises(ScenarioError, match="sends no requests"):
        Scenario.from_dict(
            {
                "target": TARGET,
                "phases": [{"executor": "constant-users", "users": 1, "duration": "1s"}],
            }
        )


# -- data: rows, shards, feeders ------------------------------------------------------------


def test_rows_from_csv_and_json_lines() -> None:
    assert parse_rows(b"\xef\xbb\xbfa,b\n1,2\n\n3,4\n", "csv") == [
        {"a": "1", "b": "2"},
        {"a": "3", "b": "4"},
    ]
    assert parse_rows(b'{"a": 1}\n\n[2]\n', "jsonl") == [{"a": 1}, [2]]
    with pytest.raises(ScenarioError, match="line 3"):
        parse_rows(b"a,b\n1,2\n3\n", "csv")
    with pytest.raises(ScenarioError, match="line 2"):
        parse_rows(b"{}\n{nope\n", "jsonl")


def users_phases(*counts: int) -> Scenario:
    phases = [
        {
            "name": f"p{i}",
            "executor": "constant-users",
            "users": n,
            "duration": "1s",
            "data": "users",
        }
        for i, n in enumerate(counts)
    ]
    return scenario({"path": "/a"}, phases=phases)


@pytest.mark.parametrize("weights", [(1,), (1, 1), (1, 1, 1), (2, 1, 0, 3)])
def test_unique_shards_are_disjoint_and_complete(weights: tuple[int, ...]) -> None:
    sc = users_phases(5, 7)
    for mode in ("unique-per-user", "unique-per-iteration"):
        source = DataSource("users", "u.csv", "csv", mode, False, False)
        shards = [shard(source, 20, sc.phases, weights, i) for i in range(len(weights))]
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(20)), (mode, shards)
    shared = DataSource("users", "u.csv", "csv", "sequential", True, False)
    assert shard(shared, 4, sc.phases, (1, 1), 1) == [0, 1, 2, 3]


def test_unique_per_user_rows_follow_the_users() -> None:
    """User u of phase p (owned by the agent the stripe names) has row first_p + u."""
    sc = users_phases(3, 2)
    source = DataSource("users", "u.csv", "csv", "unique-per-user", False, False)
    rows = [{"n": str(i)} for i in range(6)]
    seen = []
    for index in (0, 1):
        mine = shard(source, 6, sc.phases, (1, 1), index)
        feeder = Feeder(source, [(i, rows[i]) for i in mine], sc.phases)
        for phase, users in (("p0", 3), ("p1", 2)):
            for u in range(users):
                if u % 2 == index:  # the stripe of two equal agents alternates
                    row = feeder.for_user(phase, u)
                    assert row is not NO_ROW and feeder.for_user(phase, u) is row
                    seen.append(row["n"])
    assert sorted(seen) == ["0", "1", "2", "3", "4"]


def test_feeder_iteration_modes() -> None:
    rows = [(i, i) for i in range(3)]
    rng = random.Random(1)
    once = Feeder(DataSource("d", "f", "csv", "unique-per-iteration", False, False), rows, ())
    assert [once.next_row(rng) for _ in range(4)] == [0, 1, 2, NO_ROW]
    wrap = Feeder(DataSource("d", "f", "csv", "sequential", True, False), rows, ())
    assert [wrap.next_row(rng) for _ in range(5)] == [0, 1, 2, 0, 1]
    rand = Feeder(DataSource("d", "f", "csv", "random", False, False), rows, ())
    assert {rand.next_row(rng) for _ in range(50)} == {0, 1, 2}


def test_too_few_unique_rows_is_a_scenario_error(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text("username\n" + "\n".join(f"u{i}" for i in range(3)))
    text = {
        "target": TARGET,
        "data": {"users": {"file": "users.csv", "mode": "unique-per-user"}},
        "requests": [{"path": "/a/${row.username}"}],
        "phases": [{"executor": "constant-users", "users": 4, "duration": "1s", "data": "users"}],
    }
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(text))
    with pytest.raises(ScenarioFileError, match="has 3 rows, but unique-per-user needs 4"):
        load_scenario(path)
    text["requests"] = [{"path": "/a/${row.user}"}]
    text["phases"][0]["users"] = 2  # type: ignore[index]
    path.write_text(json.dumps(text))
    with pytest.raises(ScenarioFileError, match="no column 'user'"):
        load_scenario(path)


# -- flows --------------------------------------------------------------------------------


def test_flow_paths_resolve_from_the_scenario_and_ship(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "f.py").write_text("async def go(user):\n    return None\n")
    (tmp_path / "flows" / "sync.py").write_text("def go(user):\n    return None\n")
    doc = {
        "target": TARGET,
        "phases": [
            {"executor": "constant-users", "users": 1, "duration": "1s", "flow": "flows/f.py:go"}
        ],
    }
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(doc))
    sc = load_scenario(path)
    assert sc.phases[0].flow == f"{tmp_path / 'flows' / 'f.py'}:go"
    payload = load_payload(sc)
    files = payload.files_for(sc, Share(0, (1,), 0))
    function = load_flow(files, sc.phases[0].flow)
    assert function.__name__ == "go"
    assert "sha256" in payload.notes()[0]
    doc["phases"][0]["flow"] = "flows/sync.py:go"  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(ScenarioFileError, match="must be `async def go"):
        load_scenario(path)
    with pytest.raises(FlowError, match="no code"):
        load_flow({}, "x.py:go")


def test_endpoint_of_a_step() -> None:
    built = step_of({"path": "/p/${user_id}"}).build(UserState(2))
    assert isinstance(built, HttpRequest) and built.endpoint == Endpoint.parse(TARGET)


def test_the_engine_is_the_fast_one_unless_asked_for() -> None:
    from loadctl.agent.engines import choose_engine

    for requested in (None, "auto", "fast"):
        assert choose_engine(requested) == "fast"  # cookies and redirects included
    assert choose_engine("aiohttp") == "aiohttp"
    with pytest.raises(ValueError, match="unknown HTTP engine"):
        choose_engine("curl")


def test_the_example_journey_loads() -> None:
    example = Path(__file__).parent.parent / "examples" / "journey.yaml"
    sc = load_scenario(example)
    assert [p.data for p in sc.phases] == ["users", "users"]
    assert sc.phases[1].flow.endswith("examples/flows/checkout.py:journey")
    files = load_payload(sc).files_for(sc, Share(0, (1, 1), 0))
    assert len(files) == 2
