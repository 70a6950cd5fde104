# Interoperability with the reference `hdrhistogram` package: same layout index
# for index, our V2 encoding read by it (and byte-identical to its own), its
# encoding read by us, and .hlog interval logs it reads back.
from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader, HistogramLogWriter
from hypothesis import given, settings
from hypothesis import strategies as st

from loadctl.protocol.hdr_log import (
    decode_v2,
    load_interval_log,
    read_interval_log,
    write_interval_log,
)
from loadctl.protocol.histogram import (
    COUNTS_LEN,
    SLOT_HIGHEST,
    SLOT_LOWEST,
    Histogram,
    HistogramWireError,
    index_of,
    indices_of,
)

HIGHEST = Histogram.HIGHEST
PS = [0.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]


def reference(values: npt.NDArray[np.int64]) -> HdrHistogram:
    ref = HdrHistogram(1, HIGHEST, 3)
    for v in values.tolist():
        assert ref.record_value(v)
    return ref


def ref_counts(h: HdrHistogram) -> npt.NDArray[np.uint64]:
    return np.array([h.get_count_at_index(i) for i in range(h.counts_len)], dtype=np.uint64)


def latencies(seed: int, n: int) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(rng.uniform(np.log(1e4), np.log(1e10)), rng.uniform(0.1, 3.0), n)
    return np.rint(np.clip(x, 0, HIGHEST)).astype(np.int64)


def test_layout_is_hdrhistograms() -> None:
    ref = HdrHistogram(1, HIGHEST, 3)
    assert (ref.counts_len, ref.sub_bucket_count, ref.bucket_count) == (COUNTS_LEN, 2048, 32)
    rng = np.random.default_rng(0)
    edges = [0, 1, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 10**6, HIGHEST - 1, HIGHEST]
    values = np.concatenate([rng.integers(0, HIGHEST + 1, 5000), np.array(edges)])
    want = [ref._counts_index_for(v) for v in values.tolist()]
    assert [index_of(v) for v in values.tolist()] == want
    assert indices_of(values.astype(np.int64)).tolist() == want
    for i in range(COUNTS_LEN):
        low = ref.get_value_from_index(i)
        assert SLOT_LOWEST[i] == ref.get_lowest_equivalent_value(low) == low
        assert SLOT_HIGHEST[i] == ref.get_highest_equivalent_value(low)


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000))
def test_our_encoding_is_read_by_hdrhistogram(seed: int, n: int) -> None:
    values = latencies(seed, n)
    ours = Histogram()
    ours.record_many(values)
    ref = reference(values)
    encoded = ours.to_hdr_v2()
    assert encoded == ref.encode()  # byte for byte, zlib and all
    decoded = HdrHistogram.decode(encoded)
    assert np.array_equal(ref_counts(decoded), ours.counts)
    assert decoded.get_total_count() == n
    got = decoded.get_percentile_to_value_dict(PS)
    assert got == ref.get_percentile_to_value_dict(PS)
    for p in (50.0, 99.9):
        assert decoded.get_value_at_percentile(p) == ref.get_value_at_percentile(p)
    if n:
        assert decoded.get_max_value() == ref.get_max_value()
        assert decoded.get_min_value() == ref.get_min_value()


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000))
def test_hdrhistogram_encoding_is_read_by_us(seed: int, n: int) -> None:
    values = latencies(seed, n)
    ref = reference(values)
    ours = Histogram.from_hdr_v2(ref.encode())
    assert np.array_equal(ours.counts, ref_counts(ref))
    assert ours.count == n and ours.overflow == 0
    assert ours.min == (ref.get_min_value() if n else 0)
    assert ours.max == (min(ref.get_max_value(), HIGHEST) if n else 0)
    assert Histogram.from_hdr_v2(ref.encode().decode("ascii")).same_counts(ours)
    assert Histogram.from_wire(ours.to_wire()).equals(ours)


def test_big_counts_and_overflow_survive_the_v2_round_trip() -> None:
    h = Histogram()
    h.record(1_500, count=2**60)  # a 9-byte varint
    h.record(3_000_000, count=2**40)
    h.record(7)
    back = Histogram.from_hdr_v2(h.to_hdr_v2())
    assert back.same_counts(h) and back.min == 7
    decoded = HdrHistogram.decode(h.to_hdr_v2())
    assert decoded.get_total_count() == h.count
    assert decoded.get_count_at_index(index_of(1_500)) == 2**60
    h.record(10 * HIGHEST, count=3)
    back = Histogram.from_hdr_v2(h.to_hdr_v2())
    assert back.count == h.count and back.overflow == 3 and back.max > HIGHEST
    assert HdrHistogram.decode(h.to_hdr_v2()).get_total_count() == h.count


