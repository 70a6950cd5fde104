# Wire form (to_wire / add_wire): sparse, for msgpack snapshots. A list of nine
# fields, in the order of WIRE_FIELDS:
#   n         number of non-empty slots
#   iw, i     index width in bytes (2 = '<u2', 4 = '<u4') and the slot indices,
#             delta encoded (first delta is the first index), little endian
#   cw, c     count width in bytes (1, 2, 4 or 8) and the counts, little endian
#   count     total count including overflow; overflow; min; max (exact values)
# A list, not a map: a snapshot carries thirty of them, and msgpack spent more
# time decoding their nine string keys than their slots (73 against 24 µs per
# snapshot, protocol 1 against 2).
# Decoding validates every field before touching the target histogram and raises
# HistogramWireError (a ValueError) and nothing else on malformed input.
"""The sparse wire form of a histogram: validating decoders (one or many at once)
and the batched merge into the rows of a block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from loadctl.protocol.hdr_layout import (
    _MAX_INT,
    COUNTS_LEN,
    HIGHEST,
    _exact_sum,
    index_of,
)

if TYPE_CHECKING:
    from loadctl.protocol.histogram import Histogram


class HistogramWireError(ValueError):
    """A wire or HdrHistogram encoding is malformed; the target is unchanged."""


WIRE_FIELDS = ("n", "iw", "i", "cw", "c", "count", "overflow", "min", "max")
_INDEX_DTYPES: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_COUNT_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


def _fail(msg: str) -> HistogramWireError:
    return HistogramWireError(f"malformed histogram wire form: {msg}")


WireParts = tuple[npt.NDArray[np.int64], npt.NDArray[Any], int, int, int, int]


def decode_wire(d: Sequence[Any]) -> WireParts:
    """Validate a wire form; (indices, counts, count, overflow, min, max)."""
    if type(d) not in _SEQUENCES or len(d) != len(WIRE_FIELDS):
        raise _fail(f"expected a list of the {len(WIRE_FIELDS)} fields {', '.join(WIRE_FIELDS)}")
    n, iw, ib, cw, cb, count, overflow, mn, mx = d
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
_SEQUENCES = (list, tuple)


# -- many histograms at once -------------------------------------------------------------
#
# A snapshot carries dozens of histograms of a few hundred to a few thousand slots
# each. Checked one by one, each costs some ten numpy calls, and call overhead, not
# the slots, dominates. So a snapshot's histograms travel as one table
# (histogram_table), whose decoder runs decode_wire's checks over the tables of many
# snapshots and hands over a HistogramBatch; add_batch merges it into the rows of one
# block. Two kinds: the compiled kernel's (histogram_table.TableBatch: the tables
# as they came, walked once to check and once to merge), and numpy's (WireBatch:
# checked column by column, merged in one scatter after one prefix sum whose
# segment starts are corrected so each histogram's indices restart at its row).


class HistogramBatch(Protocol):
    """Several validated histograms, ready to merge: `lengths[k]` is histogram k's
    number of non-empty slots and `scalars[k]` its (count, overflow, min, max)."""

    @property
    def lengths(self) -> Sequence[int]: ...

    @property
    def scalars(self) -> Sequence[Sequence[int]]: ...

    def __len__(self) -> int: ...

    def parts(self, k: int) -> WireParts:
        """Histogram k as `decode_wire` returns it."""
        ...

    def scatter(self, cells: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64]) -> None:
        """Add each slot of histogram k to cells[offsets[k] + its index]."""
        ...


class WireBatch:
    """Several validated histograms, flattened (see `histogram_table.decode_tables`).

    `lengths[k]` is histogram k's number of non-empty slots and `scalars[k]` its
    (count, overflow, min, max). Their slots, histogram after histogram, are kept
    as decoded: `deltas` (index deltas, as narrow as they came, except that those
    at `wide[0]` are `wide[1]`), `at` (where each non-empty histogram starts in
    them), `lasts` (its last index) and `cnt` (the counts); the prefix sum that
    turns deltas into indices is left to the merge, which folds the target rows
    into it (`add_batch`), or done on demand (`idx`, `parts`)."""

    __slots__ = ("_idx", "at", "cnt", "deltas", "lasts", "lengths", "scalars", "wide")

    def __init__(
        self,
        deltas: npt.NDArray[Any],
        at: npt.NDArray[np.intp],
        lasts: npt.NDArray[np.int64],
        cnt: npt.NDArray[np.uint64],
        lengths: list[int],
        scalars: Sequence[Sequence[int]],
        wide: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None,
    ) -> None:
        self.deltas = deltas
        self.at = at
        self.lasts = lasts
        self.cnt = cnt
        self.lengths = lengths
        self.scalars = scalars  # (count, overflow, min, max) of each
        self.wide = wide
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
        count, overflow, mn, mx = self.scalars[k]
        return self.idx[a:b], self.cnt[a:b], count, overflow, mn, mx

    def scatter(self, cells: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64]) -> None:
        """Add each slot of histogram k to cells[offsets[k] + its index], in one np.add.at."""
        if self.cnt.size:
            if self.at.size != offsets.size:  # some are empty: only the others have slots
                offsets = offsets[np.array(self.lengths) > 0]
            np.add.at(cells, _prefix_sums(self, offsets), self.cnt)


def _prefix_sums(batch: WireBatch, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each non-empty histogram's indices plus its offset, in one prefix sum: the delta
    that starts histogram k also undoes where histogram k - 1 ended."""
    out = batch.deltas.astype(np.int64)
    if batch.wide is not None:
        out[batch.wide[0]] = batch.wide[1]
    if out.size:
        at = batch.at
        out[at[0]] += offsets[0]
        if at.size > 1:
            out[at[1:]] += offsets[1:] - offsets[:-1] - batch.lasts[:-1]
        np.cumsum(out, out=out)
    return out


def check_batch(histograms: Sequence[Histogram], batch: HistogramBatch) -> None:
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
    batch: HistogramBatch,
) -> None:
    """Merge histogram k of `batch` into `histograms[k]`, whose counts are row `rows[k]`
    of `block` (C-contiguous, COUNTS_LEN columns; see Histogram.over), in one scatter.
    Several may share a row. All or nothing: the count limit is checked first."""
    if len(rows) != len(batch) or len(histograms) != len(batch):
        raise ValueError("one row and one histogram per histogram of the batch")
    if not block.flags.c_contiguous or block.ndim != 2 or block.shape[1] != COUNTS_LEN:
        raise ValueError("block must be a C-contiguous array of COUNTS_LEN columns")
    if block.dtype != np.uint64:
        raise ValueError("block must hold uint64 counts")
    check_batch(histograms, batch)
    batch.scatter(block.reshape(-1), np.array(rows, dtype=np.int64) * COUNTS_LEN)
    for h, (count, overflow, mn, mx) in zip(histograms, batch.scalars, strict=True):
        if count:
            h._add_scalars(count, overflow, mn, mx)
