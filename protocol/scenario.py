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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loadctl.protocol.chaos import FaultWindow, chaos_of
from loadctl.protocol.fields import Fields, ScenarioError, parse_duration
from loadctl.protocol.journey import (
    Check,
    Extract,
    is_python_flow,
    parse_checks,
    parse_extracts,
    parse_flow_ref,
    validate_journeys,
)
from loadctl.protocol.schedule import RateCurve, RateStage, UserCurve, UserStage
from loadctl.protocol.thresholds import fix_on_keys, parse_thresholds

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
    # journeys (see loadctl.protocol.journey and docs/journeys.md)
    extract: tuple[Extract, ...] = ()
    check: tuple[Check, ...] = ()
    follow_redirects: bool = False
    abort_on_fail: bool = False  # a failed check or extraction ends the user's iteration
    once: bool = False  # sent in a user's first iteration only (a login)
    json_body: bool = False  # the body was written as a mapping/list: templated leaf by leaf


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
    data: str | None = None  # users: the data source (feeder) its users take rows from
    cookies: bool = False  # users: each user keeps its own cookie jar (and connection)

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
    # https targets: verify their certificates (False: accept any, for a staging host
    # with a self-signed one), trusting the system's CAs and, with `tls_ca`, those of
    # this PEM file (read by the coordinator and shipped to the agents in the plan)
    tls_verify: bool = True
    tls_ca: str | None = None
    # a client certificate for servers that ask for one (mutual TLS): PEM files, the key
    # in the certificate's file when `tls_key` is None; shipped to the agents like the CA
    tls_cert: str | None = None
    tls_key: str | None = None


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

    @property
    def chaos(self) -> tuple[FaultWindow, ...]:
        """The `chaos:` fault windows (coordinator-driven; agents ignore them)."""
        return chaos_of(self.source, self.duration)

    def notes(self) -> list[str]:
        """What the scenario does that its author may not expect (for the summary)."""
        out = []
        for phase in self.phases:
            weights = [self.request(n).weight for n in phase.requests]
            if phase.flow == "sequence" and len(set(weights)) > 1:
                out.append(
                    f"phase {phase.name}: each user sends its requests in sequence, each once "
                    "per iteration, so their weights do not count; flow: mix picks by weight"
                )
        return out

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
        if not (scale > 0 and math.isfinite(scale)):
            raise ScenarioError(("scale",), "--scale must be greater than 0")
        top = Fields(data, (), "scenario")
        fix_on_keys(data)
        _check_wire_safe(data, ())
        target = top.text("target")
        if not target.startswith(("http://", "https://")) or not _has_host_and_port(target):
            raise ScenarioError(
                ("target",), f"target must be an http:// or https:// URL: {target!r}"
            )
        defaults = _defaults(top)
        requests = _requests(top)
        names = [r.name for r in requests]
        phases = parse_phases(top.items("phases", non_empty=True), ("phases",), names, scale)
        thresholds = parse_thresholds(
            top.items("thresholds", []), ("thresholds",), names, [p.name for p in phases]
        )
        name = top.text("name", "scenario")
        validate_journeys(top.raw("data", None), top.raw("variables", None), requests, phases)
        top.done(allowed_extra=("chaos", "data", "variables", "description"))
        scenario = cls(
            name, target.rstrip("/"), defaults, requests, phases, thresholds, data, scale
        )
        scenario.chaos  # noqa: B018 - validates the fault timeline now, with its path
        return scenario

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


def _check_wire_safe(value: Any, path: tuple[str | int, ...]) -> None:
    """The source travels in the Plan (msgpack, text keys): YAML dates, sets or
    non-text keys would fail to encode or decode there, so refuse them here."""
    if value is None or isinstance(value, bool | float | str | bytes):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ScenarioError(path, f"the number {value} is too large")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_wire_safe(item, (*path, i))
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ScenarioError((*path, str(key)), f"the key {key!r} must be text: quote it")
            _check_wire_safe(item, (*path, key))
        return
    raise ScenarioError(
        path, f"YAML read this as {type(value).__name__} ({value!r}): quote it to keep it text"
    )


