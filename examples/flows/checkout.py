"""A Python flow: the checkout journey of examples/journey.yaml, with logic YAML lacks.

`loadctl run examples/journey.yaml` ships this file to every agent inside the
authenticated plan (agents never read it from their own disk); the summary
shows its sha256. The phase names it as `flow: flows/checkout.py:journey`.

`journey(user)` runs once per iteration of each virtual user:

- `user.get/post/put/patch/delete(path, name=..., json=..., headers=..., params=...)`
  send a request, recorded under `name` like any scenario request, and return a
  Response (`status`, `ok`, `json()`, `text`, `header(name)`, `elapsed`);
  `status` is 0 when no reply came.
- `user.check(response, condition)` counts a check (passed or failed) on the
  response's request name; checks feed `checks > 99%` thresholds.
- `user.vars` is the user's own dict, kept across iterations; `user.row` is
  its feeder row (here a CSV row: a dict of text); `user.id`, `user.iteration`,
  `user.random` (a random.Random per user); `await user.think()` pauses for the
  phase's think time (or `user.think(0.5)`).
- `user.step("login")` sends the scenario's request named login, with its
  templates, extractions and checks.

An exception that escapes `journey` ends that iteration: it is counted as an
error of the series `<flow>:ExceptionType`, and the user carries on.
"""

from __future__ import annotations

from typing import Any


async def journey(user: Any) -> None:
    # Log in once per user; keep the token for the next iterations.
    if "token" not in user.vars:
        login = await user.post(
            "/api/login",
            name="login",
            json={"username": user.row["username"], "password": user.row["password"]},
        )
        if not user.check(login, login.status == 200):
            return  # no token: try again next iteration
        user.vars["token"] = login.json()["token"]
        await user.think()

    auth = {"Authorization": f"Bearer {user.vars['token']}"}
    orders = await user.get("/api/orders", name="list", headers=auth)
    user.check(orders, orders.status == 200)
    await user.think()

    # Logic YAML cannot say: order a second item only if this user has ordered little.
    count = orders.json().get("count", 0) if orders.ok else 0
    items = [user.row["item"]] if count >= 3 else [user.row["item"], "gift-wrap"]
    for item in items:
        placed = await user.post("/api/orders", name="order", headers=auth, json={"item": item})
        user.check(placed, placed.status == 201)
    await user.think()
