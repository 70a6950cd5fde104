# Table form (protocol 3): all the histograms of one snapshot in one list of eight
# fields, column by column, in the order of TABLE_FIELDS:
#   h      number of histograms
#   ns     their numbers of non-empty slots, '<u2' each (COUNTS_LEN < 2^16)
#   sc     their count, overflow, min and max, '<i8' each, four per histogram
#   d      one byte per non-empty slot: the index delta from the slot before (the
#          first slot of a histogram: the index itself) if it is 1 to 255, else 0
#   ep, ev where d is 0: the positions (among the table's slots, increasing, '<u4')
#          and the deltas there ('<u2')
#   cw, c  count width (1, 2 or 4 bytes) and the counts, one per slot, little endian
#
# Why a table: protocol 2 sent a list of nine fields per histogram, thirty per
# snapshot. At a thousand agents the coordinator spent more on those 270 msgpack
# objects and on checking them histogram by histogram in Python than on the
# slots themselves. Here a snapshot is seven objects, and the checks and the
# merge run column by column over the concatenated columns of many snapshots at
# once, with a fixed number of numpy calls whatever the number of histograms.
# One-byte deltas: the non-empty slots of a latency histogram are mostly
# neighbours, so a slot costs 1 byte of index instead of 2 (frames shrink by a
# third, and so does the ZeroMQ I/O thread's work). The few wider deltas come
# with their positions, so the decoder finds them without a pass over `d`, and
# every check runs on the narrow columns as they arrived; only the merge widens
# them (add_batch).
#
# Counts wider than 4 bytes are refused: one agent's one-second snapshot never
# puts 2^32 requests in one slot, and the sums below then cannot wrap.
#
# The checks and the merge run in a compiled kernel (_table_kernel.c) when the
# install could build it, else in numpy; both enforce the same rules with the
# same messages (tests run every table test through both). LOADCTL_NO_KERNEL=1
# picks numpy even when the kernel is there (to compare them).
#
# decode_tables accepts exactly what decode_wire accepts histogram by histogram
# (the same rules: strictly increasing indices, non-zero counts that add up to
# count - overflow, min in the first slot and max in the last or above HIGHEST
# with overflow) and raises HistogramWireError, and nothing else, on anything
# else; tests/test_histogram_table.py checks both against each other.
"""The columnar wire form of a snapshot's histograms: the encoder, and the
validating decoder of many tables at once into one batch to merge."""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from loadctl.protocol.hdr_layout import COUNTS_LEN, HIGHEST, indices_of
from loadctl.protocol.histogram_wire import (
    _COUNT_DTYPES,
    HistogramBatch,
    HistogramWireError,
    WireBatch,
    WireParts,
)

if TYPE_CHECKING:
    from loadctl.protocol.histogram import Histogram

TABLE_FIELDS = ("h", "ns", "sc", "d", "ep", "ev", "cw", "c")
_EP = np.dtype("<u4")
_NS = np.dtype("<u2")
_SC = np.dtype("<i8")
_EV = np.dtype("<u2")
_TABLE_WIDTHS = (1, 2, 4)


def _fail(msg: str) -> HistogramWireError:
    return HistogramWireError(f"malformed histogram table: {msg}")


def to_table(histograms: Sequence[Histogram]) -> list[Any]:
    """The table form of `histograms`, in order (see TABLE_FIELDS)."""
    slots = [h._slots() for h in histograms]
    ns = np.fromiter((s.size for s in slots), dtype=np.int64, count=len(slots))
    sc = np.array([(h._count, h._overflow, h._min, h._max) for h in histograms], dtype=_SC)
    head = [len(histograms), ns.astype(_NS).tobytes(), sc.tobytes()]
    if not ns.sum():
        return [*head, b"", b"", b"", 1, b""]
    idx = np.concatenate(slots)
    deltas = np.diff(idx, prepend=0)
    at = (np.cumsum(ns) - ns)[ns > 0]
    deltas[at] = idx[at]
    wide = np.flatnonzero((deltas == 0) | (deltas > 0xFF))
    counts = np.concatenate([h._counts[s] for h, s in zip(histograms, slots, strict=True)])
    top = int(counts.max())
    if top > 0xFFFFFFFF:
        raise ValueError("a slot holds 2^32 or more: too many for one snapshot")
    cw = 1 if top <= 0xFF else 2 if top <= 0xFFFF else 4
    narrow = deltas.astype(np.uint8)
    narrow[wide] = 0
    return [
        *head,
        narrow.tobytes(),
        wide.astype(_EP).tobytes(),
        deltas[wide].astype(_EV).tobytes(),
        cw,
        counts.astype(_COUNT_DTYPES[cw]).tobytes(),
    ]


