"""SLO thresholds in a scenario: their syntax, validated at load time.

    thresholds:
      - "p(95) < 500ms"                  # on the whole run
      - "error_rate < 1%"
      - threshold: "p(99) < 1s"
        on: request:item                 # total | request:NAME | phase:NAME
        abort_on_fail: true              # stop the run early when it fails
        delay_abort_eval: 10s            # ... but not before 10 s of run time
      - {threshold: "rps >= 450", on: "phase:steady"}

An expression is `METRIC OP VALUE`, OP one of < <= > >= == !=.

Metrics and their values:

- p(N), med, avg (or mean), min, max: latency from the intended start;
  a duration such as 500ms, 1s or 250us (a bare number is ms).
- error_rate: (errors + dropped) / attempted; 1% or 0.01.
- checks: passed checks / all checks; 99% or 0.99.
- rps: completed requests per second over the scope's duration.
- requests, errors, dropped: counts.

This module is pure parsing (both sides read scenarios); the coordinator
evaluates thresholds live and at the end (`loadctl.coordinator.thresholds`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadctl.protocol.fields import Fields, ScenarioError

Path = tuple[str | int, ...]

LATENCY_METRICS = ("p", "min", "max", "mean")
RATE_METRICS = ("error_rate", "checks")
COUNT_METRICS = ("requests", "errors", "dropped")
METRICS = (*LATENCY_METRICS, *RATE_METRICS, "rps", *COUNT_METRICS)
_ALIASES = {"avg": "mean", "med": "p"}
OPERATORS = ("<", "<=", ">", ">=", "==", "!=")

_EXPR = re.compile(
    r"^\s*(?P<metric>[A-Za-z_]+)\s*(?:\(\s*(?P<arg>[^)]*?)\s*\))?\s*"
    r"(?P<op><=|>=|==|!=|=|<|>)\s*(?P<value>.*?)\s*$"
)
_NUMBER = re.compile(r"^[+]?(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_LATENCY = re.compile(r"^(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>us|µs|ms|s|m)?$")
_LATENCY_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, None: 1.0}
_HELP = (
    "write METRIC OP VALUE, e.g. 'p(95) < 500ms', 'error_rate < 1%', 'rps >= 450', "
    "'dropped == 0', 'checks > 99%'"
)


@dataclass(frozen=True, slots=True)
class Threshold:
    expression: str  # normalised, e.g. "p(95) < 500ms"
    metric: str  # one of METRICS
    percentile: float  # for metric "p"
    op: str
    value: float  # ms for latency metrics, a fraction for rates, else the plain number
    scope: str = "total"  # total | request | phase
    name: str = ""  # the request or phase name
    abort_on_fail: bool = False
    delay_abort_eval: float = 0.0  # seconds of run time before a failure may abort

    @property
    def on(self) -> str:
        return self.scope if self.scope == "total" else f"{self.scope}:{self.name}"

    @property
    def label(self) -> str:
        return self.expression if self.scope == "total" else f"{self.expression} on {self.on}"

    @property
    def unit(self) -> str:
        if self.metric in LATENCY_METRICS:
            return "ms"
        if self.metric in RATE_METRICS:
            return "%"
        return "rps" if self.metric == "rps" else ""

    def holds(self, observed: float) -> bool:
        if math.isnan(observed):
            return False
        return {
            "<": observed < self.value,
            "<=": observed <= self.value,
            ">": observed > self.value,
            ">=": observed >= self.value,
            "==": observed == self.value,
            "!=": observed != self.value,
        }[self.op]

    def format(self, observed: float | None) -> str:
        """An observed value in the threshold's own unit: 123ms, 0.52%, 451.2, 7."""
        return format_value(self.metric, observed)


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "no data"
    if metric in LATENCY_METRICS:
        if value >= 1000:
            return f"{value / 1000:.3g}s" if value < 10_000 else f"{value / 1000:.1f}s"
        return f"{value:.3g}ms" if value >= 1 else f"{value * 1000:.3g}us"
    if metric in RATE_METRICS:
        return f"{value * 100:.3g}%"
    if metric == "rps":
        return f"{value:.1f}"
    return f"{value:g}"


