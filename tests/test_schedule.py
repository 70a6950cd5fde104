"""Arrival schedules: exact totals, arrival times that invert the integral,
and per-second counts within one request of the rate curve."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loadctl.protocol.schedule import RateCurve, RateStage, UserCurve, UserStage

SETTINGS = settings(max_examples=40, deadline=None)

# Rates and durations with few decimals, so the exact integral is a Fraction
# of their decimal values; zero rates and ramps down included.
rate_value = st.one_of(
    st.just(0.0),
    st.integers(0, 600).map(float),
    st.decimals(0, 600, places=2).map(float),
)
duration_value = st.one_of(
    st.integers(1, 20).map(float),
    st.decimals("0.01", 20, places=2).map(float),
)
stage = st.builds(RateStage, duration_value, rate_value, rate_value)
curves = st.lists(stage, min_size=1, max_size=5).map(RateCurve)


def exact_integral(curve: RateCurve, t: float) -> Fraction:
    """F(t) in rationals, from the decimal values of the stages."""
    total = Fraction(0)
    start = Fraction(0)
    t_ = Fraction(t)
    for d, r0, r1 in _exact_stages(curve.stages):
        if t_ <= start:
            break
        dt = min(t_ - start, d)
        total += r0 * dt + (r1 - r0) / d * dt * dt / 2
        start += d
    return total


@functools.cache
def _exact_stages(stages: tuple[RateStage, ...]) -> list[tuple[Fraction, Fraction, Fraction]]:
    return [
        (Fraction(str(s.duration)), Fraction(str(s.start_rate)), Fraction(str(s.end_rate)))
        for s in stages
    ]


def sample_ks(count: int) -> list[int]:
    if count <= 400:
        return list(range(count))
    step = count // 300
    return sorted({*range(0, count, step), count - 1, 1, 2})


# -- totals -------------------------------------------------------------------


def test_ramp_total_is_exact() -> None:
    curve = RateCurve([RateStage(60.0, 100.0, 500.0)])
    assert curve.count() == 18000
    assert curve.total_arrivals == 18000.0


def test_constant_total_is_exact() -> None:
    assert RateCurve.constant(300.0, 5.0).count() == 1500
    assert RateCurve.constant(0.1, 30.0).count() == 3  # 0.1 * 30 is 3.0000000000000004
    assert RateCurve.constant(1 / 3, 3.0).count() == 1


def test_multi_stage_totals() -> None:
    curve = RateCurve(
        [
            RateStage(10.0, 0.0, 100.0),  # 500
            RateStage(5.0, 0.0, 0.0),  # 0: a pause
            RateStage(30.0, 100.0, 100.0),  # 3000
            RateStage(10.0, 100.0, 0.0),  # 500: a ramp down
            RateStage(0.0, 1000.0, 1000.0),  # dropped: no duration
        ]
    )
    assert curve.count() == 4000
    assert curve.duration == 55.0
    assert len(curve.stages) == 4


def test_large_total_with_accumulated_float_error() -> None:
    """F is a sum of stage integrals; past ~10^7 arrivals its float error exceeds
    an absolute 1e-9, and a whole total used to round up by one."""
    curve = RateCurve(
        [
            RateStage(600, 0.7, 33.3),
            RateStage(60, 0.3, 0.3),
            RateStage(3600, 5000, 5000),
            RateStage(0.3, 4999.9, 0.3),
            RateStage(3.3, 1.1, 5000),
            RateStage(3.3, 0.7, 0),
        ]
    )
    assert exact_integral(curve, curve.duration) == 18019221
    assert curve.count() == 18019221


@SETTINGS
@given(curves)
def test_count_is_the_exact_integral_rounded_up(curve: RateCurve) -> None:
    exact = exact_integral(curve, curve.duration)
    if exact.denominator == 1:
        assert curve.count() == exact
    elif exact - math.floor(exact) > Fraction(1, 10**6):  # clear of float noise
        assert curve.count() == math.ceil(exact)


@SETTINGS
@given(st.integers(1, 5000), st.integers(1, 3600))
def test_whole_constant_rates_are_exact(rate: int, seconds: int) -> None:
    assert RateCurve.constant(float(rate), float(seconds)).count() == rate * seconds


@SETTINGS
@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 3600))
def test_whole_ramps_are_exact(r0: int, r1: int, seconds: int) -> None:
    exact = Fraction(r0 + r1, 2) * seconds
    assert RateCurve([RateStage(float(seconds), float(r0), float(r1))]).count() == math.ceil(exact)


# -- arrival times ------------------------------------------------------------


@SETTINGS
@given(curves)
@example(RateCurve([RateStage(10.0, 500.0, 0.0)]))
@example(RateCurve([RateStage(5.0, 0.0, 0.0), RateStage(5.0, 0.0, 100.0)]))
@example(RateCurve([RateStage(2.0, 7.0, 7.0), RateStage(3.0, 0.0, 0.0), RateStage(1.0, 9.0, 3.0)]))
def test_time_of_inverts_the_integral(curve: RateCurve) -> None:
    count = curve.count()
    previous = -1.0
    for k in sample_ks(count):
        t = curve.time_of(k)
        assert 0.0 <= t <= curve.duration
        assert t >= previous
        previous = t
        assert abs(curve.integral(t) - k) <= 1e-6 + 1e-9 * k
        assert curve.first_at_or_after(t) == k
    if count:
        assert curve.time_of(count - 1) < curve.duration


def test_first_arrival_waits_for_a_paused_start() -> None:
    curve = RateCurve([RateStage(10.0, 0.0, 0.0), RateStage(10.0, 100.0, 100.0)])
    assert curve.count() == 1000
    assert curve.time_of(0) == 10.0
    assert curve.time_of(1) == pytest.approx(10.01)
    assert curve.first_at_or_after(5.0) == 0


def test_arrivals_resume_after_a_pause() -> None:
    curve = RateCurve(
        [RateStage(1.0, 10.0, 10.0), RateStage(5.0, 0.0, 0.0), RateStage(1.0, 10.0, 10.0)]
    )
    assert curve.count() == 20
    assert curve.time_of(9) == pytest.approx(0.9)
    assert curve.time_of(10) == 6.0
    assert [curve.first_at_or_after(t) for t in (0.95, 1.0, 3.0, 6.0, 6.05)] == [10, 10, 10, 10, 11]


def test_ramp_from_zero_times() -> None:
    # F(t) = 50 t^2 over 10 s (0 -> 1000 rps): arrival k at sqrt(k / 50)
    curve = RateCurve([RateStage(10.0, 0.0, 1000.0)])
    assert curve.count() == 5000
    for k in (0, 1, 50, 1250, 4999):
        assert curve.time_of(k) == pytest.approx(math.sqrt(k / 50), abs=1e-9)


@SETTINGS
@given(curves)
def test_per_second_counts_follow_the_integral(curve: RateCurve) -> None:
    seconds = math.ceil(curve.duration) + 1
    total = 0
    for s in range(-1, seconds):
        due = curve.first_at_or_after(s + 1) - curve.first_at_or_after(s)
        exact = exact_integral(curve, max(s + 1, 0)) - exact_integral(curve, max(s, 0))
        assert abs(due - exact) < 1 + Fraction(1, 10**6)
        assert due >= 0
        total += due
    assert total == curve.count()


@SETTINGS
@given(curves, st.floats(-5, 200), st.floats(-5, 200))
def test_window_counts_match_arrival_times(curve: RateCurve, a: float, b: float) -> None:
    """first_at_or_after and time_of agree: arrivals due in [a, b) are those counted."""
    a, b = min(a, b), max(a, b)
    lo, hi = curve.first_at_or_after(a), curve.first_at_or_after(b)
    count = curve.count()
    assert 0 <= lo <= hi <= count
    if lo < count:
        assert curve.time_of(lo) >= a - 1e-9
    if 0 < lo <= count:
        assert curve.time_of(lo - 1) < a + 1e-9


def test_rate_at() -> None:
    curve = RateCurve([RateStage(10.0, 100.0, 200.0), RateStage(5.0, 0.0, 0.0)])
    assert curve.rate_at(-1.0) == 0.0
    assert curve.rate_at(0.0) == 100.0
    assert curve.rate_at(5.0) == 150.0
    assert curve.rate_at(12.0) == 0.0
    assert curve.rate_at(15.0) == 0.0
    assert RateCurve([]).count() == 0
    assert RateCurve([]).rate_at(0.0) == 0.0


# -- user curves --------------------------------------------------------------


def test_users_ramp_up_and_down() -> None:
    curve = UserCurve([UserStage(10.0, 0, 10), UserStage(20.0, 10, 10), UserStage(10.0, 10, 0)])
    assert curve.duration == 40.0
    assert curve.peak == 10
    assert [curve.users_at(t) for t in (0.0, 0.5, 1.0, 4.99, 5.0, 9.999)] == [0, 0, 1, 4, 5, 9]
    assert [curve.users_at(t) for t in (10.0, 29.9, 30.0, 35.0, 39.99)] == [10, 10, 10, 5, 0]
    assert curve.users_at(40.0) == 0
    assert curve.users_at(-1.0) == 0
    assert UserCurve([UserStage(5.0, 7, 7)]).users_at(4.9) == 7


@SETTINGS
@given(st.integers(0, 2000), st.integers(0, 2000), st.integers(1, 600), st.data())
def test_users_step_exactly_at_their_times(
    u0: int, u1: int, seconds: int, data: st.DataObject
) -> None:
    """Step j of a ramp (u0 + j users) starts at exactly j/|u1-u0| of the stage."""
    curve = UserCurve([UserStage(float(seconds), u0, u1), UserStage(1.0, u1, u1)])
    steps = abs(u1 - u0)
    assert curve.users_at(0.0) == u0
    assert curve.users_at(float(seconds)) == u1
    if steps == 0:
        return
    j = data.draw(st.integers(0, steps))
    t = seconds * j / steps
    direction = 1 if u1 > u0 else -1
    assert curve.users_at(t) == u0 + direction * j
    t = data.draw(st.floats(0, seconds, exclude_max=True))
    exact = u0 + (u1 - u0) * Fraction(t) / seconds
    assert exact - 1 < curve.users_at(t) <= exact + Fraction(1, 10**6)
    assert min(u0, u1) <= curve.users_at(t) <= max(u0, u1)