class _Kernel(Protocol):
    def check(
        self, h: int, ns: bytes, sc: bytes, d: bytes, ep: bytes, ev: bytes, cw: int, c: bytes
    ) -> str | None: ...

    def scatter(self, block: npt.NDArray[np.uint64], offsets: bytes, tables: list[Any]) -> None: ...


def _load_kernel() -> _Kernel | None:
    if os.environ.get("LOADCTL_NO_KERNEL"):
        return None
    try:
        from loadctl.protocol import _table_kernel
    except ImportError:  # the install had no C compiler: numpy does the same work
        return None
    return _table_kernel


KERNEL = _load_kernel()


def decode_tables(tables: Sequence[Any], sizes: Sequence[int]) -> HistogramBatch:
    """Validate tables holding sizes[k] histograms each, and return all their
    histograms, table after table, as one batch. HistogramWireError if any table
    is malformed (which one is not said: decode them one by one to tell)."""
    if len(tables) != len(sizes):
        raise ValueError("one size per table")
    for table, size in zip(tables, sizes, strict=True):
        _check_fields(table, size)
    if KERNEL is None:
        return _decode_columns(tables, sizes)
    for table in tables:
        fault = KERNEL.check(*table)
        if fault is not None:
            raise _fail(fault)
    return TableBatch(KERNEL, tables, sizes)


class TableBatch:
    """Tables the compiled kernel checked, kept as they came: the kernel merges them
    all in one call (`scatter`); `parts` decodes them with numpy, on the rare path
    that needs the slots themselves (a late snapshot)."""

    __slots__ = ("_flat", "kernel", "lengths", "scalars", "sizes", "tables")

    def __init__(self, kernel: _Kernel, tables: Sequence[Any], sizes: Sequence[int]) -> None:
        self.kernel = kernel
        self.tables = tables
        self.sizes = sizes
        ns = np.frombuffer(b"".join(t[1] for t in tables), dtype=_NS)
        self.lengths: list[int] = ns.tolist()
        sc = np.frombuffer(b"".join(t[2] for t in tables), dtype=_SC)
        self.scalars: list[list[int]] = sc.reshape(-1, 4).tolist()
        self._flat: WireBatch | None = None

    def __len__(self) -> int:
        return len(self.scalars)

    def parts(self, k: int) -> WireParts:
        if self._flat is None:
            self._flat = _decode_columns(self.tables, self.sizes)
        return self._flat.parts(k)

    def scatter(self, cells: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64]) -> None:
        self.kernel.scatter(cells, offsets.tobytes(), list(self.tables))


def _check_fields(table: Any, size: int) -> None:
    """What both decoders need before they read a table: its shape and lengths."""
    _check_shape(table, size)
    d, ep, ev, cw, c = table[3:]
    if len(c) != len(d) * cw or len(ev) % 2 or len(ep) != 2 * len(ev):
        raise _fail("'d' and 'c', or 'ep' and 'ev', do not hold as many entries")
    if ep and int.from_bytes(ep[-4:], "little") >= len(d):
        raise _fail("'ep' must be increasing positions among the slots")


