# Properties of the latency histogram: every percentile within 0.1 % of the
# exact one, exact merges, overflow never dropped, and a wire form that round
# trips and rejects anything malformed without touching the target.
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import ANY_VALUE, damage

from loadctl.protocol.histogram import COUNTS_LEN, WIRE_FIELDS, Histogram, HistogramWireError

HIGHEST = Histogram.HIGHEST
PS = [0.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0]
SLOW = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


def exact(samples: npt.NDArray[Any], ps: list[float]) -> npt.NDArray[np.float64]:
    return np.asarray(np.percentile(samples, ps, method="inverted_cdf"), dtype=np.float64)


def sample(kind: str, seed: int, n: int) -> npt.NDArray[np.float64]:
    """Latencies in ns between 1 µs and 1 h from a few shapes of distribution."""
    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        x = rng.lognormal(rng.uniform(np.log(1e4), np.log(1e10)), rng.uniform(0.05, 3.0), n)
    elif kind == "bimodal":
        fast = rng.lognormal(np.log(rng.uniform(1e4, 1e7)), 0.3, n)
        slow = rng.lognormal(np.log(rng.uniform(1e8, 1e11)), 0.5, n)
        x = np.where(rng.random(n) < rng.uniform(0.5, 0.99), fast, slow)
    elif kind == "pareto":
        x = rng.uniform(1e3, 1e7) * (1.0 + rng.pareto(rng.uniform(0.3, 3.0), n))
    elif kind == "constant":
        x = np.full(n, 10 ** rng.uniform(3, 12.5))
    else:  # log-uniform over the whole range
        x = 10.0 ** rng.uniform(3.0, np.log10(HIGHEST), n)
    return np.clip(x, 1e3, HIGHEST)


KINDS = st.sampled_from(["lognormal", "bimodal", "pareto", "constant", "loguniform"])
SEEDS = st.integers(0, 2**32 - 1)
SIZES = st.integers(1, 20_000)


def assert_close(got: list[int], want: npt.NDArray[np.float64], rel: float = 1e-3) -> None:
    err = np.abs(np.asarray(got, dtype=np.float64) - want) / want
    assert (err <= rel).all(), list(zip(got, want.tolist(), err.tolist(), strict=True))


def hist_of(values: npt.ArrayLike) -> Histogram:
    h = Histogram()
    h.record_many(values)
    return h


def state(h: Histogram) -> tuple[int, int, int, int, bytes]:
    return h.count, h.overflow, h.min, h.max, h.counts.tobytes()


# -- accuracy ------------------------------------------------------------------


@SLOW
@given(KINDS, SEEDS, SIZES, st.lists(st.floats(0, 100), max_size=5))
def test_percentiles_within_a_thousandth_of_exact(
    kind: str, seed: int, n: int, extra: list[float]
) -> None:
    x = sample(kind, seed, n)
    h = hist_of(x)
    ps = PS + extra
    assert_close(h.percentiles(ps), exact(x, ps))
    assert h.min == round(float(x.min())) and h.max == round(float(x.max()))
    assert h.count == n and h.overflow == 0


@SLOW
@given(KINDS, SEEDS, SIZES)
def test_integer_samples_never_below_exact_and_min_max_exact(kind: str, seed: int, n: int) -> None:
    x = np.rint(sample(kind, seed, n)).astype(np.int64)
    h = hist_of(x)
    got = np.asarray(h.percentiles(PS))
    want = exact(x, PS)
    assert (got >= want).all() and (got <= want * (1 + 1 / 1024)).all()
    assert h.percentile(0) == x.min() and h.percentile(100) == x.max()


@given(st.lists(st.integers(0, 2047), min_size=1, max_size=300), st.floats(0, 100))
def test_small_values_are_exact(values: list[int], p: float) -> None:
    # below 2048 ns every integer has its own slot
    assert hist_of(values).percentile(p) == exact(np.array(values), [p])[0]


@SLOW
@given(KINDS, SEEDS, st.integers(2, 20_000))
def test_mean_and_stdev_close_to_numpy(kind: str, seed: int, n: int) -> None:
    x = np.rint(sample(kind, seed, n))
    h = hist_of(x)
    assert h.mean == pytest.approx(x.mean(), rel=1e-3)
    rms = float(np.sqrt(np.mean(x * x)))
    assert abs(h.stdev - x.std()) <= 1e-3 * rms


