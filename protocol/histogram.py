# Latency histogram: HdrHistogram's log-linear layout over integer nanoseconds.
#
# Layout. A value v is stored in bucket b = max(bit_length(v) - 11, 0) at
# sub-bucket v >> b, i.e. at counts index (b << 10) + (v >> b). Below 2048 every
# integer has its own slot (width 1); above, each power-of-two range
# [2^k, 2^(k+1)) is split into 1024 slots of width 2^(k-10). This is exactly
# HdrHistogram(lowest=1, highest=3_600_000_000_000, significant_figures=3):
# unit_magnitude 0, sub_bucket_count 2048 (the smallest power of two >= 2 * 10^3),
# 32 buckets, 33 * 1024 = 33792 counts, index for index the same array as the
# `hdrhistogram` package, so its V2 encoding is ours too.
#
# Why <= 0.1 % relative error: a slot of width w = 2^b only exists for values
# v >= 1024 * w, so any two values sharing a slot differ by less than
# w / v <= 1 / 1024 = 0.098 % of either. A percentile reports the highest value
# of the slot holding the requested rank (clamped to the exact max), which is
# never below the true sample and less than 0.1 % above it; rank 1 and rank n
# report the exact min and max, which are tracked outside the slots.
#
# Why merge is exact: the slot of a value depends only on the value, never on
# what else was recorded, so recording the union of two sample sets gives the
# element-wise sum of their count arrays. Merging (of histograms or of wire
# forms) is therefore integer addition; min, max and the overflow count (values
# above HIGHEST, kept outside the array so nothing is dropped) combine exactly.
#
# Wire form (to_wire / add_wire): sparse, for msgpack snapshots. Keys:
#   n         number of non-empty slots
#   iw, i     index width in bytes (2 = '<u2', 4 = '<u4') and the slot indices,
#             delta encoded (first delta is the first index), little endian
#   cw, c     count width in bytes (1, 2, 4 or 8) and the counts, little endian
#   count     total count including overflow; overflow; min; max (exact values)
# Decoding validates every field before touching the target histogram and raises
# HistogramWireError (a ValueError) and nothing else on malformed input.
from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from itertools import accumulate, chain, compress, groupby
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "COUNTS_LEN",
    "SLOT_HIGHEST",
    "SLOT_LOWEST",
    "SLOT_MIDDLE",
    "Histogram",
    "HistogramWireError",
    "WireBatch",
    "add_batch",
    "decode_wires",
    "index_of",
    "indices_of",
]

LOWEST = 1
HIGHEST = 3_600_000_000_000
SIGNIFICANT_DIGITS = 3
_SUB_HALF_MAG = 10  # log2(sub_bucket_count / 2)
_SUB_BITS = _SUB_HALF_MAG + 1  # bit length of sub_bucket_count - 1 (2047)
_SUB_MASK = (1 << _SUB_BITS) - 1
_BUCKET_COUNT = 32
COUNTS_LEN = (_BUCKET_COUNT + 1) << _SUB_HALF_MAG  # 33792
_MAX_INT = (1 << 63) - 1
_ADD_AT_LIMIT = 2048  # below this many values, np.add.at beats a bincount


def _slot_tables() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    i = np.arange(COUNTS_LEN, dtype=np.int64)
    shift = np.maximum((i >> _SUB_HALF_MAG) - 1, 0)
    lowest = np.where(i < 2 << _SUB_HALF_MAG, i, ((i & 1023) + 1024) << shift)
    width = np.int64(1) << shift
    return lowest, lowest + width - 1, lowest + (width >> 1)


# Per slot: lowest value, highest value, middle value (HdrHistogram's
# "median equivalent value", used for mean and stdev).
SLOT_LOWEST, SLOT_HIGHEST, SLOT_MIDDLE = _slot_tables()


class HistogramWireError(ValueError):
    """A wire or HdrHistogram encoding is malformed; the target is unchanged."""


def index_of(value: int) -> int:
    """Counts index of an in-range value (0 <= value <= HIGHEST)."""
    if value <= _SUB_MASK:
        return value
    b = value.bit_length() - _SUB_BITS
    return (b << _SUB_HALF_MAG) + (value >> b)


