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
"""HdrHistogram's slot layout: constants, per-slot bounds and value -> slot index.
(See the comment above for why a slot is <= 0.1 % wide and why merging is exact.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

LOWEST = 1
HIGHEST = 3_600_000_000_000
SIGNIFICANT_DIGITS = 3
_SUB_HALF_MAG = 10  # log2(sub_bucket_count / 2)
_SUB_BITS = _SUB_HALF_MAG + 1  # bit length of sub_bucket_count - 1 (2047)
_SUB_MASK = (1 << _SUB_BITS) - 1
_BUCKET_COUNT = 32
COUNTS_LEN = (_BUCKET_COUNT + 1) << _SUB_HALF_MAG  # 33792
_MAX_INT = (1 << 63) - 1


def _slot_tables() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    i = np.arange(COUNTS_LEN, dtype=np.int64)
    shift = np.maximum((i >> _SUB_HALF_MAG) - 1, 0)
    lowest = np.where(i < 2 << _SUB_HALF_MAG, i, ((i & 1023) + 1024) << shift)
    width = np.int64(1) << shift
    return lowest, lowest + width - 1, lowest + (width >> 1)


# Per slot: lowest value, highest value, middle value (HdrHistogram's
# "median equivalent value", used for mean and stdev).
SLOT_LOWEST, SLOT_HIGHEST, SLOT_MIDDLE = _slot_tables()


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