def parse_expression(text: Any, path: Path = ()) -> Threshold:
    """One `METRIC OP VALUE` expression (scope and abort settings left at defaults)."""
    if not isinstance(text, str):
        raise ScenarioError(path, f"expected a threshold expression as text: {_HELP}")
    m = _EXPR.match(text)
    if not m:
        if short := re.match(r"^\s*p(\d+(?:\.\d+)?)\b", text):
            raise ScenarioError(
                path,
                f"threshold {text!r}: write a percentile as p({short[1]}), e.g. 'p(95) < 500ms'",
            )
        raise ScenarioError(path, f"cannot read threshold {text!r}: {_HELP}")
    raw_metric, arg, op, raw_value = m["metric"], m["arg"], m["op"], m["value"]
    metric = _ALIASES.get(raw_metric.lower(), raw_metric.lower())
    if op == "=":
        raise ScenarioError(path, f"threshold {text!r}: use '==' to compare for equality")
    if metric not in METRICS:
        known = "p(N), med, avg, min, max, rps, error_rate, checks, requests, errors, dropped"
        raise ScenarioError(path, f"threshold {text!r}: unknown metric {raw_metric!r} ({known})")
    percentile = 50.0 if raw_metric.lower() == "med" else 0.0
    if metric == "p" and raw_metric.lower() != "med":
        if arg is None or not _NUMBER.match(arg) or not 0 < float(arg) <= 100:
            raise ScenarioError(
                path, f"threshold {text!r}: p(N) takes a percentile above 0 and up to 100"
            )
        percentile = float(arg)
    elif arg is not None:
        raise ScenarioError(path, f"threshold {text!r}: {raw_metric} takes no argument")
    value = _value(metric, raw_value, text, path)
    if metric == "p":
        shown = f"p({percentile:g})" if raw_metric.lower() != "med" else "med"
    else:
        shown = raw_metric.lower()
    return Threshold(f"{shown} {op} {raw_value}", metric, percentile, op, value)


def _value(metric: str, raw: str, text: str, path: Path) -> float:
    if not raw:
        raise ScenarioError(path, f"threshold {text!r} has no value to compare with: {_HELP}")
    if metric in LATENCY_METRICS:
        m = _LATENCY.match(raw)
        if not m:
            raise ScenarioError(
                path, f"threshold {text!r}: {raw!r} is not a duration (500ms, 1s, 250us)"
            )
        return float(m["n"]) * _LATENCY_UNITS_MS[m["unit"]]
    if metric in RATE_METRICS:
        if raw.endswith("%") and _NUMBER.match(raw[:-1].strip()):
            value = float(raw[:-1]) / 100
        elif _NUMBER.match(raw):
            value = float(raw)
        else:
            raise ScenarioError(path, f"threshold {text!r}: {raw!r} is not a rate (1% or 0.01)")
        if not 0 <= value <= 1:
            raise ScenarioError(path, f"threshold {text!r}: a rate lies between 0% and 100%")
        return value
    if not _NUMBER.match(raw):
        raise ScenarioError(path, f"threshold {text!r}: {raw!r} is not a number")
    return float(raw)


def fix_on_keys(source: Any) -> None:
    """YAML 1.1 reads a bare `on:` key as the boolean true (GitHub Actions users know
    it). Rename it back to "on" in each threshold mapping of a scenario's source,
    in place: the plan ships the source to agents, and a wire map takes text keys."""
    items = source.get("thresholds") if isinstance(source, dict) else None
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and True in item and "on" not in item:
            item["on"] = item.pop(True)


def parse_thresholds(
    items: Sequence[Any],
    path: Path,
    request_names: Sequence[str],
    phase_names: Sequence[str],
) -> tuple[Threshold, ...]:
    """The scenario's `thresholds:` list; raises ScenarioError naming the entry."""
    out: list[Threshold] = []
    for i, item in enumerate(items):
        at = (*path, i)
        if isinstance(item, str):
            out.append(parse_expression(item, at))
            continue
        if not isinstance(item, Mapping):
            raise ScenarioError(
                at,
                f"expected a threshold expression such as 'p(95) < 500ms', or a mapping "
                f"with threshold:, on:, abort_on_fail:, delay_abort_eval:; got {item!r}",
            )
        f = Fields(item, at, "threshold")
        base = parse_expression(f.raw("threshold"), f.at("threshold"))
        scope, name = _scope(f.text("on", "total"), f.at("on"), request_names, phase_names)
        abort = f.flag("abort_on_fail", False)
        delay = f.duration("delay_abort_eval", 0.0)
        f.done()
        out.append(
            Threshold(
                base.expression,
                base.metric,
                base.percentile,
                base.op,
                base.value,
                scope,
                name,
                abort,
                delay,
            )
        )
    return tuple(out)


def _scope(
    on: str, path: Path, request_names: Sequence[str], phase_names: Sequence[str]
) -> tuple[str, str]:
    if on == "total":
        return "total", ""
    kind, sep, name = on.partition(":")
    kind, name = kind.strip(), name.strip()
    if not sep or kind not in ("request", "phase") or not name:
        raise ScenarioError(path, f"'{on}': use total, request:NAME or phase:NAME")
    known = request_names if kind == "request" else phase_names
    if name not in known:
        raise ScenarioError(path, f"no {kind} named '{name}' (known: {', '.join(known)})")
    return kind, name
