"""Python flows: `async def journey(user)` for what YAML cannot express.

The flow's source comes only from the plan (`Plan.files["flow/REF"]`), which
the authenticated coordinator sent; an agent never imports a flow from its
own disk. It is compiled as a module of its own and runs in the agent's event
loop, once per iteration of each user:

    async def journey(user):
        r = await user.post("/api/login", json={"username": user.row["username"], ...},
                            name="login")
        user.check(r, r.status == 200)
        user.vars["token"] = r.json()["token"]
        await user.think()

Requests are recorded like any other (per phase and `name`; the name defaults
to the path without its query: pass `name=` for paths that carry ids). At
most MAX_NAMES names per phase are kept; further ones are recorded as
"<other>". An exception that escapes the flow ends that iteration and is
counted as outcome "error" of the series named `<flow>:ExceptionType`; the user
goes on with its next iteration and the agent never stops for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json as jsonlib
import logging
import random
import sys
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from loadctl.agent.http import Endpoint, HttpClient, HttpRequest, Reply
from loadctl.agent.journey import ReplyView, Step, UserState, render
from loadctl.protocol.journey import flow_key, parse_flow_ref, parse_template

if TYPE_CHECKING:
    from loadctl.agent.runner import Runner
    from loadctl.protocol.scenario import Phase

log = logging.getLogger("loadctl.agent")

MAX_NAMES = 100
OTHER = "<other>"
FLOW_SERIES = "<flow>"

FlowFunction = Callable[["FlowUser"], Awaitable[Any]]


class FlowError(Exception):
    """A flow that cannot be loaded from the plan."""


def load_flow(files: Mapping[str, bytes], ref_text: str) -> FlowFunction:
    """Compile the shipped module and return its flow function."""
    ref = parse_flow_ref(ref_text)
    code = files.get(flow_key(ref_text))
    if code is None:
        raise FlowError(f"the plan carries no code for flow {ref_text!r}")
    digest = hashlib.sha256(code).hexdigest()
    name = f"loadctl_flow_{digest[:12]}"
    module = types.ModuleType(name)
    module.__file__ = ref.target if ref.is_file else f"<flow {ref.target}>"
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        exec(compile(code, module.__file__, "exec"), module.__dict__)
    except Exception as error:
        raise FlowError(
            f"flow {ref_text}: loading it raised {type(error).__name__}: {error}"
        ) from error
    function = module.__dict__.get(ref.function)
    if not inspect.iscoroutinefunction(function):
        raise FlowError(f"flow {ref_text}: {ref.function} is not an `async def` function")
    log.info("flow %s loaded (sha256 %s)", ref_text, digest)
    return function


class Response:
    """What a flow's request got back. `status` is 0 when no reply came (timeout,
    connection error: see `outcome`)."""

    def __init__(self, name: str, view: ReplyView) -> None:
        self.name = name
        self._view = view

    @property
    def status(self) -> int:
        return self._view.status

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def elapsed(self) -> float:
        """Seconds from the send to the whole reply."""
        return self._view.latency

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self._view.reply.headers) if self._view.reply else []

    def header(self, name: str) -> str | None:
        return self._view.header(name)

    def cookie(self, name: str) -> str | None:
        return self._view.cookie(name)

    @property
    def body(self) -> bytes:
        return self._view.reply.body if self._view.reply else b""

    @property
    def text(self) -> str:
        return self._view.text

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError if it is not JSON)."""
        return jsonlib.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.name} {self.status or 'no reply'}>"


