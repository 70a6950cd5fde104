"""Journeys end to end: two agents, the demo target's login/orders area, data feeders
and Python flows shipped in the plan."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from cluster import loadctl, run_scenario, write_scenario
from target_process import running_target

pytestmark = pytest.mark.slow

LOGIN: dict[str, Any] = {
    "name": "login",
    "method": "POST",
    "path": "/api/login",
    "body": {"username": "${row.username}", "password": "${row.password}"},
    "extract": [{"var": "token", "json": "$.token"}],
    "check": [{"status": 200}],
}
LIST: dict[str, Any] = {
    "name": "list",
    "path": "/api/orders",
    "headers": {"Authorization": "Bearer ${token}"},
    "check": [{"status": 200}, {"json": "$.username", "equals": "${row.username}"}],
}
ORDER: dict[str, Any] = {
    "name": "order",
    "method": "POST",
    "path": "/api/orders",
    "headers": {"Authorization": "Bearer ${token}"},
    "body": {"item": "${row.item}"},
    "check": [{"status": 201}, {"json": "$.order_id", "exists": True}],
}

FLOW = """
async def journey(user):
    login = await user.post("/api/login", name="login", json={
        "username": user.row["username"], "password": user.row["password"]})
    user.check(login, login.status == 200)
    token = login.json()["token"]
    auth = {"Authorization": "Bearer " + token}
    orders = await user.get("/api/orders", name="list", headers=auth)
    user.check(orders, orders.status == 200)
    await user.think()
    placed = await user.post("/api/orders", name="order", headers=auth,
                             json={"item": user.row["item"]})
    user.check(placed, placed.status == 201)
    await user.think()