def test_percentiles_is_percentile_in_one_pass() -> None:
    x = sample("bimodal", 7, 5000)
    h = hist_of(x)
    ps = [99.0, 0.0, 50.0, 100.0, 12.5, 50.0]
    assert h.percentiles(ps) == [h.percentile(p) for p in ps]
    with pytest.raises(ValueError):
        h.percentile(100.5)
    with pytest.raises(ValueError):
        h.percentile(float("nan"))
    with pytest.raises(ValueError):
        h.percentiles([-1.0])


def test_empty() -> None:
    h = Histogram()
    assert h.is_empty and h.count == 0 and h.min == 0 and h.max == 0
    assert h.percentiles(PS) == [0] * len(PS) and h.mean == 0.0 and h.stdev == 0.0
    vals, cnt = h.nonzero()
    assert vals.size == 0 and cnt.size == 0
    h.record_many(np.array([], dtype=np.float64))
    assert h.is_empty
    assert Histogram.from_wire(h.to_wire()).equals(h)


def test_layout_constants() -> None:
    assert (Histogram.LOWEST, Histogram.HIGHEST, Histogram.SIGNIFICANT_DIGITS) == (
        1,
        3_600_000_000_000,
        3,
    )
    assert Histogram().counts.shape == (COUNTS_LEN,) == (33792,)


# -- recording -----------------------------------------------------------------


@given(st.lists(st.integers(-(2**40), 2**62), max_size=200))
def test_record_and_record_many_agree(values: list[int]) -> None:
    one = Histogram()
    for v in values:
        one.record(v)
    many = hist_of(np.array(values, dtype=np.int64))
    assert one.equals(many)
    assert many.count == len(values)
    assert many.overflow == sum(v > HIGHEST for v in values)
    if values:
        assert many.min == max(min(values), 0) and many.max == max(max(values), 0)


def test_floats_are_rounded_and_bad_floats_rejected_before_recording() -> None:
    h = hist_of([1.4, 1.6, 2.5, -3.0])
    assert h.count == 4 and h.min == 0 and h.max == 2
    assert h.percentiles([0, 50, 75, 100]) == [0, 1, 2, 2]
    before = state(h)
    for bad in ([1.0, float("nan")], [float("inf")], [5.0, -float("inf")]):
        with pytest.raises(ValueError):
            h.record_many(np.array(bad))
        assert state(h) == before
    with pytest.raises(ValueError):
        h.record(float("nan"))
    with pytest.raises(TypeError):
        h.record(True)
    assert state(h) == before


def test_negative_values_record_as_zero() -> None:
    h = hist_of(np.array([-5, -1, 10]))
    h.record(-7)
    assert h.count == 4 and h.min == 0 and h.percentile(50) == 0 and h.max == 10


def test_record_with_count() -> None:
    h = Histogram()
    h.record(1_000_000, count=3)
    h.record(5, count=0)
    assert h.count == 3 and h.min == h.max == 1_000_000
    with pytest.raises(ValueError):
        h.record(5, count=-1)


def test_overflow_is_counted_and_shown_in_max() -> None:
    h = hist_of(np.array([1_000, 2_000, 3_000], dtype=np.int64))
    h.record(HIGHEST)  # the highest trackable value is in range
    assert h.overflow == 0
    h.record_many(np.array([HIGHEST + 1, 10 * HIGHEST], dtype=np.int64))
    h.record(2**62)
    assert h.count == 7 and h.overflow == 3 and h.max == 2**62
    assert h.percentile(100) == 2**62
    assert h.percentile(40) == 3001  # rank 3: 3000's slot is [3000, 3001]
    assert HIGHEST <= h.percentile(50) < HIGHEST * 1.001  # rank 4: HIGHEST
    assert h.percentile(60) == 2**62  # rank 5: in overflow, shown as max
    # beyond int64: counted, max saturates at 2^63 - 1
    h.record(2**70)
    h.record_many(np.array([2**64 - 1], dtype=np.uint64))
    h.record_many(np.array([1e20]))
    assert h.count == 10 and h.overflow == 6 and h.max == 2**63 - 1
    assert Histogram.from_wire(h.to_wire()).equals(h)
    vals, cnt = h.nonzero()
    assert int(cnt.sum()) == 10 and int(vals[-1]) == 2**63 - 1 and int(cnt[-1]) == 6
    only = hist_of([HIGHEST * 2, HIGHEST * 3])
    assert only.percentiles([0, 50, 51, 100]) == [
        HIGHEST * 2,
        HIGHEST * 2,
        HIGHEST * 3,
        HIGHEST * 3,
    ]
    assert Histogram.from_wire(only.to_wire()).equals(only)