class FlowUser:
    """The `user` a flow gets: requests, variables, think time, the feeder row."""

    def __init__(
        self,
        runner: Runner,
        phase: Phase,
        client: HttpClient,
        state: UserState,
        names: set[str],
        steps: Mapping[str, Step],
        endpoint: Endpoint,
        jar: Callable[[], Iterable[Any] | None],
    ) -> None:
        self._runner = runner
        self._phase = phase
        self._client = client
        self._state = state
        self._names = names
        self._steps = steps
        self._jar = jar
        self._endpoint = endpoint

    # -- what the flow reads ---------------------------------------------------------------
    @property
    def id(self) -> int:
        """The user's number in its phase (unique across agents)."""
        return self._state.user_id

    @property
    def iteration(self) -> int:
        return self._state.iteration

    @property
    def vars(self) -> dict[str, Any]:
        """The user's variables: they last across iterations, and `${name}` in the
        scenario's requests (sent with `user.step`) reads them."""
        return self._state.vars

    @property
    def row(self) -> Any:
        """The feeder row of this user or iteration (None without a data source)."""
        return self._state.row

    @property
    def random(self) -> random.Random:
        return self._state.rng

    def render(self, text: str) -> str:
        """`${...}` templating, as in the scenario."""
        return render(parse_template(text), self._state)

    # -- requests --------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        timeout: float | None = None,
        follow_redirects: bool = False,
    ) -> Response:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        hdrs = [(str(k), str(v)) for k, v in (headers or {}).items()]
        body = b""
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            if not any(k.lower() == "content-type" for k, _ in hdrs):
                hdrs.append(("Content-Type", "application/json"))
        elif data is not None:
            body = data.encode() if isinstance(data, str) else bytes(data)
        full = path + (("&" if "?" in path else "?") + urlencode(params) if params else "")
        request = HttpRequest(
            self._endpoint, method.upper(), full, tuple(hdrs), body, True, follow_redirects
        )
        series = self._series_name(name or path.split("?", 1)[0])
        reply, latency = await self._send(series, request, timeout)
        return Response(series, ReplyView(reply, latency))

    async def get(self, path: str, **options: Any) -> Response:
        return await self.request("GET", path, **options)

    async def post(self, path: str, **options: Any) -> Response:
        return await self.request("POST", path, **options)

    async def put(self, path: str, **options: Any) -> Response:
        return await self.request("PUT", path, **options)

    async def patch(self, path: str, **options: Any) -> Response:
        return await self.request("PATCH", path, **options)

    async def delete(self, path: str, **options: Any) -> Response:
        return await self.request("DELETE", path, **options)

    async def step(self, name: str) -> Response:
        """Send the scenario's request `name` as a YAML journey would: templated from
        `user.vars` and the row, with its extractions and checks."""
        step = self._steps.get(name)
        if step is None:
            raise KeyError(f"the scenario has no request named {name!r}")
        request = step.build(self._state)
        if not request.want_body:
            from dataclasses import replace

            request = replace(request, want_body=True)
        reply, latency = await self._send(step.name, request, step.spec.timeout)
        view = ReplyView(reply, latency)
        if step.evaluates:
            verdict = step.evaluate(view, self._state, self._jar())
            buffer = self._runner.recorder.series(self._phase.name, step.name)
            buffer.checks_passed += verdict.passed
            buffer.checks_failed += verdict.failed
        return Response(step.name, view)

    def check(self, response: Response | str, ok: bool) -> bool:
        """Count a check as passed or failed, on the response's request name (or a name)."""
        name = response.name if isinstance(response, Response) else self._series_name(response)
        buffer = self._runner.recorder.series(self._phase.name, name)
        if ok:
            buffer.checks_passed += 1
        else:
            buffer.checks_failed += 1
        return bool(ok)

    async def think(self, seconds: float | None = None) -> None:
        """Pause for `seconds`, or for the phase's think time."""
        from loadctl.agent.users import think_seconds

        pause = think_seconds(self._phase.think, self._state.rng) if seconds is None else seconds
        if pause > 0:
            await asyncio.sleep(pause)

    # -- internals -------------------------------------------------------------------------
    def _series_name(self, name: str) -> str:
        if name in self._names:
            return name
        if len(self._names) >= MAX_NAMES:
            return OTHER
        self._names.add(name)
        return name

    async def _send(
        self, name: str, request: HttpRequest, timeout: float | None
    ) -> tuple[Reply | None, float]:
        runner = self._runner
        runner.recorder.arrival(self._phase.name, name, runner.current_interval())
        start = time.perf_counter()
        # shielded: stopping a user lets its request finish (or be recorded)
        reply = await asyncio.shield(
            runner.sender.spawn(self._client, self._phase.name, name, request, start, timeout)
        )
        return reply, time.perf_counter() - start


def exception_series(error: BaseException) -> str:
    """The series an exception escaping a flow is counted under."""
    return f"{FLOW_SERIES}:{type(error).__name__}"