def _has_host_and_port(url: str) -> bool:
    """A host, and a port (if any) in 1..65535; what the agent's Endpoint needs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0


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
        **_tls(f),
    )
    if d.interval < 0.1:
        raise ScenarioError(f.at("interval"), "interval must be at least 100ms")
    f.done()
    return d


def _tls(defaults: Fields) -> dict[str, Any]:
    """`defaults.tls`: {verify: true|false, ca, cert, key: PEM files}, as Defaults' fields."""
    if not defaults.has("tls"):
        return {}
    f = Fields(defaults.raw("tls"), defaults.at("tls"))
    verify = f.flag("verify", True)
    files = {}
    for key, what in (
        ("ca", "a PEM file of CA certificates"),
        ("cert", "a PEM file of the client's certificate (and its key)"),
        ("key", "a PEM file of the client certificate's private key"),
    ):
        files[key] = f.text(key, None)
        if files[key] is not None and not files[key].strip():
            raise ScenarioError(f.at(key), f"expected the path of {what}")
    f.done()
    if files["ca"] is not None and not verify:
        raise ScenarioError(
            f.at("ca"), "a CA is of no use with verify: false: keep one or the other"
        )
    if files["key"] is not None and files["cert"] is None:
        raise ScenarioError(f.at("key"), "a key needs its certificate: add cert: FILE")
    return {
        "tls_verify": verify,
        "tls_ca": files["ca"],
        "tls_cert": files["cert"],
        "tls_key": files["key"],
    }


def _requests(top: Fields) -> tuple[RequestSpec, ...]:
    out: list[RequestSpec] = []
    # Optional when every phase runs a Python flow (checked per phase).
    for i, item in enumerate(top.items("requests", [])):
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
            body = json.dumps(body_value, separators=(",", ":"), ensure_ascii=False).encode()
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
            extract=parse_extracts(f.items("extract", []), f.at("extract")),
            check=parse_checks(f.items("check", []), f.at("check")),
            follow_redirects=f.flag("follow_redirects", False),
            abort_on_fail=f.flag("abort_on_fail", False),
            once=f.flag("once", False),
            json_body=isinstance(body_value, dict | list),
        )
        if any(r.name == spec.name for r in out):
            raise ScenarioError(f.at("name"), f"request name '{spec.name}' is used twice")
        f.done()
        out.append(spec)
    if out and sum(r.weight for r in out) == 0:
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
            for duration, target in _stages(f, "target", integer=True):
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
    flow = f.text("flow", "mix" if rate is not None else "sequence")
    if is_python_flow(flow):
        parse_flow_ref(flow, f.at("flow"))
    elif not names:
        raise ScenarioError(
            f.at("requests"), "this phase sends no requests: list some under the top-level requests"
        )
    if rate is not None and flow != "mix":
        raise ScenarioError(
            f.at("flow"),
            "an arrival-rate phase sends a weighted mix; use a users executor for a sequence "
            "or a Python flow",
        )
    data = f.text("data", None)
    cookies = f.flag("cookies", False)
    if rate is not None and (data is not None or cookies):
        raise ScenarioError(
            f.at("data" if data is not None else "cookies"),
            "data feeders and cookies belong to users: use a users executor (a journey)",
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
        data=data,
        cookies=cookies,
    )
    f.done()
    return phase


def _users(n: int, scale: float) -> int:
    return max(1, round(n * scale)) if n else 0


def _stages(f: Fields, target_key: str, integer: bool = False) -> list[tuple[float, float]]:
    out = []
    for j, item in enumerate(f.items("stages", non_empty=True)):
        s = Fields(item, (*f.at("stages"), j), "stage")
        target = s.number(target_key, minimum=0, integer=integer)
        out.append((s.duration("duration", positive=True), target))
        s.done()
    return out
