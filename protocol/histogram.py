"""Histogram: a mergeable latency histogram of integer nanoseconds.

Its slot layout is HdrHistogram's (`hdr_layout`: why percentiles are within 0.1 %
and why merging is exact); its sparse wire form and the validating decoders are
in `histogram_wire`. The names of both are re-exported here, where callers have
always imported them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loadctl.protocol.hdr_layout import (
    _MAX_INT,
    _SUB_BITS,
    _SUB_HALF_MAG,
    _SUB_MASK,
    COUNTS_LEN,
    HIGHEST,
    LOWEST,
    SIGNIFICANT_DIGITS,
    SLOT_HIGHEST,
    SLOT_LOWEST,
    SLOT_MIDDLE,
    _exact_sum,
    index_of,
    indices_of,
)
from loadctl.protocol.histogram_wire import (
    _COUNT_DTYPES,
    _INDEX_DTYPES,
    WIRE_FIELDS,
    HistogramBatch,
    HistogramWireError,
    WireBatch,
    WireParts,
    add_batch,
    check_batch,
    decode_wire,
)

__all__ = [
    "COUNTS_LEN",
    "HIGHEST",
    "LOWEST",
    "SLOT_HIGHEST",
    "SLOT_LOWEST",
    "SLOT_MIDDLE",
    "WIRE_FIELDS",
    "Histogram",
    "HistogramBatch",
    "HistogramWireError",
    "WireBatch",
    "WireParts",
    "add_batch",
    "check_batch",
    "decode_wire",
    "index_of",
    "indices_of",
]

_ADD_AT_LIMIT = 2048  # below this many values, np.add.at beats a bincount


def _coerce_scalar(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("histogram values are numbers of nanoseconds, not bool")
    if isinstance(value, int | np.integer):
        return int(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"cannot record a non-finite value: {value!r}")
    return round(f)


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

    def to_wire(self) -> list[int | bytes]:
        """Sparse wire form: a list, fields in the order of WIRE_FIELDS (see
        histogram_wire). Indices are always written as uint16 deltas: COUNTS_LEN <
        2^16, so every delta fits."""
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
        counts = c.astype(_COUNT_DTYPES[cw]).tobytes() if n else b""
        return [
            n,
            2,
            deltas.tobytes(),
            cw,
            counts,
            self._count,
            self._overflow,
            self._min,
            self._max,
        ]

    @classmethod
    def from_wire(cls, d: Sequence[Any]) -> Histogram:
        h = cls()
        h.add_wire(d)
        return h

    def add_wire(self, d: Sequence[Any]) -> None:
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
