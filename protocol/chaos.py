"""The `chaos:` list of a scenario: fault windows applied through fault proxies.

    chaos:
      - at: 30s                     # from the run start
        duration: 10s
        proxy: target               # the proxy's name on its API
        api: http://127.0.0.1:8474  # a Toxiproxy-compatible API (default shown)
        toxic:
          type: latency             # a toxic from TOXICS below
          stream: downstream        # downstream (server → client, default) or upstream
          toxicity: 1.0             # share of connections it applies to (default 1)
          attributes: {latency: 200ms, jitter: 20}
      - at: 60s
        duration: 5s
        proxy: target
        toxic: down                 # an outage: the proxy refuses connections
      - at: 80s
        duration: 1s
        proxy: target
        toxic: {type: reset_peer}
        repeat: {every: 3s, times: 5}   # five short disruptions, 3 s apart

Attributes are Toxiproxy's, in its units (ms, µs, KB/s, bytes); a time
attribute also takes a duration such as `200ms` or `1.5s`. `loss` is
loadctl's own toxic (see `loadctl.chaos.toxics`); Toxiproxy does not have it.

This module is pure: it turns plain data into `FaultWindow`s, or raises a
`ScenarioError` naming the path. The coordinator's `ChaosTimeline` applies
them; `loadctl chaos proxy` and its API validate toxics with the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from loadctl.protocol.fields import Fields, ScenarioError, parse_duration

DEFAULT_API: Final = "http://127.0.0.1:8474"
STREAMS: Final = ("downstream", "upstream")
DOWN: Final = "down"
LOSS_MODES: Final = ("mixed", "stall", "reset")

AttrValue = int | float | str


@dataclass(frozen=True, slots=True)
class Attr:
    """One toxic attribute: its unit and default (Toxiproxy's zero values)."""

    name: str
    unit: str  # "ms", "us", "KB/s", "bytes", "%", or "" for a choice
    default: AttrValue = 0
    integer: bool = True
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> AttrValue:
        """The value in the attribute's unit; ValueError says what is wrong."""
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        if isinstance(value, str) and self.unit in ("ms", "us") and not _is_number(value):
            seconds = parse_duration(value)  # ScenarioError without a path: reworded below
            number: float = seconds * (1e3 if self.unit == "ms" else 1e6)
            value = round(number)
        if isinstance(value, str) and _is_number(value):
            value = float(value)  # "200": in the attribute's unit, as 200 would be
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number ({self.unit}), got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"must be a number ≥ 0 ({self.unit}), got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g} ({self.unit}), got {value!r}")
        if self.integer:
            if not float(value).is_integer():
                raise ValueError(f"expected a whole number ({self.unit}), got {value!r}")
            return int(value)
        return float(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# Toxiproxy 2.x's toxics and attributes, plus loadctl's `loss`.
TOXICS: Final[Mapping[str, tuple[Attr, ...]]] = {
    "latency": (Attr("latency", "ms"), Attr("jitter", "ms")),
    "bandwidth": (Attr("rate", "KB/s"),),
    "slow_close": (Attr("delay", "ms"),),
    "timeout": (Attr("timeout", "ms"),),
    "reset_peer": (Attr("timeout", "ms"),),
    "slicer": (Attr("average_size", "bytes"), Attr("size_variation", "bytes"), Attr("delay", "us")),
    "limit_data": (Attr("bytes", "bytes"),),
    "loss": (
        Attr("percent", "%", 0.0, integer=False, maximum=100.0),
        Attr("mode", "", "mixed", choices=LOSS_MODES),
    ),
}


def check_attributes(
    kind: str, raw: Mapping[str, Any], base: Mapping[str, AttrValue] | None = None, *, strict: bool
) -> dict[str, AttrValue]:
    """All attributes of a toxic of type `kind`, defaults filled in from `base`
    (an existing toxic's attributes) or the table.

    Raises KeyError(name) for an unknown attribute when `strict` (scenarios:
    a typo must not pass silently; the API ignores them, as Toxiproxy does),
    ValueError("name: problem") for a bad value.
    """
    attrs = TOXICS[kind]
    known = {a.name for a in attrs}
    if strict:
        for key in raw:
            if key not in known:
                raise KeyError(key)
    out: dict[str, AttrValue] = {}
    for a in attrs:
        if a.name in raw:
            try:
                out[a.name] = a.check(raw[a.name])
            except (ValueError, ScenarioError) as exc:
                text = exc.message if isinstance(exc, ScenarioError) else str(exc)
                raise ValueError(f"{a.name}: {text}") from None
        else:
            out[a.name] = base[a.name] if base and a.name in base else a.default
    return out


@dataclass(frozen=True, slots=True)
class ToxicSpec:
    """A toxic as Toxiproxy's API shows it (`attributes` complete)."""

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """One fault on one proxy, from `at` for `duration` seconds of the run.

    `toxic` None is an outage (`down`: the proxy disabled). `label` names the
    window in reports: "#3 latency downstream on target" and the like.
    """

    at: float
    duration: float
    proxy: str
    api: str
    toxic: ToxicSpec | None
    label: str
    index: int  # position in the chaos list (repeats share it)

    @property
    def end(self) -> float:
        return self.at + self.duration

    @property
    def is_down(self) -> bool:
        return self.toxic is None

    @property
    def key(self) -> tuple[str, str]:
        """The proxy this fault acts on: (API URL, proxy name)."""
        return (self.api, self.proxy)


def chaos_of(
    source: Mapping[str, Any], run_duration: float | None = None
) -> tuple[FaultWindow, ...]:
    """The fault windows of a scenario's source data (none without `chaos:`)."""
    if "chaos" not in source or source["chaos"] is None:
        return ()
    return parse_chaos(source["chaos"], ("chaos",), run_duration)


def parse_chaos(
    items: Any, path: tuple[str | int, ...] = ("chaos",), run_duration: float | None = None
) -> tuple[FaultWindow, ...]:
    """Fault windows in start order; repeats expanded. `run_duration`, when
    given, rejects windows that would start after the run has ended."""
    if not isinstance(items, list | tuple):
        raise ScenarioError(path, "expected a list of fault windows (at, duration, proxy, toxic)")
    windows: list[FaultWindow] = []
    for i, item in enumerate(items):
        windows.extend(_window(Fields(item, (*path, i), "fault window"), i, run_duration))
    _check_overlaps(windows, path)
    return tuple(sorted(windows, key=lambda w: (w.at, w.index)))


def _window(f: Fields, index: int, run_duration: float | None) -> list[FaultWindow]:
    at = f.duration("at")
    duration = f.duration("duration", positive=True)
    proxy = f.text("proxy")
    if not proxy or "/" in proxy:
        raise ScenarioError(f.at("proxy"), f"a proxy name, such as target, got {proxy!r}")
    api = f.text("api", DEFAULT_API).rstrip("/")
    parts = urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScenarioError(f.at("api"), f"api must be an http:// URL such as {DEFAULT_API}")
    every, times = _repeat(f, duration)
    toxic = _toxic(f, index)
    f.done()
    label = f"#{index + 1} {'down' if toxic is None else f'{toxic.type} {toxic.stream}'} on {proxy}"
    out = []
    for r in range(times):
        start = at + r * every
        if run_duration is not None and start >= run_duration:
            where = f.at("at") if r == 0 else f.at("repeat")
            raise ScenarioError(
                where,
                f"this fault would start at {start:g}s, after the run ends ({run_duration:g}s)",
            )
        spec = toxic
        if toxic is not None and times > 1:
            spec = ToxicSpec(
                f"{toxic.name}_{r + 1}",
                toxic.type,
                toxic.stream,
                toxic.toxicity,
                toxic.attributes,
            )
        suffix = f" ({r + 1}/{times})" if times > 1 else ""
        out.append(FaultWindow(start, duration, proxy, api, spec, label + suffix, index))
    return out


def _repeat(f: Fields, duration: float) -> tuple[float, int]:
    if not f.has("repeat"):
        return 0.0, 1
    r = Fields(f.raw("repeat"), f.at("repeat"), "repeat")
    every = r.duration("every", positive=True)
    times = r.number("times", minimum=1, integer=True)
    r.done()
    if times > 1 and every <= duration:
        raise ScenarioError(
            r.at("every"),
            f"repeats would overlap: every ({every:g}s) must be longer than "
            f"duration ({duration:g}s)",
        )
    return every, int(times)


def _toxic(f: Fields, index: int) -> ToxicSpec | None:
    raw = f.raw("toxic")
    path = f.at("toxic")
    if raw == DOWN:
        return None
    if isinstance(raw, str):
        if raw in TOXICS:
            raw = {"type": raw}
        else:
            raise ScenarioError(path, f"'{raw}' is not a toxic: use down, or one of {_types()}")
    t = Fields(raw, path, "toxic")
    kind = t.text("type")
    if kind == DOWN:
        raise ScenarioError(t.at("type"), "down is not a toxic type: write `toxic: down`")
    if kind not in TOXICS:
        raise ScenarioError(t.at("type"), f"unknown toxic type '{kind}': use one of {_types()}")
    stream = t.text("stream", "downstream", choices=STREAMS)
    toxicity = t.number("toxicity", 1.0)
    if toxicity > 1:
        raise ScenarioError(t.at("toxicity"), f"toxicity is a probability (0 to 1), got {toxicity}")
    name = t.text("name", f"loadctl_{index + 1}_{kind}_{stream}")
    if not name or "/" in name:
        raise ScenarioError(t.at("name"), f"a toxic name without '/', got {name!r}")
    raw_attrs = t.raw("attributes", {})
    if not isinstance(raw_attrs, Mapping):
        raise ScenarioError(t.at("attributes"), "expected a mapping of attribute: value")
    try:
        attrs = check_attributes(kind, raw_attrs, strict=True)
    except KeyError as exc:
        key = str(exc.args[0])
        known = ", ".join(a.name for a in TOXICS[kind])
        raise ScenarioError(
            (*t.at("attributes"), key), f"a {kind} toxic has no attribute '{key}' (known: {known})"
        ) from None
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        raise ScenarioError((*t.at("attributes"), key), problem) from None
    t.done()
    return ToxicSpec(name, kind, stream, toxicity, attrs)


def _check_overlaps(windows: list[FaultWindow], path: tuple[str | int, ...]) -> None:
    """Two outages of one proxy, or two toxics of one name, must not overlap:
    the first to end would undo the other."""
    ordered = sorted(windows, key=lambda w: w.at)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.at >= a.end:
                break
            if a.key != b.key:
                continue
            if a.toxic is None and b.toxic is None:
                what = "outages"
            elif a.toxic is not None and b.toxic is not None and a.toxic.name == b.toxic.name:
                what = f"toxics named '{a.toxic.name}'"
            else:
                continue
            raise ScenarioError(
                (*path, b.index),
                f"overlaps fault #{a.index + 1}: two {what} of proxy '{a.proxy}' at once "
                "(the first to end would undo the other); move or merge them",
            )


def _types() -> str:
    return ", ".join(TOXICS)