def test_nonzero_representatives() -> None:
    x = sample("lognormal", 3, 3000)
    h = hist_of(x)
    vals, cnt = h.nonzero()
    assert int(cnt.sum()) == h.count and (np.diff(vals) >= 0).all()
    assert vals[0] >= h.min and vals[-1] == h.max


# -- merging -------------------------------------------------------------------


@SLOW
@given(KINDS, SEEDS, SIZES, st.integers(1, 12), st.booleans())
def test_merge_of_random_splits_equals_whole(
    kind: str, seed: int, n: int, k: int, with_overflow: bool
) -> None:
    x = sample(kind, seed, n)
    if with_overflow:
        x = np.concatenate([x, [HIGHEST * 1.5, HIGHEST + 1]])
    rng = np.random.default_rng(seed)
    part = rng.integers(0, k, x.size)
    whole = hist_of(x)
    merged = Histogram()
    wired = Histogram()
    for i in range(k):
        piece = hist_of(x[part == i])
        merged.merge(piece)
        wired.add_wire(piece.to_wire())
    assert merged.same_counts(whole) and merged.equals(whole)
    assert wired.equals(whole)
    assert merged.percentiles(PS) == whole.percentiles(PS)


def test_copy_reset_merge_empty() -> None:
    h = hist_of(sample("pareto", 1, 500))
    c = h.copy()
    assert c.equals(h)
    c.record(5)
    assert not c.equals(h) and c.count == h.count + 1
    c.merge(Histogram())
    Histogram().merge(c)
    c.reset()
    assert c.is_empty and c.equals(Histogram())
    empty = Histogram()
    empty.merge(h)
    assert empty.equals(h)


# -- wire form -----------------------------------------------------------------


