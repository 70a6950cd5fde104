"""Clock offset from ping/pong rounds: the minimum-RTT round wins, and its
offset is wrong by at most half its RTT whatever the path asymmetry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadctl.protocol.clock import ClockEstimate, ClockSample, estimate

SETTINGS = settings(max_examples=40, deadline=None)


def round_trip(true_offset: float, sent: float, out: float, back: float) -> ClockSample:
    """A round sent at agent time `sent`, `out` seconds to the coordinator, `back` seconds back."""
    return ClockSample(sent, sent + out + true_offset, sent + out + back)


def test_sample_arithmetic() -> None:
    s = ClockSample(sent=10.0, coordinator_time=110.5, received=11.0)
    assert s.rtt == 1.0
    assert s.offset == 100.0
    assert round_trip(5.0, 1.0, 0.25, 0.25).offset == 5.0


def test_estimate_keeps_the_smallest_rtt_round() -> None:
    samples = [
        ClockSample(0.0, 100.9, 1.0),  # rtt 1.0, offset 100.4
        ClockSample(2.0, 102.06, 2.1),  # rtt 0.1, offset 100.01
        ClockSample(3.0, 103.4, 3.5),  # rtt 0.5, offset 100.15
    ]
    for order in (samples, samples[::-1], [samples[1], samples[0], samples[2]]):
        e = estimate(order)
        assert e.offset == samples[1].offset
        assert e.rtt == pytest.approx(0.1)
        assert e.samples == 3
        assert e.error_bound == pytest.approx(0.05)


def test_estimate_ignores_impossible_rounds() -> None:
    bad = ClockSample(5.0, 0.0, 4.0)  # received before sent: a clock step
    good = ClockSample(1.0, 11.5, 2.0)
    e = estimate([bad, good])
    assert e.offset == 10.0 and e.samples == 1
    with pytest.raises(ValueError):
        estimate([bad])
    with pytest.raises(ValueError):
        estimate([])
    assert estimate(iter([good])).offset == 10.0  # any iterable


@SETTINGS
@given(
    st.floats(-1e5, 1e5),
    st.lists(
        st.tuples(
            st.floats(0, 1e4),  # agent time the round starts
            st.floats(0, 0.5),  # one-way delay out
            st.floats(0, 0.5),  # one-way delay back
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_offset_error_within_half_rtt(
    true_offset: float, rounds: list[tuple[float, float, float]]
) -> None:
    samples = [round_trip(true_offset, *r) for r in rounds]
    e = estimate(samples)
    assert e.rtt == min(s.rtt for s in samples)
    assert e.samples == len(samples)
    slack = 1e-9 * (1 + abs(true_offset) + max(r[0] for r in rounds))  # float rounding
    assert abs(e.offset - true_offset) <= e.error_bound + slack
    # the bound is tight: all of it is the path asymmetry of the kept round
    best = min(rounds, key=lambda r: (r[0] + r[1] + r[2]) - r[0])
    assert abs(e.offset - true_offset) == pytest.approx(abs(best[1] - best[2]) / 2, abs=slack)


@SETTINGS
@given(st.floats(-1e6, 1e6), st.floats(0, 1), st.floats(-1e6, 1e6))
def test_conversions_are_inverse(offset: float, rtt: float, t: float) -> None:
    e = ClockEstimate(offset, rtt, 1)
    assert e.to_coordinator(t) == pytest.approx(t + offset)
    assert e.to_agent(e.to_coordinator(t)) == pytest.approx(t, abs=1e-6)
