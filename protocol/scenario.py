"""The scenario model both sides read: what to send, to whom, and when.

Loading YAML (with line numbers for errors) is the CLI's job; this module
turns plain data into typed, validated objects. The coordinator ships the
*source* data and the scale factor in the plan, and each agent runs the very
same parser, so both sides agree on every derived number (phase starts, rate
curves, user counts) without a second, drifting wire format for phases.

Phases run in list order; a phase with an explicit `start` runs beside the
others at that offset from the run start (k6's parallel scenarios).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loadctl.protocol.fields import Fields, ScenarioError, parse_duration
from loadctl.protocol.schedule import RateCurve, RateStage, UserCurve, UserStage

OPEN_EXECUTORS = ("constant-rate", "ramping-rate", "burst")
CLOSED_EXECUTORS = ("constant-users", "ramping-users")
EXECUTORS = OPEN_EXECUTORS + CLOSED_EXECUTORS
ENGINES = ("auto", "fast", "aiohttp")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclass(frozen=True, slots=True)
class ThinkTime:
    kind: str = "constant"  # constant | uniform | exponential
    low: float = 0.0  # constant value, uniform low, or exponential mean
    high: float = 0.0

    @classmethod
    def parse(cls, value: Any, path: tuple[str | int, ...]) -> ThinkTime:
        """`500ms`, `uniform:1s:3s`, `exp:2s` (exponential around a mean)."""
        if isinstance(value, str) and ":" in value:
            kind, _, rest = value.partition(":")
            parts = rest.split(":")
            if kind == "uniform" and len(parts) == 2:
                low, high = (parse_duration(p, path) for p in parts)
                if high < low:
                    raise ScenarioError(path, "uniform think time needs low ≤ high")
                return cls("uniform", low, high)
            if kind in ("exp", "exponential") and len(parts) == 1:
                return cls("exponential", parse_duration(parts[0], path))
            raise ScenarioError(path, f"think time {value!r}: use 500ms, uniform:1s:3s or exp:2s")
        return cls("constant", parse_duration(value, path))

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2 if self.kind == "uniform" else self.low


@dataclass(frozen=True, slots=True)
class RequestSpec:
    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    weight: int = 1
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    executor: str
    start: float  # seconds from the run start
    duration: float
    rate: RateCurve | None = None  # open model
    users: UserCurve | None = None  # closed model
    think: ThinkTime = ThinkTime()
    grace: float = 30.0
    requests: tuple[str, ...] = ()  # the request names this phase uses, in order
    flow: str = "mix"  # open model: always a weighted mix; users: "sequence" or "mix"
    connections: str = "shared"  # users: "shared" pool or one connection "per-user"
    max_in_flight: int | None = None
    disturbance: bool = False  # bursts and fault windows: recovery is measured after

    @property
    def is_open(self) -> bool:
        return self.rate is not None

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class Defaults:
    timeout: float = 10.0
    max_in_flight: int = 1000
    interval: float = 1.0
    engine: str = "auto"
    connections: int = 256


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str
    defaults: Defaults
    requests: tuple[RequestSpec, ...]
    phases: tuple[Phase, ...]
    thresholds: tuple[Any, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict, repr=False)
    scale: float = 1.0

    @property
    def duration(self) -> float:
        return max((p.end for p in self.phases), default=0.0)

    def request(self, name: str) -> RequestSpec:
        for r in self.requests:
            if r.name == name:
                return r
        raise KeyError(name)

    def wire(self) -> dict[str, Any]:
        """What a Plan carries: the source and the scale; agents re-parse it."""
        return {"source": dict(self.source), "scale": self.scale}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Scenario:
        scale = data.get("scale", 1.0)
        if not isinstance(scale, int | float) or isinstance(scale, bool):
            raise ScenarioError(("scale",), "expected a number")
        return cls.from_dict(data.get("source"), scale=float(scale))

    @classmethod
    def from_dict(cls, data: Any, scale: float = 1.0) -> Scenario:
        if scale <= 0:
            raise ScenarioError(("scale",), "--scale must be greater than 0")
        top = Fields(data, (), "scenario")
        target = top.text("target")
        if not target.startswith(("http://", "https://")):
            raise ScenarioError(
                ("target",), f"target must be an http:// or https:// URL: {target!r}"
            )
        defaults = _defaults(top)
        requests = _requests(top)
        names = [r.name for r in requests]
        phases = parse_phases(top.items("phases", non_empty=True), ("phases",), names, scale)
        thresholds = tuple(top.items("thresholds", []))
        name = top.text("name", "scenario")
        top.done(allowed_extra=("chaos", "data", "variables", "description"))
        return cls(name, target.rstrip("/"), defaults, requests, phases, thresholds, data, scale)

    def with_phases(self, phases: tuple[Phase, ...]) -> Scenario:
        return Scenario(
            self.name,
            self.target,
            self.defaults,
            self.requests,
            phases,
            self.thresholds,
            self.source,
            self.scale,
        )


def _defaults(top: Fields) -> Defaults:
    if not top.has("defaults"):
        return Defaults()
    f = Fields(top.raw("defaults"), top.at("defaults"))
    base = Defaults()
    d = Defaults(
        timeout=f.duration("timeout", base.timeout, positive=True),
        max_in_flight=f.number("max_in_flight", base.max_in_flight, minimum=1, integer=True),
        interval=f.duration("interval", base.interval, positive=True),
        engine=f.text("engine", base.engine, choices=ENGINES),
        connections=f.number("connections", base.connections, minimum=1, integer=True),
    )
    if d.interval < 0.1:
        raise ScenarioError(f.at("interval"), "interval must be at least 100ms")
    f.done()
    return d


def _requests(top: Fields) -> tuple[RequestSpec, ...]:
    out: list[RequestSpec] = []
    for i, item in enumerate(top.items("requests", non_empty=True)):
        f = Fields(item, (*top.at("requests"), i), "request")
        path = f.text("path")
        if not path.startswith("/"):
            raise ScenarioError(f.at("path"), f"path must start with '/': {path!r}")
        body_value = f.raw("body", None)
        headers = f.string_map("headers")
        if body_value is None:
            body = b""
        elif isinstance(body_value, str):
            body = body_value.encode()
        elif isinstance(body_value, dict | list):
            body = json.dumps(body_value, separators=(",", ":")).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        else:
            raise ScenarioError(f.at("body"), "body must be text, or a mapping/list sent as JSON")
        spec = RequestSpec(
            name=f.text("name", path),
            method=f.text("method", "GET", choices=METHODS),
            path=path,
            headers=tuple(headers.items()),
            body=body,
            weight=f.number("weight", 1, minimum=0, integer=True),
            timeout=f.duration("timeout", None, positive=True),
        )
        if any(r.name == spec.name for r in out):
            raise ScenarioError(f.at("name"), f"request name '{spec.name}' is used twice")
        f.done(allowed_extra=("extract", "check", "follow_redirects"))
        out.append(spec)
    if sum(r.weight for r in out) == 0:
        raise ScenarioError(("requests",), "at least one request needs a weight above 0")
    return tuple(out)


def parse_phases(
    items: list[Any], path: tuple[str | int, ...], request_names: list[str], scale: float = 1.0
) -> tuple[Phase, ...]:
    """Phases in order; those without `start` follow the previous sequential one."""
    phases: list[Phase] = []
    cursor = 0.0
    for i, item in enumerate(items):
        phase = _phase(Fields(item, (*path, i), "phase"), i, cursor, request_names, scale)
        if any(p.name == phase.name for p in phases):
            raise ScenarioError((*path, i, "name"), f"phase name '{phase.name}' is used twice")
        phases.append(phase)
        if not (isinstance(item, Mapping) and "start" in item):
            cursor = phase.end
    return tuple(phases)


def _phase(f: Fields, index: int, cursor: float, request_names: list[str], scale: float) -> Phase:
    executor = f.text("executor", choices=EXECUTORS)
    name = f.text("name", f"{executor}-{index + 1}")
    start = f.duration("start", cursor)
    rate: RateCurve | None = None
    users: UserCurve | None = None
    think = ThinkTime()
    grace = f.duration("grace", 30.0)
    if executor in ("constant-rate", "burst"):
        r = f.number("rate", minimum=0, above=True) * scale
        rate = RateCurve.constant(r, f.duration("duration", positive=True))
    elif executor == "ramping-rate":
        r0 = f.number("start_rate", 0.0) * scale
        stages = []
        for duration, target in _stages(f, "target"):
            stages.append(RateStage(duration, r0, target * scale))
            r0 = target * scale
        rate = RateCurve(stages)
    else:
        think = ThinkTime.parse(f.raw("think", 0), f.at("think"))
        if executor == "constant-users":
            n = _users(f.number("users", minimum=1, integer=True), scale)
            users = UserCurve([UserStage(f.duration("duration", positive=True), n, n)])
        else:
            u0 = _users(f.number("start_users", 0, integer=True), scale)
            ustages = []
            for duration, target in _stages(f, "target"):
                u1 = _users(int(target), scale)
                ustages.append(UserStage(duration, u0, u1))
                u0 = u1
            users = UserCurve(ustages)
    duration = rate.duration if rate is not None else users.duration if users else 0.0
    if duration <= 0:
        raise ScenarioError(f.at("duration"), "the phase must last longer than zero")
    names = tuple(f.items("requests", request_names, non_empty=True))
    for j, n in enumerate(names):
        if n not in request_names:
            raise ScenarioError(
                (*f.at("requests"), j),
                f"no request named '{n}' (known: {', '.join(request_names)})",
            )
    flow = f.text("flow", "mix" if rate is not None else "sequence", choices=("mix", "sequence"))
    if rate is not None and flow != "mix":
        raise ScenarioError(
            f.at("flow"),
            "an arrival-rate phase sends a weighted mix; use a users executor for a sequence",
        )
    phase = Phase(
        name=name,
        executor=executor,
        start=start,
        duration=duration,
        rate=rate,
        users=users,
        think=think,
        grace=grace,
        requests=names,
        flow=flow,
        connections=f.text("connections", "shared", choices=("shared", "per-user")),
        max_in_flight=f.number("max_in_flight", None, minimum=1, integer=True),
        disturbance=f.flag("disturbance", executor == "burst"),
    )
    f.done()
    return phase


def _users(n: int, scale: float) -> int:
    return max(1, round(n * scale)) if n else 0


def _stages(f: Fields, target_key: str) -> list[tuple[float, float]]:
    out = []
    for j, item in enumerate(f.items("stages", non_empty=True)):
        s = Fields(item, (*f.at("stages"), j), "stage")
        out.append((s.duration("duration", positive=True), s.number(target_key, minimum=0)))
        s.done()
    return out