@st.composite
def histograms(draw: st.DrawFn) -> Histogram:
    h = hist_of(sample(draw(KINDS), draw(SEEDS), draw(st.integers(0, 3000))))
    for _ in range(draw(st.integers(0, 3))):
        h.record(draw(st.integers(0, 2 * HIGHEST)), count=draw(st.integers(1, 2**62 // 8)))
    return h


@settings(deadline=None, max_examples=100)
@given(histograms(), histograms())
def test_wire_round_trip_and_add_wire_equals_merge(a: Histogram, b: Histogram) -> None:
    wa = a.to_wire()
    assert type(wa) is list and len(wa) == len(WIRE_FIELDS) == 9
    assert [type(v) for v in wa] == [int, int, bytes, int, bytes, int, int, int, int]
    assert Histogram.from_wire(wa).equals(a)
    via_wire = b.copy()
    via_wire.add_wire(wa)
    via_merge = b.copy()
    via_merge.merge(a)
    assert via_wire.equals(via_merge)


def test_wire_widths() -> None:
    h = hist_of([1_000, 2_000])
    w = named(h.to_wire())
    assert (w["iw"], w["cw"], w["n"], len(w["i"]), len(w["c"])) == (2, 1, 2, 4, 2)
    h.record(1_000, count=300)
    assert named(h.to_wire())["cw"] == 2
    h.record(1_000, count=2**40)
    assert named(h.to_wire())["cw"] == 8
    four = named(h.to_wire())
    idx = np.cumsum(np.frombuffer(four["i"], "<u2"))
    four["iw"], four["i"] = 4, np.diff(idx, prepend=0).astype("<u4").tobytes()
    assert Histogram.from_wire(listed(four)).equals(h)  # uint32 deltas are read too


def named(wire: list[Any]) -> dict[str, Any]:
    """A wire form's fields by name (the wire itself is a list, in WIRE_FIELDS order)."""
    assert len(wire) == len(WIRE_FIELDS)
    return dict(zip(WIRE_FIELDS, wire, strict=True))


def listed(fields: dict[str, Any]) -> list[Any]:
    """Named fields back to a wire list; a missing one is left out, extra ones go last."""
    extra = [v for k, v in fields.items() if k not in WIRE_FIELDS]
    return [fields[k] for k in WIRE_FIELDS if k in fields] + extra


def valid_wire() -> dict[str, Any]:
    """A valid wire form, by field name (`listed` makes it a wire list)."""
    h = hist_of(np.array([1_000, 1_000, 5_000, 70_000, 9_000_000_000], dtype=np.int64))
    h.record(2 * HIGHEST)
    return named(h.to_wire())


def target() -> Histogram:
    return hist_of(sample("lognormal", 11, 300))


def rejects(d: Any) -> None:
    t = target()
    before = state(t)
    with pytest.raises(HistogramWireError):
        t.add_wire(d)
    assert state(t) == before
    with pytest.raises(HistogramWireError):
        Histogram.from_wire(d)


def with_(**changes: Any) -> list[Any]:
    d: dict[str, Any] = dict(valid_wire())
    d.update(changes)
    return listed(d)


def test_malformed_wire_examples() -> None:
    w = valid_wire()
    deltas = np.frombuffer(w["i"], "<u2")
    for bad in [
        None,
        [],
        "x",
        b"",
        42,
        {},
        w,  # a map of the right fields is not the wire form
        tuple(listed(w)[:3]),
        listed({k: v for k, v in w.items() if k != "max"}),
        listed({**w, "extra": 1}),
        listed(w)[::-1],
        with_(n=w["n"] + 1),
        with_(n=10**12),
        with_(n=-1),
        with_(n=True),
        with_(count=np.int64(w["count"])),
        with_(count=float(w["count"])),
        with_(iw=3),
        with_(cw=16),
        with_(iw="2"),
        with_(i=w["i"][:-1]),
        with_(c=w["c"][:-1]),
        with_(i=bytearray(w["i"])),
        with_(c=memoryview(w["c"])),
        with_(i="abc"),
        with_(i=np.concatenate([deltas[:1], [0], deltas[2:]]).astype("<u2").tobytes()),
        with_(i=np.concatenate([deltas[:-1], [60000]]).astype("<u2").tobytes()),
        with_(c=b"\x00" + w["c"][1:]),
        with_(count=w["count"] + 1),
        with_(count=2**63),
        with_(overflow=0),
        with_(overflow=w["count"] + 1),
        with_(min=w["min"] + 5_000),
        with_(min=-1),
        with_(max=HIGHEST),
        with_(max=2**64),
        with_(min=w["max"] + 1),
        listed({**named(Histogram().to_wire()), "max": 1}),
        listed({**named(Histogram().to_wire()), "count": 1, "overflow": 1, "min": 5, "max": 5}),
    ]:
        rejects(bad)


def test_merged_total_may_not_exceed_int63() -> None:
    big = Histogram()
    big.record(1_000, count=2**62)
    t = big.copy()
    t.record(1_000, count=2**62 - 1)
    rejects_into = t.copy()
    with pytest.raises(HistogramWireError):
        rejects_into.add_wire(big.to_wire())
    assert rejects_into.equals(t)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(WIRE_FIELDS), st.text(max_size=3)), ANY_VALUE))
def test_random_dicts_are_rejected(d: dict[Any, Any]) -> None:
    rejects(d)


@settings(max_examples=300, deadline=None)
@given(st.lists(ANY_VALUE, max_size=12))
def test_random_lists_only_raise_wire_errors(values: list[Any]) -> None:
    check_only_wire_errors(values)


def check_only_wire_errors(d: Any) -> None:
    """Malformed: HistogramWireError and the target untouched; otherwise a merge."""
    t = target()
    before = state(t)
    try:
        t.add_wire(d)
    except HistogramWireError:
        assert state(t) == before
        return
    expect = target()
    expect.merge(Histogram.from_wire(d))
    assert t.equals(expect)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_wire_forms_only_raise_wire_errors(data: st.DataObject) -> None:
    d: dict[str, Any] = dict(valid_wire())
    damage(data, d, data.draw(st.sampled_from(WIRE_FIELDS)))
    check_only_wire_errors(listed(d))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 40),
    iw=st.sampled_from([1, 2, 4, 8]),
    cw=st.sampled_from([0, 1, 2, 4, 8]),
    i=st.binary(max_size=200),
    c=st.binary(max_size=200),
    count=st.integers(0, 2**64),
    overflow=st.integers(0, 50),
    mn=st.integers(0, 2**50),
    mx=st.integers(0, 2**50),
)
def test_structured_garbage_only_raises_wire_errors(
    n: int, iw: int, cw: int, i: bytes, c: bytes, count: int, overflow: int, mn: int, mx: int
) -> None:
    check_only_wire_errors([n, iw, i, cw, c, count, overflow, mn, mx])