def test_other_layouts_are_rebucketed() -> None:
    values = np.maximum(latencies(5, 2000), 10**6)
    # a narrower range with the same digits has the same slots: identical counts
    narrow = HdrHistogram(1, 60_000_000_000, 3)
    coarse = HdrHistogram(1000, HIGHEST, 2)
    for v in values.tolist():
        narrow.record_value(min(v, 60_000_000_000))
        coarse.record_value(v)
    same = Histogram()
    same.record_many(np.minimum(values, 60_000_000_000))
    assert Histogram.from_hdr_v2(narrow.encode()).same_counts(same)
    fine = HdrHistogram(1, HIGHEST, 4)  # several of its slots fall in one of ours
    for v in values.tolist():
        fine.record_value(v)
    exact = Histogram()
    exact.record_many(values)
    for theirs, rel in ((coarse, 0.01), (fine, 2e-3)):  # 2 digits: slots < 1 % wide
        ours = Histogram.from_hdr_v2(theirs.encode())
        assert ours.count == 2000
        for got, want in zip(ours.percentiles(PS), exact.percentiles(PS), strict=True):
            assert got == pytest.approx(want, rel=rel)
        assert Histogram.from_wire(ours.to_wire()).equals(ours)


def test_empty_v2() -> None:
    empty = Histogram()
    assert empty.to_hdr_v2() == HdrHistogram(1, HIGHEST, 3).encode()
    assert Histogram.from_hdr_v2(empty.to_hdr_v2()).equals(empty)


def raw_v2(payload: bytes) -> bytes:
    """The V2 compressed form without its base64 wrapping."""
    compressed = zlib.compress(payload)
    return struct.pack(">II", 0x1C849314, len(compressed)) + compressed


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_malformed_v2_only_raises_wire_errors(data: st.DataObject) -> None:
    h = Histogram()
    h.record_many(latencies(data.draw(st.integers(0, 99)), 200))
    good = h.to_hdr_v2()
    raw = zlib.decompress(base64.b64decode(good)[8:])
    how = data.draw(st.sampled_from(["bytes", "b64", "cut", "flip", "payload", "varints"]))
    bad: Any
    if how == "bytes":
        bad = data.draw(st.binary(max_size=100))
    elif how == "b64":
        bad = data.draw(st.text(max_size=100))
    elif how == "cut":
        bad = good[: data.draw(st.integers(0, len(good) - 1))]
    elif how == "flip":
        pos = data.draw(st.integers(0, len(good) - 1))
        bad = good[:pos] + bytes([good[pos] ^ data.draw(st.integers(1, 255))]) + good[pos + 1 :]
    elif how == "payload":  # a re-compressed payload with a damaged header or stream
        pos = data.draw(st.integers(0, len(raw) - 1))
        flipped = raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255))]) + raw[pos + 1 :]
        bad = raw_v2(flipped)
    else:  # arbitrary varints after a valid header
        varints = data.draw(st.binary(max_size=4096))
        bad = raw_v2(raw[:4] + struct.pack(">I", len(varints)) + raw[8:40] + varints)
    try:
        h = Histogram.from_hdr_v2(bad)
    except HistogramWireError:
        return
    # whatever decodes is a consistent histogram: its wire form validates
    assert Histogram.from_wire(h.to_wire()).equals(h)
    assert int(h.nonzero()[1].sum()) == h.count


def test_malformed_v2_examples() -> None:
    for bad in [b"", "HISTF", b"not base64 !!", b"\x1c\x84\x93\x14\0\0\0\0", 42, None]:
        with pytest.raises(HistogramWireError):
            Histogram.from_hdr_v2(bad)  # type: ignore[arg-type]
    bomb = raw_v2(bytes(40) + bytes(10_000_000))
    with pytest.raises(HistogramWireError):
        decode_v2(bomb)


# -- interval logs -------------------------------------------------------------


