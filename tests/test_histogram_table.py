# The table form of a snapshot's histograms (protocol 3): it round trips, many
# tables decode together into exactly what each histogram's own wire form
# decodes to, and the table decoder accepts nothing that decode_wire would
# reject: a mutated table either raises HistogramWireError, and nothing else, or
# decodes into histograms that decode_wire accepts too, slot for slot. Every test
# runs twice: through the compiled kernel and through numpy (tests/test_table_kernel.py
# holds the kernel against numpy, fault for fault).
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import damage
from table_kernel_required import kernel_or_skip

from loadctl.protocol import histogram_table
from loadctl.protocol.histogram import (
    COUNTS_LEN,
    HIGHEST,
    SLOT_LOWEST,
    Histogram,
    HistogramWireError,
    WireBatch,
    add_batch,
    decode_wire,
    index_of,
)
from loadctl.protocol.histogram_table import TABLE_FIELDS, decode_tables, to_table

SEEDS = st.integers(0, 2**32 - 1)


@pytest.fixture(autouse=True, scope="module", params=["kernel", "numpy"])
def decoder(request: pytest.FixtureRequest) -> Iterator[str]:
    """decode_tables and add_batch through the compiled kernel, then through numpy."""
    built = histogram_table.KERNEL
    if request.param == "kernel":
        kernel_or_skip()
    else:
        histogram_table.KERNEL = None
    try:
        yield request.param
    finally:
        histogram_table.KERNEL = built


@st.composite
def histograms(draw: st.DrawFn) -> Histogram:
    """Empty, overflow-only, index-0, far-apart and dense histograms, with slot
    counts below 2^32 (a snapshot's limit) and any overflow."""
    h = Histogram()
    rng = np.random.default_rng(draw(SEEDS))
    n = draw(st.sampled_from([0, 1, 5, 300, 3000]))
    if n:
        spread = draw(st.sampled_from([0.01, 0.5, 3.0]))
        h.record_many(np.clip(rng.lognormal(np.log(1e7), spread, n), 0, HIGHEST))
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.sampled_from([0, 1, 2047, 2048, HIGHEST, HIGHEST + 1, 10**15]))
        h.record(value, count=draw(st.integers(1, 2**31)))
    return h


def parts_of(batch: WireBatch, k: int) -> tuple[list[int], list[int], tuple[int, ...]]:
    idx, cnt, *scalars = batch.parts(k)
    return idx.tolist(), cnt.tolist(), tuple(scalars)


def wire_parts(h: Histogram) -> tuple[list[int], list[int], tuple[int, ...]]:
    idx, cnt, *scalars = decode_wire(h.to_wire())
    return idx.tolist(), cnt.tolist(), tuple(scalars)


@settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(histograms(), max_size=7), min_size=1, max_size=4))
def test_tables_decode_together_to_each_histograms_wire_form(
    tables: list[list[Histogram]],
) -> None:
    wires = [to_table(t) for t in tables]
    for wire in wires:
        assert len(wire) == len(TABLE_FIELDS) == 8
        assert [type(v) for v in wire] == [int, bytes, bytes, bytes, bytes, bytes, int, bytes]
    batch = decode_tables(wires, [len(t) for t in tables])
    flat = [h for t in tables for h in t]
    assert len(batch) == len(flat)
    for k, h in enumerate(flat):
        assert parts_of(batch, k) == wire_parts(h)


def test_merge_into_rows_equals_histogram_merge() -> None:
    rng = np.random.default_rng(3)
    snapshots = [
        [Histogram() for _ in range(3)] for _ in range(5)
    ]  # five agents' snapshots of three histograms each
    for snapshot in snapshots:
        for h in snapshot:
            h.record_many(rng.lognormal(np.log(rng.uniform(1e5, 1e9)), 1.5, 2000))
        snapshot[0].record(0, count=7)  # index 0 and a far gap: wide deltas
        snapshot[1].record(HIGHEST + 5, count=3)  # overflow
    batch = decode_tables([to_table(s) for s in snapshots], [3] * len(snapshots))
    block = np.zeros((3, COUNTS_LEN), dtype=np.uint64)
    targets = [Histogram.over(block[r]) for r in range(3)]
    add_batch(block, [0, 1, 2] * 5, targets * 5, batch)
    for r in range(3):
        want = Histogram()
        for snapshot in snapshots:
            want.merge(snapshot[r])
        assert targets[r].equals(want)


