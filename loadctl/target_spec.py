"""Latency and service-time distributions of the demo target: parse a spec, sample it.

A spec is one of::

    0                     no added time
    20ms                  fixed (units: us, ms, s; "fixed:20ms" also works)
    uniform:5ms:15ms      uniform between the two bounds
    lognormal:20ms:0.5    log-normal with that median and sigma (of the log)
    exp:20ms              exponential with that mean

Samples are seconds, capped at `MAX_SECONDS` so a long log-normal tail cannot
park a request for hours.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_SECONDS = 600.0
SPEC_EXAMPLES = "0, 20ms, uniform:5ms:15ms, lognormal:20ms:0.5 or exp:20ms"

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(us|µs|ms|s)")
_ZERO = re.compile(r"0+(?:\.0*)?")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


class SpecError(ValueError):
    """A value a user gave that does not parse; the message is one line."""


def parse_duration(text: str) -> float:
    """'20ms' → 0.02; '0' → 0.0. Raises SpecError."""
    t = text.strip()
    if _ZERO.fullmatch(t):
        return 0.0  # a bare zero needs no unit
    m = _DURATION.fullmatch(t)
    if m is None:
        raise SpecError(f"{text!r} is not a duration (examples: 0, 250us, 20ms, 1.5s)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_SECONDS:
        raise SpecError(f"{text!r} is longer than the {MAX_SECONDS:g} s limit")
    return seconds


class Distribution(Protocol):
    @property
    def spec(self) -> str: ...

    @property
    def mean(self) -> float: ...

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class Fixed:
    spec: str
    seconds: float

    @property
    def mean(self) -> float:
        return self.seconds

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True)
class Uniform:
    spec: str
    low: float
    high: float

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogNormal:
    spec: str
    median: float
    sigma: float

    @property
    def mean(self) -> float:
        return min(self.median * math.exp(self.sigma**2 / 2), MAX_SECONDS)

    def sample(self, rng: random.Random) -> float:
        return min(rng.lognormvariate(math.log(self.median), self.sigma), MAX_SECONDS)


@dataclass(frozen=True)
class Exponential:
    spec: str
    mean_seconds: float

    @property
    def mean(self) -> float:
        return self.mean_seconds

    def sample(self, rng: random.Random) -> float:
        return min(rng.expovariate(1.0 / self.mean_seconds), MAX_SECONDS)


ZERO = Fixed("0", 0.0)
TEN_MS = Fixed("10ms", 0.010)


def _fixed(spec: str, args: list[str]) -> Distribution:
    if len(args) != 1:
        raise SpecError("fixed takes one duration, as in fixed:20ms")
    return Fixed(spec, parse_duration(args[0]))


def _uniform(spec: str, args: list[str]) -> Distribution:
    if len(args) != 2:
        raise SpecError("uniform takes two durations, as in uniform:5ms:15ms")
    low, high = parse_duration(args[0]), parse_duration(args[1])
    if low > high:
        raise SpecError(f"uniform bounds are reversed in {spec!r}")
    return Uniform(spec, low, high)


def _lognormal(spec: str, args: list[str]) -> Distribution:
    if len(args) != 2:
        raise SpecError("lognormal takes a median and a sigma, as in lognormal:20ms:0.5")
    median = parse_duration(args[0])
    if median <= 0:
        raise SpecError(f"lognormal median must be above zero in {spec!r}")
    try:
        sigma = float(args[1])
    except ValueError:
        raise SpecError(f"lognormal sigma {args[1]!r} is not a number") from None
    if not 0 <= sigma <= 5:
        raise SpecError(f"lognormal sigma must be between 0 and 5 in {spec!r}")
    return LogNormal(spec, median, sigma)


def _exp(spec: str, args: list[str]) -> Distribution:
    if len(args) != 1:
        raise SpecError("exp takes one mean duration, as in exp:20ms")
    mean = parse_duration(args[0])
    if mean <= 0:
        return Fixed(spec, 0.0)
    return Exponential(spec, mean)


_KINDS: dict[str, Callable[[str, list[str]], Distribution]] = {
    "fixed": _fixed,
    "uniform": _uniform,
    "lognormal": _lognormal,
    "exp": _exp,
}


def parse_distribution(spec: str) -> Distribution:
    """Parse a latency / service-time spec. Raises SpecError with a one-line reason."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"{spec!r} is not a latency spec (examples: {SPEC_EXAMPLES})")
    text = spec.strip()
    kind, *args = text.split(":")
    if not args:
        try:
            return Fixed(text, parse_duration(text))
        except SpecError:
            raise SpecError(f"{spec!r} is not a latency spec (examples: {SPEC_EXAMPLES})") from None
    parser = _KINDS.get(kind)
    if parser is None:
        raise SpecError(f"unknown distribution {kind!r} in {spec!r} (examples: {SPEC_EXAMPLES})")
    return parser(text, args)