def _decode_columns(tables: Sequence[Any], sizes: Sequence[int]) -> WireBatch:
    """decode_tables in numpy, column by column over all the tables together (whose
    fields `_check_fields` accepted)."""
    cols: list[list[bytes]] = [[], [], [], [], [], []]  # ns, sc, d, ep, ev, c
    widths: list[int] = []
    starts: list[int] = []  # of each table's slots among all
    total = 0
    for table in tables:
        _, ns, sc, d, ep, ev, cw, c = table
        slots = len(d)
        starts.append(total)
        total += slots
        for col, part in zip(cols, (ns, sc, d, ep, ev, c), strict=True):
            col.append(part)
        widths.append(cw)
    ns_all = np.frombuffer(b"".join(cols[0]), dtype=_NS).astype(np.int64)
    sc_all = np.frombuffer(b"".join(cols[1]), dtype=_SC).reshape(-1, 4)
    if _table_sums(ns_all, sizes) != list(map(len, cols[2])):
        raise _fail("'ns' does not add up to the slots in 'd'")
    count, overflow, mn, mx = sc_all.T
    _check_scalars(count, overflow, mn, mx)
    lengths: list[int] = ns_all.tolist()
    scalars: list[list[int]] = sc_all.tolist()
    if not total:
        _check_empty(count, overflow, mn, mx, np.ones(ns_all.size, dtype=bool))
        return WireBatch(_NO_DELTAS, _NO_STARTS, _NO_SLOTS, _NO_COUNTS, lengths, scalars)
    d_all = np.frombuffer(b"".join(cols[2]), dtype=np.uint8)
    wide_at = np.frombuffer(b"".join(cols[3]), dtype=_EP).astype(np.int64)
    wide_at += np.repeat(starts, [len(ep) // 4 for ep in cols[3]])
    if wide_at.size > 1 and int(np.diff(wide_at).min()) <= 0:  # per table, so all in all
        raise _fail("'ep' must be increasing positions among the slots")
    wide = np.frombuffer(b"".join(cols[4]), dtype=_EV).astype(np.int64)
    if np.count_nonzero(d_all) + wide_at.size != total or np.count_nonzero(d_all[wide_at]):
        raise _fail("'d' must be 0 exactly at the positions in 'ep'")
    full = ns_all > 0
    at = (np.cumsum(ns_all) - ns_all)[full]
    # strictly increasing: a delta may be 0 only where a histogram starts
    zero = wide_at[wide == 0]
    if zero.size:
        where = np.minimum(np.searchsorted(at, zero), at.size - 1)
        if not np.array_equal(at[where], zero):
            raise _fail("indices must be strictly increasing")
    # each histogram's deltas add up to its last index: the narrow ones (< 2^32
    # as uint32: n < 2^16 of them below 2^8) and the wide ones in it
    lasts = np.add.reduceat(d_all, at, dtype=np.uint32).astype(np.int64)
    if wide.size:
        owner = np.searchsorted(at, wide_at, side="right") - 1
        lasts += np.bincount(owner, weights=wide, minlength=at.size).astype(np.int64)
    if int(lasts.max()) >= COUNTS_LEN:
        raise _fail("index out of range")
    narrow_counts = _counts(cols[5], widths)
    if np.count_nonzero(narrow_counts) != total:
        raise _fail("zero count in sparse form")
    # n < 2^16 counts: below 2^16 each their sum fits uint32
    sum_type = np.uint32 if narrow_counts.itemsize <= 2 else np.uint64
    sums = np.add.reduceat(narrow_counts, at, dtype=sum_type).astype(np.int64)
    if not np.array_equal(sums, (count - overflow)[full]):
        raise _fail("counts do not add up to count")
    _check_empty(count, overflow, mn, mx, ~full)
    firsts = d_all[at].astype(np.int64)
    first_wide = firsts == 0  # where 'd' is 0, 'ep' is (checked above)
    if first_wide.any():
        firsts[first_wide] = wide[np.searchsorted(wide_at, at[first_wide])]
    fmn, fmx, fover = mn[full], mx[full], overflow[full] > 0
    if int(fmn.max()) > HIGHEST or not np.array_equal(indices_of(fmn), firsts):
        raise _fail("min is not in the first non-empty slot")
    if not np.array_equal(fmx > HIGHEST, fover):
        raise _fail("max is above the range if and only if there is overflow")
    if not np.array_equal(indices_of(np.where(fover, 0, fmx)), np.where(fover, 0, lasts)):
        raise _fail("max is not in the last non-empty slot")
    return WireBatch(
        d_all, at, lasts, narrow_counts.astype(np.uint64), lengths, scalars, (wide_at, wide)
    )


def _check_shape(table: Any, size: int) -> None:
    if type(table) is not list or len(table) != len(TABLE_FIELDS):
        raise _fail(f"expected a list of the {len(TABLE_FIELDS)} fields {', '.join(TABLE_FIELDS)}")
    h, ns, sc, d, ep, ev, cw, c = table
    if type(h) is not int or h != size:
        raise _fail(f"expected {size} histograms (three per series)")
    if not all(type(b) is bytes for b in (ns, sc, d, ep, ev, c)):
        raise _fail("'ns', 'sc', 'd', 'ep', 'ev' and 'c' must be bytes")
    if len(ns) != 2 * h or len(sc) != 32 * h:
        raise _fail("'ns' and 'sc' must hold h entries")
    if type(cw) is not int or cw not in _TABLE_WIDTHS:
        raise _fail("count width must be 1, 2 or 4")


def _counts(parts: list[bytes], widths: list[int]) -> npt.NDArray[Any]:
    """The counts as they arrived; in the widest of their widths if they differ."""
    if len(set(widths)) == 1:
        return np.frombuffer(b"".join(parts), dtype=_COUNT_DTYPES[widths[0]])
    return np.concatenate(
        [np.frombuffer(c, dtype=_COUNT_DTYPES[w]) for c, w in zip(parts, widths, strict=True)],
        dtype=_COUNT_DTYPES[max(widths)],
    )


def _table_sums(ns: npt.NDArray[np.int64], sizes: Sequence[int]) -> list[int]:
    """Each table's sum of `ns` (sizes[k] entries each)."""
    out = [0] * len(sizes)
    starts = list(accumulate(sizes, initial=0))
    used = [k for k, size in enumerate(sizes) if size]
    if used:
        sums = np.add.reduceat(ns, [starts[k] for k in used]).tolist()
        for k, value in zip(used, sums, strict=True):
            out[k] = value
    return out


def _check_scalars(
    count: npt.NDArray[np.int64],
    overflow: npt.NDArray[np.int64],
    mn: npt.NDArray[np.int64],
    mx: npt.NDArray[np.int64],
) -> None:
    # int64: every value <= 2^63 - 1 already; negative ones are refused here
    if count.size and not (
        int(overflow.min()) >= 0
        and int(mn.min()) >= 0
        and bool((overflow <= count).all())
        and bool((mn <= mx).all())
    ):
        raise _fail("count, overflow, min, max need 0 <= overflow <= count and 0 <= min <= max")


def _check_empty(
    count: npt.NDArray[np.int64],
    overflow: npt.NDArray[np.int64],
    mn: npt.NDArray[np.int64],
    mx: npt.NDArray[np.int64],
    empty: npt.NDArray[np.bool_],
) -> None:
    """Histograms without slots hold nothing, or only overflow (min above the range)."""
    if not empty.any():
        return
    c, o, lo, hi = count[empty], overflow[empty], mn[empty], mx[empty]
    if not np.array_equal(c, o):
        raise _fail("counts do not add up to count")
    if bool(((c == 0) & (hi != 0)).any()):
        raise _fail("empty histogram with non-zero min or max")
    if bool(((c > 0) & (lo <= HIGHEST)).any()):
        raise _fail("only overflow recorded but min is in range")


_NO_COUNTS: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
_NO_DELTAS: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
_NO_STARTS: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
_NO_SLOTS: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