def test_one_byte_deltas_and_escapes() -> None:
    h = Histogram()
    h.record(0)  # first index 0: an escaped zero delta
    h.record(100)  # delta 100: one byte
    h.record(10**9)  # a far slot: escaped
    h.record(10**9 + 2**20)
    _, ns, _, d, ep, ev, cw, c = to_table([h])
    assert np.frombuffer(ns, "<u2").tolist() == [4]
    assert len(d) == 4 and len(c) == 4 and cw == 1
    assert np.frombuffer(ep, "<u4").tolist() == [0, 2]
    assert np.frombuffer(ev, "<u2").tolist() == [0, index_of(10**9) - index_of(100)]
    assert d[0] == 0 and d[1] == 100 and d[2] == 0 and 0 < d[3] < 256
    assert parts_of(decode_tables([to_table([h])], [1]), 0) == wire_parts(h)


def test_count_width_follows_the_largest_count_and_stops_at_four_bytes() -> None:
    h = Histogram()
    h.record(1_000, count=200)
    assert to_table([h])[6] == 1
    h.record(1_000, count=300)
    assert to_table([h])[6] == 2
    h.record(1_000, count=2**20)
    assert to_table([h])[6] == 4
    h.record(1_000, count=2**32)
    with pytest.raises(ValueError, match="2\\^32"):
        to_table([h])


def test_tables_of_different_count_widths_decode_together() -> None:
    small, large = Histogram(), Histogram()
    small.record_many([1_000, 5_000, 9_000])
    large.record(2_000, count=70_000)
    large.record(3_000_000)
    wires = [to_table([small]), to_table([large]), to_table([])]
    assert (wires[0][6], wires[1][6]) == (1, 4)
    batch = decode_tables(wires, [1, 1, 0])
    assert [parts_of(batch, k) for k in range(2)] == [wire_parts(small), wire_parts(large)]


def valid_tables() -> list[list[Any]]:
    rng = np.random.default_rng(11)
    tables = []
    for _ in range(2):
        hs = [Histogram() for _ in range(3)]
        for h in hs:
            h.record_many(rng.lognormal(np.log(2e7), 0.8, 200))
        hs[2].record(HIGHEST * 2)
        tables.append(to_table(hs))
    return tables


def check_only_wire_errors(tables: list[Any], sizes: list[int]) -> None:
    """Raises HistogramWireError, or decodes to histograms decode_wire accepts too."""
    try:
        batch = decode_tables(tables, sizes)
    except HistogramWireError:
        return
    for k in range(len(batch)):
        idx, cnt, count, overflow, mn, mx = batch.parts(k)
        deltas = np.diff(idx, prepend=0).astype("<u2").tobytes()
        wire = [idx.size, 2, deltas, 8, cnt.astype("<u8").tobytes(), count, overflow, mn, mx]
        again = decode_wire(wire)  # raises if the table let through what it must not
        assert again[0].tolist() == idx.tolist() and again[1].tolist() == cnt.tolist()


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_tables_only_raise_wire_errors(data: st.DataObject) -> None:
    tables = valid_tables()
    table = tables[data.draw(st.integers(0, len(tables) - 1))]
    damage(data, table, data.draw(st.integers(0, len(TABLE_FIELDS) - 1)))
    check_only_wire_errors(tables, [3, 3])


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(0, 3),
    ns=st.binary(max_size=8),
    sc=st.binary(max_size=100),
    d=st.binary(max_size=12),
    ep=st.binary(max_size=12),
    ev=st.binary(max_size=6),
    cw=st.sampled_from([0, 1, 2, 3, 4, 8]),
    c=st.binary(max_size=24),
)
def test_structured_garbage_only_raises_wire_errors(
    h: int, ns: bytes, sc: bytes, d: bytes, ep: bytes, ev: bytes, cw: int, c: bytes
) -> None:
    check_only_wire_errors([[h, ns, sc, d, ep, ev, cw, c]], [h])


def test_a_wrong_number_of_histograms_is_refused() -> None:
    with pytest.raises(HistogramWireError, match="expected 6 histograms"):
        decode_tables([to_table([Histogram()] * 3)], [6])
    with pytest.raises(HistogramWireError, match="fields"):
        decode_tables([{"h": 0}], [0])


# -- each rule, one malformed histogram at a time, against decode_wire ------------------

Raw = tuple[list[int], list[int], int, int, int, int]  # idx, counts, count, overflow, min, max


def raw_table(histograms: list[Raw]) -> list[Any]:
    """A table of exactly these fields, valid or not (what a hostile agent could send)."""
    ns, sc, deltas, counts = [], [], [], []
    for idx, cnt, count, overflow, mn, mx in histograms:
        ns.append(len(idx))
        sc += [count, overflow, mn, mx]
        deltas += np.diff(np.asarray(idx, dtype=np.int64), prepend=0).tolist()
        counts += cnt
    d = np.asarray(deltas, dtype=np.int64)
    wide = np.flatnonzero((d == 0) | (d > 255))
    narrow = d.astype(np.uint8)
    narrow[wide] = 0
    return [
        len(histograms),
        np.asarray(ns, dtype="<u2").tobytes(),
        np.asarray(sc, dtype="<i8").tobytes(),
        narrow.tobytes(),
        wide.astype("<u4").tobytes(),
        d[wide].astype("<u2").tobytes(),
        4,
        np.asarray(counts, dtype="<u4").tobytes(),
    ]