"""


def users_csv(directory: Path, rows: int) -> Path:
    path = directory / "users.csv"
    lines = ["username,password,item"]
    lines += [f"user{i:03d},pw-user{i:03d},item-{i:03d}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def journey(
    target: str,
    data: dict[str, Any],
    requests: list[dict[str, Any]],
    users: int,
    duration: str,
    **phase: Any,
) -> dict[str, Any]:
    return {
        "target": target,
        "defaults": {"timeout": "5s"},
        "data": {"users": data},
        "requests": requests,
        "phases": [
            {
                "name": "journey",
                "executor": "constant-users",
                "users": users,
                "duration": duration,
                "think": "20ms",
                "data": "users",
                **phase,
            }
        ],
    }


def checks(stats: dict[str, Any]) -> tuple[int, int]:
    return stats["checks"]["passed"], stats["checks"]["failed"]


def test_login_list_order_journey_carries_valid_tokens(tmp_path: Path) -> None:
    """50 users over 2 agents, each with its own credentials: every order is authorised."""
    data = {"file": str(users_csv(tmp_path, 50)), "mode": "unique-per-user"}
    login = {**LOGIN, "once": True, "abort_on_fail": True}
    with running_target() as target:
        run = run_scenario(journey(target.url, data, [login, LIST, ORDER], 50, "3s"), agents=2)
        counts = target.counts()
    assert run.code == 0, run.stderr
    requests = run.data["requests"]
    assert counts["unauthorized"] == 0
    assert counts["logins"] == {f"user{i:03d}": 1 for i in range(50)}  # once per user
    orders = requests["order"]["requests"]
    assert orders > 50 and sum(counts["order_items"].values()) == orders
    assert counts["statuses"].get("201") == orders
    for name in ("login", "list", "order"):
        passed, failed = checks(requests[name])
        # login: a check and an extraction; list and order: two checks each
        assert failed == 0 and passed == 2 * requests[name]["requests"], name
    assert checks(run.data["totals"]) == (sum(checks(requests[n])[0] for n in requests), 0)
    assert run.data["totals"]["requests"] == counts["total"]


def test_wrong_token_path_gives_401s_counted_as_failed_checks(tmp_path: Path) -> None:
    data = {"file": str(users_csv(tmp_path, 20)), "mode": "unique-per-user"}
    login = {**LOGIN, "extract": [{"var": "token", "json": "$.data.token"}]}  # no such path
    with running_target() as target:
        run = run_scenario(journey(target.url, data, [login, LIST, ORDER], 20, "2s"), agents=2)
        counts = target.counts()
    assert run.code == 0, run.stderr
    requests = run.data["requests"]
    sent = requests["list"]["requests"] + requests["order"]["requests"]
    assert sent > 0 and counts["unauthorized"] == sent
    assert requests["order"]["outcomes"] == {"4xx": requests["order"]["requests"]}
    # login: the status check passes, the extraction fails; list and order fail all checks
    assert checks(requests["login"]) == (requests["login"]["requests"],) * 2
    assert checks(requests["order"]) == (0, 2 * requests["order"]["requests"])
    assert checks(requests["list"]) == (0, 2 * requests["list"]["requests"])
    assert counts["order_items"] == {}


def exactly_once(counts: dict[str, Any], rows: int) -> None:
    assert counts["logins"] == {f"user{i:03d}": 1 for i in range(rows)}
    assert counts["order_items"] == {f"item-{i:03d}": 1 for i in range(rows)}
    assert counts["unauthorized"] == 0


def test_unique_rows_once_each_and_the_python_flow_matches_yaml(tmp_path: Path) -> None:
    """unique-per-iteration without wrap: 60 rows, 10 users on 2 agents; each row is used
    exactly once across both agents, by the YAML journey and by the same journey as a
    Python flow; the users then stop."""
    rows = 60
    data = {"file": str(users_csv(tmp_path, rows)), "mode": "unique-per-iteration"}
    flow = tmp_path / "shop.py"
    flow.write_text(textwrap.dedent(FLOW), encoding="utf-8")
    yaml_journey = journey("", data, [LOGIN, LIST, ORDER], 10, "3s")
    flow_journey = journey("", data, [], 10, "3s", flow=f"{flow}:journey")
    del flow_journey["requests"]
    results = []
    for scenario in (yaml_journey, flow_journey):
        with running_target() as target:
            scenario["target"] = target.url
            run = run_scenario(scenario, agents=2)
            counts = target.counts()
        assert run.code == 0, run.stderr
        exactly_once(counts, rows)
        requests = run.data["requests"]
        assert {n: requests[n]["requests"] for n in ("login", "list", "order")} == {
            "login": rows,
            "list": rows,
            "order": rows,
        }
        assert all(checks(requests[n])[1] == 0 for n in requests)
        agents = [a for a in run.data["agents"] if a["planned"]]
        assert len(agents) == 2 and all(a["requests"] > 0 for a in agents)
        results.append((counts["logins"], counts["order_items"], checks(run.data["totals"])))
    (yaml_logins, yaml_items, yaml_checks), (flow_logins, flow_items, flow_checks) = results
    assert yaml_logins == flow_logins and yaml_items == flow_items
    # YAML counts the token extraction and the username check too: 3 more per iteration
    assert yaml_checks == (6 * rows, 0) and flow_checks == (3 * rows, 0)
    sha = [n for n in run.data["engine_notes"] if "sha256" in n]
    assert sha and str(flow) in sha[0]


def test_an_exception_in_a_flow_is_counted_and_the_run_completes(tmp_path: Path) -> None:
    flow = tmp_path / "broken.py"
    flow.write_text(
        textwrap.dedent(
            """
            async def journey(user):
                await user.get("/health", name="health")
                await user.think()
                if user.iteration % 2:
                    raise ZeroDivisionError("every other iteration")
                if user.iteration == 2:
                    {}["missing"]
            """
        ),
        encoding="utf-8",
    )
    scenario = {
        "target": "",
        "phases": [
            {
                "name": "flaky",
                "executor": "constant-users",
                "users": 4,
                "duration": "2s",
                "think": "50ms",
                "flow": f"{flow}:journey",
            }
        ],
    }
    with running_target() as target:
        scenario["target"] = target.url
        run = run_scenario(scenario, agents=2)
        counts = target.counts()
    assert run.code == 0, run.stderr
    requests = run.data["requests"]
    health = requests["health"]["requests"]
    assert health == counts["total"] and health > 8
    zero = requests["<flow>:ZeroDivisionError"]["outcomes"]["error"]
    key = requests["<flow>:KeyError"]["outcomes"]["error"]
    assert key == 4  # iteration 2 of each user
    assert abs(zero - health / 2) <= 4  # every other iteration of each user
    assert run.data["totals"]["outcomes"]["error"] == zero + key
    assert all(a["complete"] for a in run.data["agents"] if a["planned"])


def test_too_few_unique_rows_stops_before_the_run(tmp_path: Path) -> None:
    data = {"file": str(users_csv(tmp_path, 5)), "mode": "unique-per-user"}
    path = write_scenario(journey("http://127.0.0.1:9", data, [LOGIN], 8, "1s"), tmp_path)
    proc = loadctl("run", str(path), "--agents", "1", "--quiet", timeout=30)
    assert proc.returncode == 2
    assert "has 5 rows, but unique-per-user needs 8" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback
