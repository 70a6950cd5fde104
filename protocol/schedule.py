"""Arrival schedules: when arrival k of an open-model phase is due.

A phase's rate is piecewise linear (constant, ramp, burst are special cases),
so its integral F(t) (arrivals due by time t) is piecewise quadratic and can
be inverted exactly: arrival k is due at the t with F(t) = k. Sending arrival
k at F⁻¹(k) makes the count over any window [a, b) equal to
ceil(F(b)) - ceil(F(a)), i.e. the integral of the rate curve to within one
request, and the total over the phase exactly ceil(F(D)) — for a ramp from
100 to 500 RPS over 60 s, exactly 18,000.

Within a stage of duration d going from rate r0 to r1, with k' = k - F0,
solve a·t² + r0·t = k' (a = (r1 - r0) / 2d) as t = 2k' / (r0 + sqrt(r0² + 4ak')):
the form without cancellation, valid for a = 0 and for ramps down.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-9
_REL_EPS = 1e-12  # float error of F(t) grows with its size: 1e-9 alone fails past ~1e7
_TIME_EPS = 1e-9  # seconds: an arrival this close before t counts as due at t


@dataclass(frozen=True, slots=True)
class RateStage:
    duration: float
    start_rate: float
    end_rate: float

    @property
    def arrivals(self) -> float:
        return (self.start_rate + self.end_rate) / 2 * self.duration


class RateCurve:
    def __init__(self, stages: Sequence[RateStage]) -> None:
        self.stages = tuple(s for s in stages if s.duration > 0)
        self._starts: list[float] = []
        self._before: list[float] = []  # arrivals due before each stage
        t = f = 0.0
        for stage in self.stages:
            self._starts.append(t)
            self._before.append(f)
            t += stage.duration
            f += stage.arrivals
        self.duration = t
        self.total_arrivals = f

    @classmethod
    def constant(cls, rate: float, duration: float) -> RateCurve:
        return cls([RateStage(duration, rate, rate)])

    def rate_at(self, t: float) -> float:
        if not self.stages or t < 0 or t >= self.duration:
            return 0.0
        i = bisect_right(self._starts, t) - 1
        s = self.stages[i]
        return s.start_rate + (s.end_rate - s.start_rate) * (t - self._starts[i]) / s.duration

    def integral(self, t: float) -> float:
        """Arrivals due in [0, t)."""
        if t <= 0 or not self.stages:
            return 0.0
        if t >= self.duration:
            return self.total_arrivals
        i = bisect_right(self._starts, t) - 1
        s = self.stages[i]
        dt = t - self._starts[i]
        slope = (s.end_rate - s.start_rate) / s.duration
        return self._before[i] + s.start_rate * dt + slope * dt * dt / 2

    def count(self) -> int:
        """Arrivals in the whole curve: k = 0 .. count-1."""
        return self.first_at_or_after(self.duration)

    def first_at_or_after(self, t: float) -> int:
        """Index of the first arrival due at or after t."""
        f = self.integral(t)
        k = max(0, math.ceil(f - _EPS - _REL_EPS * abs(f)))
        # The tolerance above is in arrivals: it keeps an arrival due exactly at t whose
        # F(t) came out a hair above its index. Where the rate is near zero (a ramp from
        # 0), a hair of an arrival is a long time: F(1 µs) = 5e-13 on a 0 -> 1/s ramp, and
        # arrival 0, due at 0, would count as at or after 1 µs. So a borderline k (just
        # below f) is settled in time; k + 1 > f then: it is due at or after t. From the
        # end on, F is the exact total and k the count (time_of has no arrival there).
        if k < f and t < self.duration and self.time_of(k) < t - _TIME_EPS:
            k += 1
        return k

    def time_of(self, k: int) -> float:
        """When arrival k is due (seconds from the phase start)."""
        i = bisect_right(self._before, k) - 1
        # skip zero-rate stages that contain no arrival
        while i + 1 < len(self.stages) and self._before[i + 1] <= k:
            i += 1
        i = max(i, 0)
        s = self.stages[i]
        remaining = k - self._before[i]
        if remaining <= 0:
            return self._starts[i]
        a = (s.end_rate - s.start_rate) / (2 * s.duration)
        disc = s.start_rate * s.start_rate + 4 * a * remaining
        root = math.sqrt(max(disc, 0.0))
        denominator = s.start_rate + root
        if denominator <= 0:
            return self._starts[i] + s.duration
        return self._starts[i] + min(2 * remaining / denominator, s.duration)


@dataclass(frozen=True, slots=True)
class UserStage:
    duration: float
    start_users: int
    end_users: int


class UserCurve:
    """Target concurrent users over time; linear within a stage, floored."""

    def __init__(self, stages: Sequence[UserStage]) -> None:
        self.stages = tuple(s for s in stages if s.duration > 0)
        self.duration = sum(s.duration for s in self.stages)

    def users_at(self, t: float) -> int:
        if t < 0:
            return 0
        start = 0.0
        for s in self.stages:
            if t < start + s.duration:
                frac = (t - start) / s.duration
                return math.floor(s.start_users + (s.end_users - s.start_users) * frac + _EPS)
            start += s.duration
        return 0

    @property
    def peak(self) -> int:
        return max((max(s.start_users, s.end_users) for s in self.stages), default=0)