def intervals(n: int) -> list[tuple[float, float, Histogram]]:
    out = []
    for i in range(n):
        h = Histogram()
        h.record_many(latencies(100 + i, 50 * i))  # the first interval is empty
        out.append((i * 1.0, 1.0, h))
    return out


def test_hlog_is_read_by_hdrhistogram(tmp_path: Path) -> None:
    path = tmp_path / "run.hlog"
    start = 1_700_000_000.25
    ivs = intervals(6)
    write_interval_log(path, start, ivs)
    reader = HistogramLogReader(str(path), HdrHistogram(1, HIGHEST, 3))
    seen = []
    while (got := reader.get_next_interval_histogram()) is not None:
        seen.append(got)
    reader.close()
    assert len(seen) == len(ivs)
    assert reader.get_start_time_sec() == pytest.approx(start, abs=1e-3)
    for (offset, _length, h), theirs in zip(ivs, seen, strict=True):
        assert np.array_equal(ref_counts(theirs), h.counts)
        assert theirs.get_total_count() == h.count
        assert theirs.get_start_time_stamp() == pytest.approx((start + offset) * 1000, abs=1)
    total = HdrHistogram(1, HIGHEST, 3)
    reader = HistogramLogReader(str(path), total)
    while reader.add_next_interval_histogram() is not None:
        pass
    reader.close()
    merged = Histogram()
    for _, _, h in ivs:
        merged.merge(h)
    assert total.get_total_count() == merged.count == sum(50 * i for i in range(6))
    assert np.array_equal(ref_counts(total), merged.counts)


def test_hlog_round_trip_with_tag_and_stream(tmp_path: Path) -> None:
    ivs = intervals(4)
    buf = io.StringIO()
    write_interval_log(buf, 1_600_000_000.0, ivs, max_value_unit_ratio=1e3, tag="GET_/api")
    text = buf.getvalue()
    assert text.startswith("#[Logged with loadctl]\n#[Histogram log format version 1.3]\n")
    assert "#[StartTime: 1600000000.000 (seconds since epoch), " in text
    assert "#[BaseTime: 1600000000.000 (seconds since epoch)]" in text
    last = text.splitlines()[-1].split(",")
    assert last[0] == "Tag=GET_/api" and last[1:3] == ["3.000", "1.000"]
    assert float(last[3]) == pytest.approx(ivs[-1][2].max / 1e3, abs=1e-3)
    log = load_interval_log(io.StringIO(text))
    assert log.start_time_s == 1_600_000_000.0
    assert [iv.tag for iv in log.intervals] == ["GET_/api"] * 4
    back = read_interval_log(io.StringIO(text))
    for (s0, l0, h0), (s1, l1, h1) in zip(ivs, back, strict=True):
        assert (s0, l0) == (s1, l1) and h1.same_counts(h0)
    path = tmp_path / "tagged.hlog"
    path.write_text(text)
    reader = HistogramLogReader(str(path), HdrHistogram(1, HIGHEST, 3))
    first = reader.get_next_interval_histogram()
    assert first is not None and first.get_tag() == "GET_/api"
    reader.close()
    with pytest.raises(ValueError):
        write_interval_log(io.StringIO(), 0.0, [], tag="a,b")
    with pytest.raises(ValueError):
        write_interval_log(io.StringIO(), 0.0, [(-1.0, 1.0, Histogram())])


def test_we_read_the_packages_log_writer(tmp_path: Path) -> None:
    path = tmp_path / "theirs.hlog"
    ref = HdrHistogram(1, HIGHEST, 3)
    for v in latencies(9, 500).tolist():
        ref.record_value(v)
    with open(path, "w") as f:
        writer = HistogramLogWriter(f)
        writer.output_comment("[written by hdrhistogram]")
        writer.output_legend()
        writer.output_interval_histogram(ref, 1_500_000_010.0, 1_500_000_011.5)
    ((start, length, h),) = read_interval_log(path)
    # no StartTime line: the first interval's time is the start
    assert (start, length) == (0.0, pytest.approx(1.5))
    assert np.array_equal(h.counts, ref_counts(ref))


def test_bad_log_lines_name_the_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        read_interval_log(io.StringIO("#[StartTime: 1.0 (x)]\n0.0,1.0,2.0\n"))
    with pytest.raises(HistogramWireError, match="line 1"):
        read_interval_log(io.StringIO("0.0,1.0,2.0,HISTFAAAnotreally\n"))