def raw_wire(idx: list[int], cnt: list[int], *scalars: int) -> list[Any]:
    deltas = np.diff(np.asarray(idx, dtype=np.int64), prepend=0).astype("<u2").tobytes()
    return [len(idx), 2, deltas, 4, np.asarray(cnt, dtype="<u4").tobytes(), *scalars]


def low(index: int) -> int:
    return int(SLOT_LOWEST[index])


GOOD: Raw = ([1000, 1500, 1501], [1, 2, 3], 6, 0, low(1000), low(1501))
BAD: dict[str, Raw] = {
    "repeated index": ([1000, 1500, 1500], [1, 2, 3], 6, 0, low(1000), low(1500)),
    "repeated index 0": ([0, 0], [1, 2], 3, 0, 0, 0),
    "index out of range": ([1000, COUNTS_LEN], [1, 2], 3, 0, low(1000), low(1000)),
    "index out of range, overflow": ([1000, COUNTS_LEN], [1, 2], 4, 1, low(1000), HIGHEST + 1),
    "zero count": ([1000, 1500, 1501], [1, 0, 5], 6, 0, low(1000), low(1501)),
    "counts do not add up": ([1000, 1500, 1501], [1, 2, 3], 7, 0, low(1000), low(1501)),
    "min not in the first slot": ([1000, 1500, 1501], [1, 2, 3], 6, 0, low(1500), low(1501)),
    "max not in the last slot": ([1000, 1500, 1501], [1, 2, 3], 6, 0, low(1000), low(1500)),
    "overflow, max in range": ([1000, 1500, 1501], [1, 2, 3], 7, 1, low(1000), low(1501)),
    "max above, no overflow": ([1000, 1500, 1501], [1, 2, 3], 6, 0, low(1000), HIGHEST + 1),
    "min above the range": ([1000], [1], 2, 1, HIGHEST + 1, HIGHEST + 2),
    "empty, max not 0": ([], [], 0, 0, 0, 5),
    "overflow only, min in range": ([], [], 3, 3, 5, HIGHEST + 1),
    "empty, count not overflow": ([], [], 3, 2, HIGHEST + 1, HIGHEST + 1),
    "overflow above count": ([1000], [1], 1, 2, low(1000), HIGHEST + 1),
    "min above max": ([20000], [1], 1, 0, low(20000) + 1, low(20000)),  # a wide slot
    "negative min": ([1000], [1], 1, 0, -1, low(1000)),
}


def test_the_raw_encoders_agree_on_a_valid_histogram() -> None:
    batch = decode_tables([raw_table([GOOD, GOOD])], [2])
    want = decode_wire(raw_wire(*GOOD[:2], *GOOD[2:]))
    for k in range(2):
        assert parts_of(batch, k) == (want[0].tolist(), want[1].tolist(), tuple(want[2:]))


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_rule_is_enforced_like_decode_wire(case: str) -> None:
    bad = BAD[case]
    with pytest.raises(HistogramWireError):
        decode_wire(raw_wire(*bad[:2], *bad[2:]))
    for histograms in ([bad], [GOOD, bad], [bad, GOOD]):
        with pytest.raises(HistogramWireError):
            decode_tables([raw_table(histograms)], [len(histograms)])
    with pytest.raises(HistogramWireError):  # in the second of two tables
        decode_tables([raw_table([GOOD]), raw_table([GOOD, bad])], [1, 2])


def test_escape_positions_must_match_the_zeros_of_d() -> None:
    table = raw_table([GOOD])
    ok = decode_tables([table], [1])
    assert parts_of(ok, 0)[0] == GOOD[0]
    no_escape = [*table]
    no_escape[4], no_escape[5] = b"", b""  # 'd' keeps its 0 for slot 1000
    unordered = raw_table([([1000, 1300, 1601], [1, 2, 3], 6, 0, low(1000), low(1601))])
    ep = np.frombuffer(unordered[4], "<u4")
    unordered[4] = ep[::-1].astype("<u4").tobytes()
    outside = [*table]
    outside[4] = np.asarray([7], dtype="<u4").tobytes()
    odd = [*table]
    odd[4], odd[5] = b"\x00\x00", b"\x07"  # half an entry: 2 bytes of position, 1 of delta
    for bad in (no_escape, unordered, outside, odd):
        with pytest.raises(HistogramWireError):
            decode_tables([bad], [1])