def indices_of(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Vectorised index_of for an int64 array of in-range values."""
    # frexp's exponent is the exact bit length: values < 2^53 are exact floats.
    b = np.frexp(values | _SUB_MASK)[1] - _SUB_BITS
    out: npt.NDArray[np.int64] = (b << _SUB_HALF_MAG) + (values >> b)
    return out


def _exact_sum(c: npt.NDArray[Any]) -> int:
    """Sum of at most COUNTS_LEN unsigned counts without uint64 wrap-around."""
    if c.dtype.itemsize < 8:
        return int(c.sum(dtype=np.uint64))
    c64 = c.astype(np.uint64, copy=False)
    hi = int((c64 >> np.uint64(32)).sum(dtype=np.uint64))
    lo = int((c64 & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64))
    return (hi << 32) + lo


def _coerce_scalar(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("histogram values are numbers of nanoseconds, not bool")
    if isinstance(value, int | np.integer):
        return int(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"cannot record a non-finite value: {value!r}")
    return round(f)


_WIRE_KEYS = frozenset(("n", "iw", "i", "cw", "c", "count", "overflow", "min", "max"))
_INDEX_DTYPES: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_COUNT_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


class Histogram:
    """Mergeable latency histogram of integer nanoseconds (see module comment)."""

    LOWEST = LOWEST
    HIGHEST = HIGHEST
    SIGNIFICANT_DIGITS = SIGNIFICANT_DIGITS

    __slots__ = ("_count", "_counts", "_max", "_min", "_overflow")

    def __init__(self) -> None:
        self._counts: npt.NDArray[np.uint64] = np.zeros(COUNTS_LEN, dtype=np.uint64)
        self._count = 0  # includes overflow
        self._overflow = 0
        self._min = 0
        self._max = 0

    @classmethod
    def over(cls, counts: npt.NDArray[np.uint64]) -> Histogram:
        """An empty histogram whose counts are `counts` (zeros, uint64, COUNTS_LEN long),
        typically a row of a caller's block that `add_batch` merges into in one call."""
        if counts.dtype != np.uint64 or counts.shape != (COUNTS_LEN,):
            raise ValueError("counts must be a uint64 array of COUNTS_LEN slots")
        h = cls.__new__(cls)
        h._counts = counts
        h._count = h._overflow = h._min = h._max = 0
        return h

    def rebase(self, counts: npt.NDArray[np.uint64]) -> None:
        """Move the counts to `counts` (a caller's new block row holding a copy of them)."""
        if counts.dtype != np.uint64 or counts.shape != (COUNTS_LEN,):
            raise ValueError("counts must be a uint64 array of COUNTS_LEN slots")
        self._counts = counts

    # -- recording ---------------------------------------------------------

    def record(self, value_ns: int, count: int = 1) -> None:
        """Record one value (count times). Negative values are recorded as 0;
        values above HIGHEST go to `overflow` (values beyond 2^63 - 1 ns, 292
        years, as 2^63 - 1). Floats are rounded to whole ns."""
        v = value_ns if type(value_ns) is int else _coerce_scalar(value_ns)
        if count != 1:
            if type(count) is not int or count < 0:
                raise ValueError(f"count must be a non-negative int, got {count!r}")
            if count == 0:
                return
        if v < 0:
            v = 0
        if v <= _SUB_MASK:
            self._counts[v] += count
        elif v <= HIGHEST:
            b = v.bit_length() - _SUB_BITS
            self._counts[(b << _SUB_HALF_MAG) + (v >> b)] += count
        else:
            v = min(v, _MAX_INT)
            self._overflow += count
        if self._count == 0:
            self._min = self._max = v
        elif v < self._min:
            self._min = v
        elif v > self._max:
            self._max = v
        self._count += count

    def record_many(self, values_ns: npt.ArrayLike) -> None:
        """Record an array of values (float or int ns), vectorised.

        Floats are rounded to whole nanoseconds; NaN or infinity raise ValueError
        before anything is recorded. Negative values are recorded as 0."""
        a = np.asarray(values_ns)
        if a.ndim != 1:
            a = a.reshape(-1)
        n = int(a.size)
        if n == 0:
            return
        kind = a.dtype.kind
        if kind == "f":
            lo_f, hi_f = float(a.min()), float(a.max())  # NaN propagates
            if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
                raise ValueError("record_many: NaN or infinite value")
            a = np.rint(a)
            raw_lo, hi = round(lo_f), max(round(hi_f), 0)  # rint and round: half to even
        elif kind in "iu":
            raw_lo, hi = int(a.min()), max(int(a.max()), 0)
        else:
            for v in a.tolist():
                _coerce_scalar(v)  # validate everything before recording anything
            for v in a.tolist():
                self.record(v)
            return
        lo = min(max(raw_lo, 0), _MAX_INT)
        hi = min(hi, _MAX_INT)
        n_over = 0
        if hi > HIGHEST:
            over = a > HIGHEST
            n_over = int(np.count_nonzero(over))
            a = a[~over]
        if a.size:
            v = a.astype(np.int64)
            if raw_lo < 0:
                np.maximum(v, 0, out=v)
            self._add_indices(indices_of(v))
        self._overflow += n_over
        self._note_range(lo, hi)
        self._count += n

    def _add_indices(self, idx: npt.NDArray[np.int64]) -> None:
        if idx.size < _ADD_AT_LIMIT:
            np.add.at(self._counts, idx, np.uint64(1))
            return
        first = int(idx.min())
        bc = np.bincount(idx - first)
        self._counts[first : first + bc.size] += bc.view(np.uint64)

    def _note_range(self, lo: int, hi: int) -> None:
        if self._count == 0:
            self._min, self._max = lo, hi
        else:
            if lo < self._min:
                self._min = lo
            if hi > self._max:
                self._max = hi

    # -- combining ---------------------------------------------------------

    def merge(self, other: Histogram) -> None:
        """Add other's counts into self (exact)."""
        if other._count == 0:
            return
        self._counts += other._counts
        self._overflow += other._overflow
        self._note_range(other._min, other._max)
        self._count += other._count

    def copy(self) -> Histogram:
        h = Histogram.__new__(Histogram)
        h._counts = self._counts.copy()
        h._count, h._overflow, h._min, h._max = self._count, self._overflow, self._min, self._max
        return h

    def reset(self) -> None:
        self._counts.fill(0)
        self._count = self._overflow = self._min = self._max = 0

    def same_counts(self, other: Histogram) -> bool:
        """Bucket-for-bucket equality of counts (and overflow, total)."""
        return (
            self._count == other._count
            and self._overflow == other._overflow
            and bool(np.array_equal(self._counts, other._counts))
        )

    def equals(self, other: Histogram) -> bool:
        """same_counts and the same exact min and max."""
        return self.same_counts(other) and (self._min, self._max) == (other._min, other._max)

    # -- statistics --------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def overflow(self) -> int:
        return self._overflow

    @property
    def min(self) -> int:
        return self._min

    @property
    def max(self) -> int:
        return self._max

    @property
    def is_empty(self) -> bool:
        return self._count == 0

    @property
    def counts(self) -> npt.NDArray[np.uint64]:
        """Read-only view of the counts array (HdrHistogram index order)."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    def _slots(self) -> npt.NDArray[np.int64]:
        """Indices of the non-empty slots; they all lie between min's and max's."""
        if self._count == self._overflow:
            return np.zeros(0, dtype=np.int64)
        lo = index_of(self._min)
        hi = index_of(min(self._max, HIGHEST))
        return np.flatnonzero(self._counts[lo : hi + 1] != 0) + lo

    def _weighted(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        nz = self._slots()
        vals = SLOT_MIDDLE[nz].astype(np.float64)
        w = self._counts[nz].astype(np.float64)
        if self._overflow:
            vals = np.append(vals, float(self._max))
            w = np.append(w, float(self._overflow))
        return vals, w

    @property
    def mean(self) -> float:
        """Mean over slot middles (overflow values count as max); 0.0 if empty."""
        if self._count == 0:
            return 0.0
        vals, w = self._weighted()
        return float(np.dot(vals, w) / w.sum())

    @property
    def stdev(self) -> float:
        """Population standard deviation over slot middles; 0.0 if empty."""
        if self._count == 0:
            return 0.0
        vals, w = self._weighted()
        mean = np.dot(vals, w) / w.sum()
        d = vals - mean
        return float(math.sqrt(float(np.dot(d * d, w) / w.sum())))

    def percentile(self, p: float) -> int:
        """Value at percentile p in [0, 100] (0 if empty); see percentiles."""
        return self.percentiles([p])[0]

    def percentiles(self, ps: Sequence[float]) -> list[int]:
        """Values at percentiles ps, in one cumulative pass.

        The rank is numpy's "inverted_cdf" rank, computed with the same float
        arithmetic: the smallest k with k / count >= p / 100 (at least 1). The
        value is the highest value of the slot holding the k-th smallest sample,
        clamped to max; rank 1 gives the exact min, ranks in overflow give max."""
        q = np.asarray(ps, dtype=np.float64).reshape(-1)
        if q.size and not ((q >= 0.0) & (q <= 100.0)).all():
            raise ValueError(f"percentiles must be within [0, 100], got {list(ps)!r}")
        n = self._count
        if n == 0:
            return [0] * int(q.size)
        virtual = n * np.true_divide(q, 100) - 1
        prev = np.floor(virtual)
        rank0 = np.where(virtual == prev, prev, prev + 1)
        rank = np.clip(rank0, 0, n - 1).astype(np.uint64) + np.uint64(1)
        nz = self._slots()
        cum = np.cumsum(self._counts[nz])
        in_range = int(cum[-1]) if cum.size else 0
        pos = np.searchsorted(cum, np.minimum(rank, np.uint64(max(in_range, 1))), side="left")
        out: list[int] = []
        for r, j in zip(rank.tolist(), pos.tolist(), strict=True):
            if r == 1:
                out.append(self._min)
            elif r > in_range or r == n:
                out.append(self._max)
            else:
                out.append(min(int(SLOT_HIGHEST[nz[j]]), self._max))
        return out

    def nonzero(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
        """(representative value, count) of each non-empty slot in value order.

        The representative is the slot's highest value clamped to [min, max]
        (what percentile reports); overflow appears last as (max, overflow)."""
        nz = self._slots()
        vals = np.clip(SLOT_HIGHEST[nz], self._min, self._max)
        cnt = self._counts[nz]
        if self._overflow:
            vals = np.append(vals, np.int64(self._max))
            cnt = np.append(cnt, np.uint64(self._overflow))
        return vals, cnt

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self._count}, min={self._min}, max={self._max}, "
            f"overflow={self._overflow})"
        )

    # -- sparse wire form --------------------------------------------------

    def to_wire(self) -> dict[str, int | bytes]:
        """Sparse wire form (see the module comment). Indices are always written
        as uint16 deltas: COUNTS_LEN < 2^16, so every delta fits."""
        nz = self._slots()
        n = int(nz.size)
        deltas = np.empty(n, dtype=_INDEX_DTYPES[2])
        cmax = 0
        if n:
            deltas[0] = nz[0]
            np.subtract(nz[1:], nz[:-1], out=deltas[1:], casting="unsafe")
            c = self._counts[nz]
            cmax = int(c.max())
        cw = 1 if cmax <= 0xFF else 2 if cmax <= 0xFFFF else 4 if cmax <= 0xFFFFFFFF else 8
        return {
            "n": n,
            "iw": 2,
            "i": deltas.tobytes(),
            "cw": cw,
            "c": c.astype(_COUNT_DTYPES[cw]).tobytes() if n else b"",
            "count": self._count,
            "overflow": self._overflow,
            "min": self._min,
            "max": self._max,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls()
        h.add_wire(d)
        return h

    def add_wire(self, d: Mapping[str, Any]) -> None:
        """Merge a wire form into self; HistogramWireError (self unchanged) if malformed."""
        self.add_parts(decode_wire(d))

    def add_parts(self, parts: WireParts) -> None:
        """Merge an already validated wire form (see `decode_wire`): validate once,
        merge into several totals."""
        idx, cnt, count, overflow, mn, mx = parts
        if count == 0:
            return
        if self._count + count > _MAX_INT:
            raise HistogramWireError("merged count would exceed 2^63 - 1")
        if idx.size:
            self._counts[idx] += cnt  # indices are strictly increasing: no repeats
        self._add_scalars(count, overflow, mn, mx)

    def _add_scalars(self, count: int, overflow: int, mn: int, mx: int) -> None:
        """The non-array part of a merge (the caller checked the int63 limit)."""
        if count == 0:
            return
        self._overflow += overflow
        if self._count == 0:
            self._min, self._max = mn, mx
        else:
            if mn < self._min:
                self._min = mn
            if mx > self._max:
                self._max = mx
        self._count += count

    # -- HdrHistogram V2 encoding ------------------------------------------

    def to_hdr_v2(self) -> bytes:
        """Base64 HdrHistogram V2 compressed encoding (what hdrhistogram's
        HdrHistogram.encode() produces). Overflow values cannot be represented
        individually: they are counted in the slot of max, or in the last slot
        if max is beyond the array (2^42 ns), so the total is kept."""
        from loadctl.protocol.hdr_log import encode_v2

        counts = self._counts
        if self._overflow:
            counts = counts.copy()
            counts[index_of(min(self._max, (1 << 42) - 1))] += np.uint64(self._overflow)
        return encode_v2(counts, LOWEST, HIGHEST, SIGNIFICANT_DIGITS)

    @classmethod
    def from_hdr_v2(cls, encoded: bytes | str) -> Histogram:
        """Decode an HdrHistogram V2 encoding (base64 or raw compressed).

        A histogram with another layout (lowest, significant figures) is
        re-bucketed by each slot's lowest value. Min and max are the slot
        bounds, as HdrHistogram itself reports them after decoding."""
        from loadctl.protocol.hdr_log import decode_v2

        values, counts, highest_of_last = decode_v2(encoded)
        h = cls()
        if values.size == 0:
            return h
        total = _exact_sum(counts)
        if total > _MAX_INT:
            raise HistogramWireError("decoded total count exceeds 2^63 - 1")
        over = values > HIGHEST
        n_over = _exact_sum(counts[over]) if over.any() else 0
        keep = ~over
        if keep.any():
            idx = indices_of(values[keep])
            if idx.size < 2 or bool((idx[1:] != idx[:-1]).all()):  # same layout: unique
                h._counts[idx] += counts[keep]
            else:  # a finer foreign layout maps several slots onto one of ours
                np.add.at(h._counts, idx, counts[keep])
        last = int(values[-1])
        if n_over:
            h._max = max(highest_of_last, last)
        else:  # keep max in the last slot (the foreign slot may be wider)
            h._max = min(highest_of_last, int(SLOT_HIGHEST[index_of(last)]), HIGHEST)
        h._overflow = n_over
        h._min = int(values[0])
        h._count = total
        return h


def _fail(msg: str) -> HistogramWireError:
    return HistogramWireError(f"malformed histogram wire form: {msg}")


WireParts = tuple[npt.NDArray[np.int64], npt.NDArray[Any], int, int, int, int]


def decode_wire(d: Mapping[str, Any]) -> WireParts:
    """Validate a wire form; (indices, counts, count, overflow, min, max)."""
    if type(d) is not dict:
        if not isinstance(d, Mapping):
            raise _fail(f"expected a mapping, got {type(d).__name__}")
        try:
            d = dict(d)
        except Exception as e:  # a broken Mapping implementation
            raise _fail(str(e)) from e
    try:  # nine keys, all of them ours: exactly our keys
        n, iw, cw, count, overflow, mn, mx = (
            d["n"], d["iw"], d["cw"], d["count"], d["overflow"], d["min"], d["max"]
        )  # fmt: skip
        ib, cb = d["i"], d["c"]
    except KeyError as e:
        raise _fail(f"missing key {e}") from None
    if len(d) != len(_WIRE_KEYS):
        raise _fail(f"keys must be {sorted(_WIRE_KEYS)}")
    if not (
        type(n) is int
        and type(count) is int
        and type(overflow) is int
        and type(mn) is int
        and type(mx) is int
        and 0 <= n <= COUNTS_LEN
        and 0 <= overflow <= count <= _MAX_INT
        and 0 <= mn <= mx <= _MAX_INT
    ):
        raise _fail("n, count, overflow, min, max must be ints with 0 <= overflow <= count "
                    "and 0 <= min <= max")  # fmt: skip
    idt = _INDEX_DTYPES.get(iw) if type(iw) is int else None
    cdt = _COUNT_DTYPES.get(cw) if type(cw) is int else None
    if idt is None or cdt is None:
        raise _fail("index width must be 2 or 4 and count width 1, 2, 4 or 8")
    if type(ib) is not bytes or type(cb) is not bytes or len(ib) != n * iw or len(cb) != n * cw:
        raise _fail("'i' and 'c' must be bytes of n * iw and n * cw bytes")
    if n == 0:
        if count != overflow:
            raise _fail("counts do not add up to count")
        if count == 0:
            if mx:
                raise _fail("empty histogram with non-zero min or max")
        elif mn <= HIGHEST:
            raise _fail("only overflow recorded but min is in range")
        return _NO_SLOTS, _NO_SLOTS, count, overflow, mn, mx
    deltas = np.frombuffer(ib, dtype=idt)
    first = int.from_bytes(ib[:iw], "little")
    if np.count_nonzero(deltas) != n - (first == 0):
        raise _fail("indices must be strictly increasing")
    idx = np.add.accumulate(deltas.astype(np.int64))
    last = int(idx[-1])
    if last >= COUNTS_LEN:
        raise _fail("index out of range")
    cnt = np.frombuffer(cb, dtype=cdt)
    if np.count_nonzero(cnt) != n:
        raise _fail("zero count in sparse form")
    total = _exact_sum(cnt) if cw == 8 else None
    cnt = cnt.astype(np.uint64)
    if total is None:
        total = int(cnt.sum())  # < n * 2^32: no wrap-around
    if total + overflow != count:
        raise _fail("counts do not add up to count")
    if mn > HIGHEST or index_of(mn) != first:
        raise _fail("min is not in the first non-empty slot")
    if overflow:
        if mx <= HIGHEST:
            raise _fail("overflow recorded but max is in range")
    elif mx > HIGHEST or index_of(mx) != last:
        raise _fail("max is not in the last non-empty slot")
    return idx, cnt, count, overflow, mn, mx


_NO_SLOTS: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)


# -- many wire forms at once ------------------------------------------------------------
#
# A snapshot carries dozens of histograms of a few hundred to a few thousand slots
# each. Checked one by one, each costs some ten numpy calls, and call overhead, not
# the slots, dominates. decode_wires runs the same checks as decode_wire over the
# concatenation of their bytes (segment sums with reduceat, one prefix sum whose
# segment starts are corrected so each histogram's indices restart), and add_batch
# merges them into the rows of one block in one scatter.


class WireBatch:
    """Validated wire forms of several histograms, flattened (see `decode_wires`).

    `lengths[k]` is histogram k's number of non-empty slots and `scalars[k]` its
    (count, overflow, min, max). Their slots, histogram after histogram, are kept
    as decoded: `deltas` (index deltas), `at` (where each non-empty histogram
    starts in them), `lasts` (its last index) and `cnt` (the counts); the prefix
    sum that turns deltas into indices is left to the merge, which folds the
    target rows into it (`add_batch`), or done on demand (`idx`, `parts`)."""

    __slots__ = ("_idx", "at", "cnt", "deltas", "lasts", "lengths", "scalars")

    def __init__(
        self,
        deltas: npt.NDArray[Any],
        at: npt.NDArray[np.intp],
        lasts: npt.NDArray[np.int64],
        cnt: npt.NDArray[np.uint64],
        lengths: list[int],
        scalars: list[tuple[int, int, int, int]],
    ) -> None:
        self.deltas = deltas
        self.at = at
        self.lasts = lasts
        self.cnt = cnt
        self.lengths = lengths
        self.scalars = scalars
        self._idx: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.scalars)

    @property
    def idx(self) -> npt.NDArray[np.int64]:
        """The slot indices of every histogram, one after the other."""
        if self._idx is None:
            self._idx = _prefix_sums(self, np.zeros(self.at.size, dtype=np.int64))
        return self._idx

    def parts(self, k: int) -> WireParts:
        """Histogram k as `decode_wire` returns it."""
        a = sum(self.lengths[:k])
        b = a + self.lengths[k]
        return (self.idx[a:b], self.cnt[a:b], *self.scalars[k])


def _prefix_sums(batch: WireBatch, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each non-empty histogram's indices plus its offset, in one prefix sum: the delta
    that starts histogram k also undoes where histogram k - 1 ended."""
    out = batch.deltas.astype(np.int64)
    if out.size:
        at = batch.at
        out[at[0]] += offsets[0]
        if at.size > 1:
            out[at[1:]] += offsets[1:] - offsets[:-1] - batch.lasts[:-1]
        np.cumsum(out, out=out)
    return out


def decode_wires(wires: Sequence[Any]) -> WireBatch:
    """`decode_wire` for many wire forms at once: the same checks, vectorised across
    them. HistogramWireError (naming the first bad one's problem) if any is malformed.

    The fast path takes what `to_wire` writes (2-byte index deltas, counts of 1, 2 or
    4 bytes); anything else, or anything it doubts, goes through `decode_wire` one by
    one, so both accept and reject exactly the same inputs. Its checks run column by
    column in builtins (a snapshot batch holds thousands of histograms)."""
    if not wires:
        return WireBatch(_NO_DELTAS, _NO_STARTS, _NO_SLOTS, _NO_COUNTS, [], [])
    if set(map(type, wires)) != _DICT or set(map(len, wires)) != _NINE:
        return _decode_each(wires)
    try:
        columns = tuple(zip(*map(_WIRE_GET, wires), strict=True))
    except KeyError:  # nine keys, all of them ours: exactly our keys
        return _decode_each(wires)
    ns, iws, cws, counts, overflows, mins, maxs, ibs, cbs = columns
    if not (
        set(map(type, chain(ns, iws, cws, counts, overflows, mins, maxs))) == _INT
        and set(map(type, chain(ibs, cbs))) == _BYTES
        and set(iws) == _TWO
        and set(cws) <= _CW_FAST
        and min(ns) >= 0
        and max(ns) <= COUNTS_LEN
        and min(chain(overflows, mins)) >= 0
        and max(chain(counts, maxs)) <= _MAX_INT
        and all(map(operator.le, overflows, counts))
        and all(map(operator.le, mins, maxs))
        and list(map(len, ibs)) == list(map(operator.add, ns, ns))
        and list(map(len, cbs)) == list(map(operator.mul, ns, cws))
    ):
        return _decode_each(wires)
    lengths = list(ns)
    scalars = list(zip(counts, overflows, mins, maxs, strict=True))
    if 0 in ns:  # empty ones: only overflow, or nothing at all
        for n, (count, overflow, mn, mx) in zip(ns, scalars, strict=True):
            if n == 0 and (count != overflow or (mx if count == 0 else mn <= HIGHEST)):
                return _decode_each(wires)
        if not any(ns):
            return WireBatch(_NO_DELTAS, _NO_STARTS, _NO_SLOTS, _NO_COUNTS, lengths, scalars)
        full_ns = [n for n in ns if n]
        mins, maxs, overflows, counts = (
            tuple(compress(column, ns)) for column in (mins, maxs, overflows, counts)
        )
    else:
        full_ns = lengths
    if max(mins) > HIGHEST:  # min is in a slot (only empty ones hold overflow only)
        return _decode_each(wires)
    deltas = np.frombuffer(b"".join(ibs), dtype=_INDEX_DTYPES[2])
    total = deltas.size
    at = np.fromiter(accumulate(full_ns, initial=0), dtype=np.intp, count=len(full_ns) + 1)[:-1]
    firsts = deltas[at]
    # strictly increasing: every delta but a first one is non-zero (per histogram, the
    # non-zero deltas are at most n - [first == 0], so equal sums mean equal terms)
    if np.count_nonzero(deltas) != total - (at.size - np.count_nonzero(firsts)):
        return _decode_each(wires)
    # a histogram's deltas sum to its last index (< 2^32: n < 2^16 deltas below 2^16)
    lasts = np.add.reduceat(deltas, at, dtype=np.uint32).astype(np.int64)
    if int(lasts.max()) >= COUNTS_LEN:
        return _decode_each(wires)
    # min in the first slot; max in the last one, or above HIGHEST with overflow only
    over = np.array(overflows, dtype=np.int64) > 0
    top = np.array(maxs, dtype=np.int64)
    if not (
        np.array_equal(indices_of(np.array(mins, dtype=np.int64)), firsts)
        and np.array_equal(top > HIGHEST, over)
        and np.array_equal(indices_of(np.where(over, 0, top)), np.where(over, 0, lasts))
    ):
        return _decode_each(wires)
    if len(set(cws)) == 1:
        raw = [np.frombuffer(b"".join(cbs), dtype=_COUNT_DTYPES[cws[0]])]
    else:  # runs of equal width, each read at once
        runs = groupby(zip(cws, cbs, strict=True), key=_FIRST)
        raw = [
            np.frombuffer(b"".join(map(_SECOND, run)), dtype=_COUNT_DTYPES[w]) for w, run in runs
        ]
    if sum(map(np.count_nonzero, raw)) != total:  # on the narrow counts: cheaper
        return _decode_each(wires)
    cnt = raw[0].astype(np.uint64) if len(raw) == 1 else np.concatenate(raw, dtype=np.uint64)
    sums = np.add.reduceat(cnt, at)  # < n * 2^32 each: no wrap-around
    if sums.tolist() != list(map(operator.sub, counts, overflows)):
        return _decode_each(wires)
    return WireBatch(deltas, at, lasts, cnt, lengths, scalars)


_WIRE_GET = operator.itemgetter("n", "iw", "cw", "count", "overflow", "min", "max", "i", "c")
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_DICT, _INT, _BYTES = frozenset((dict,)), frozenset((int,)), frozenset((bytes,))
_NINE, _TWO, _CW_FAST = frozenset((9,)), frozenset((2,)), frozenset((1, 2, 4))


def _decode_each(wires: Sequence[Any]) -> WireBatch:
    """One by one through decode_wire: raises its precise error, or builds the batch."""
    parts = [decode_wire(d) for d in wires]
    full = [p for p in parts if p[0].size]
    if not full:
        return WireBatch(
            _NO_DELTAS,
            _NO_STARTS,
            _NO_SLOTS,
            _NO_COUNTS,
            [0] * len(parts),
            [(p[2], p[3], p[4], p[5]) for p in parts],
        )
    sizes = np.array([p[0].size for p in full], dtype=np.intp)
    return WireBatch(
        # indices < COUNTS_LEN < 2^16: each histogram's deltas fit 16 bits
        np.concatenate([np.diff(p[0], prepend=0) for p in full]).astype(np.uint16),
        np.cumsum(sizes) - sizes,
        np.array([int(p[0][-1]) for p in full], dtype=np.int64),
        np.concatenate([p[1] for p in full], dtype=np.uint64),
        [int(p[0].size) for p in parts],
        [(p[2], p[3], p[4], p[5]) for p in parts],
    )


def check_batch(histograms: Sequence[Histogram], batch: WireBatch) -> None:
    """HistogramWireError if merging `batch` into `histograms` would take a total count
    beyond 2^63 - 1 (checked for all of them before anything is merged)."""
    incoming = sum(s[0] for s in batch.scalars)
    if incoming + max((h._count for h in histograms), default=0) <= _MAX_INT:
        return  # the usual case, in one comparison
    totals: dict[int, int] = {}
    for h, s in zip(histograms, batch.scalars, strict=True):
        totals[id(h)] = totals.get(id(h), h._count) + s[0]
        if totals[id(h)] > _MAX_INT:
            raise HistogramWireError("merged count would exceed 2^63 - 1")


def add_batch(
    block: npt.NDArray[np.uint64],
    rows: Sequence[int],
    histograms: Sequence[Histogram],
    batch: WireBatch,
) -> None:
    """Merge histogram k of `batch` into `histograms[k]`, whose counts are row `rows[k]`
    of `block` (C-contiguous, COUNTS_LEN columns; see Histogram.over), in one scatter.
    Several may share a row. All or nothing: the count limit is checked first."""
    if len(rows) != len(batch) or len(histograms) != len(batch):
        raise ValueError("one row and one histogram per histogram of the batch")
    if not block.flags.c_contiguous or block.ndim != 2 or block.shape[1] != COUNTS_LEN:
        raise ValueError("block must be a C-contiguous array of COUNTS_LEN columns")
    check_batch(histograms, batch)
    if batch.cnt.size:
        offsets = np.array(rows, dtype=np.int64)
        if batch.at.size != offsets.size:  # some are empty: only the others have slots
            offsets = offsets[np.array(batch.lengths) > 0]
        offsets *= COUNTS_LEN
        np.add.at(block.reshape(-1), _prefix_sums(batch, offsets), batch.cnt)
    for h, (count, overflow, mn, mx) in zip(histograms, batch.scalars, strict=True):
        if count:
            h._add_scalars(count, overflow, mn, mx)


_NO_COUNTS: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
_NO_DELTAS: npt.NDArray[np.uint16] = np.zeros(0, dtype=np.uint16)
_NO_STARTS: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
