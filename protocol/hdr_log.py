# HdrHistogram interchange formats: the V2 compressed encoding of one histogram
# and the interval log (.hlog) of many.
#
# V2 encoding (HdrHistogram's "HISTF..." strings), as Java HdrHistogram, HdrHistogram_c
# and the `hdrhistogram` PyPI package write and read it:
#   base64( BE u32 0x1c849314 (compressed cookie), BE u32 length of what follows,
#           zlib( BE u32 0x1c849313 (encoding cookie), BE u32 payload length,
#                 BE u32 normalizing index offset (0), BE u32 significant figures,
#                 BE i64 lowest trackable, BE i64 highest trackable,
#                 BE f64 integer-to-double ratio (1.0),
#                 counts[0 .. last non-zero] as ZigZag LEB128 varints ) )
# A count c is written as zigzag(c) = 2c; a run of k zeros as zigzag(-k) = 2k - 1
# (HdrHistogram_c and the package write a lone zero as a run of 1, Java as a
# count of 0; every decoder reads both, and so does ours). The varints are
# LEB128 of at most 9 bytes, the 9th byte carrying the top 8 bits whole.
# Encoding and decoding are vectorised with numpy (a Python loop only decodes
# varints longer than 8 bytes, i.e. counts >= 2^55, never seen in practice).
#
# Interval log: header comments (format version, StartTime, BaseTime), the
# legend line, then one line per interval: [Tag=T,]start,length,max,HISTF...
# Timestamps are written relative to BaseTime = StartTime, "%.3f" as Java does;
# max is divided by max_value_unit_ratio (1e6: ns shown as ms). The writer is
# our own because the package's HistogramLogWriter.output_start_time fails on
# Python 3.11; its HistogramLogReader reads what we write.
from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, NamedTuple

import numpy as np
import numpy.typing as npt

from loadctl.protocol.histogram import Histogram, HistogramWireError

__all__ = [
    "IntervalLog",
    "LogInterval",
    "decode_v2",
    "encode_v2",
    "load_interval_log",
    "read_interval_log",
    "write_interval_log",
]

_ENCODING_COOKIE = 0x1C849303 | 0x10
_COMPRESSED_COOKIE = 0x1C849304 | 0x10
_COOKIE_BASE_MASK = ~0xF0 & 0xFFFFFFFF
_OUTER = struct.Struct(">II")
_HEADER = struct.Struct(">IIIIqqd")  # 40 bytes
_MAX_PAYLOAD = 4 * 1024 * 1024  # the hdrhistogram package's limit too
_MAX_HIGHEST = 1 << 61

_SHIFTS = np.array([0, 7, 14, 21, 28, 35, 42, 49, 56], dtype=np.uint64)
_THRESHOLDS = np.uint64(1) << _SHIFTS[1:]


def _fail(msg: str) -> HistogramWireError:
    return HistogramWireError(f"malformed HdrHistogram encoding: {msg}")


# -- V2 encoding ---------------------------------------------------------------


def _leb128(tokens: npt.NDArray[np.uint64]) -> bytes:
    if tokens.size == 0 or int(tokens.max()) < 0x80:  # the common case: 1 byte each
        return bytes(tokens.astype(np.uint8).data)
    nb = np.searchsorted(_THRESHOLDS, tokens, side="right") + 1  # bytes per varint
    at = np.cumsum(nb) - nb
    out = np.empty(int(at[-1] + nb[-1]), dtype=np.uint8)
    for j in range(9):
        sel = np.flatnonzero(nb > j)
        if sel.size == 0:
            break
        v = tokens[sel] >> _SHIFTS[j]
        if j < 8:
            v = (v & np.uint64(0x7F)) | np.where(nb[sel] > j + 1, np.uint64(0x80), np.uint64(0))
        out[at[sel] + j] = v.astype(np.uint8)
    return bytes(out.data)


def encode_v2(counts: npt.NDArray[np.uint64], lowest: int, highest: int, digits: int) -> bytes:
    """Base64 V2 compressed encoding of a counts array in HdrHistogram order."""
    nz = np.flatnonzero(counts != 0)
    varints = b""
    if nz.size:
        gaps = (np.diff(nz, prepend=-1) - 1).astype(np.uint64)
        tokens = np.empty(2 * nz.size, dtype=np.uint64)
        tokens[0::2] = 2 * gaps - np.uint64(1)  # gaps > 0 are kept, below
        tokens[1::2] = counts[nz] << np.uint64(1)
        keep = np.ones(tokens.size, dtype=bool)
        keep[0::2] = gaps > 0
        varints = _leb128(tokens[keep])
    header = _HEADER.pack(_ENCODING_COOKIE, len(varints), 0, digits, lowest, highest, 1.0)
    compressed = zlib.compress(header + varints)
    return base64.b64encode(_OUTER.pack(_COMPRESSED_COOKIE, len(compressed)) + compressed)


def _unleb128_slow(data: bytes) -> npt.NDArray[np.uint64]:
    out: list[int] = []
    i, n = 0, len(data)
    while i < n:
        v = shift = 0
        for k in range(9):
            if i >= n:
                raise _fail("truncated varint")
            byte = data[i]
            i += 1
            if k == 8:
                v |= byte << 56
                break
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(v)
    return np.array(out, dtype=np.uint64)


def _unleb128(data: bytes) -> npt.NDArray[np.uint64]:
    a = np.frombuffer(data, dtype=np.uint8)
    if a.size == 0 or int(a.max()) < 0x80:  # the common case: 1 byte each
        return a.astype(np.uint64)
    ends = np.flatnonzero(a < 0x80)
    if ends.size == 0 or ends[-1] != a.size - 1:
        return _unleb128_slow(data)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > 8:
        return _unleb128_slow(data)
    place = np.arange(a.size) - np.repeat(starts, lengths)
    parts = (a & 0x7F).astype(np.uint64) << (place.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(parts, starts)


def _unwrap(encoded: bytes | str) -> bytes:
    if isinstance(encoded, str):
        try:
            encoded = encoded.encode("ascii")
        except UnicodeEncodeError as e:
            raise _fail("not ASCII base64") from e
    if not isinstance(encoded, bytes | bytearray | memoryview):
        raise _fail(f"expected bytes or str, got {type(encoded).__name__}")
    raw = bytes(encoded).strip()
    if raw[:4] != _OUTER.pack(_COMPRESSED_COOKIE, 0)[:4]:
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _fail("bad base64") from e
    if len(raw) < _OUTER.size:
        raise _fail("too short")
    cookie, length = _OUTER.unpack_from(raw)
    if cookie & _COOKIE_BASE_MASK != 0x1C849304:
        raise _fail(f"not a V2 compressed histogram (cookie {cookie:#x})")
    if length != len(raw) - _OUTER.size:
        raise _fail("compressed length does not match")
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(raw[_OUTER.size :], _MAX_PAYLOAD + _HEADER.size)
    except zlib.error as e:
        raise _fail(f"zlib: {e}") from e
    if inflater.unconsumed_tail:
        raise _fail("payload too large")
    if not inflater.eof:
        raise _fail("truncated zlib stream")
    return payload


def _layout(lowest: int, highest: int, digits: int) -> tuple[int, int, int]:
    """(unit magnitude, sub-bucket half count magnitude, counts length) as
    HdrHistogram computes them."""
    unit = lowest.bit_length() - 1
    sub_count_mag = (2 * 10**digits - 1).bit_length()  # ceil(log2(2 * 10^digits))
    half = max(sub_count_mag - 1, 0)
    smallest_untrackable = (1 << (half + 1)) << unit
    buckets = 1
    while smallest_untrackable <= highest:
        smallest_untrackable <<= 1
        buckets += 1
    return unit, half, (buckets + 1) << half


def decode_v2(encoded: bytes | str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], int]:
    """Decode a V2 encoding (base64 or raw) into (lowest value of each non-empty
    slot in order, its count, highest value of the last non-empty slot).
    Raises HistogramWireError and nothing else on malformed input."""
    payload = _unwrap(encoded)
    if len(payload) < _HEADER.size:
        raise _fail("payload shorter than its header")
    cookie, plen, offset, digits, lowest, highest, _ratio = _HEADER.unpack_from(payload)
    if cookie & _COOKIE_BASE_MASK != 0x1C849303:
        raise _fail(f"not a V2 payload (cookie {cookie:#x})")
    if plen > len(payload) - _HEADER.size:
        raise _fail("payload length exceeds the data")
    if offset != 0:
        raise _fail("normalizing index offset is not supported")
    if not (1 <= digits <= 5 and lowest >= 1 and 2 * lowest <= highest <= _MAX_HIGHEST):
        raise _fail(f"bad layout lowest={lowest} highest={highest} digits={digits}")
    unit, half, counts_len = _layout(lowest, highest, digits)
    tokens = _unleb128(payload[_HEADER.size : _HEADER.size + plen])
    empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), 0
    if tokens.size == 0:
        return empty
    odd = (tokens & np.uint64(1)).astype(bool)
    half_tok = tokens >> np.uint64(1)
    if odd.any() and int(half_tok[odd].max()) >= counts_len:
        raise _fail("zero run beyond the counts array")
    advance = np.where(odd, half_tok + np.uint64(1), np.uint64(1)).astype(np.int64)
    ends = np.cumsum(advance)
    if int(ends[-1]) > counts_len:
        raise _fail("more counts than the layout holds")
    nonzero = ~odd & (half_tok != 0)
    if not nonzero.any():
        return empty
    idx = (ends - advance)[nonzero]
    counts = half_tok[nonzero]
    bucket = (idx >> half) - 1
    sub = (idx & ((1 << half) - 1)) + (1 << half)
    sub = np.where(bucket < 0, sub - (1 << half), sub)
    shift = np.maximum(bucket, 0) + unit
    values = sub << shift
    return values, counts, int(values[-1]) + (1 << int(shift[-1])) - 1


# -- interval log --------------------------------------------------------------

_LEGEND = '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"'
_START_RE = re.compile(r"#\[StartTime: *([\d.]+)")
_BASE_RE = re.compile(r"#\[BaseTime: *([\d.]+)")
_TAG_RE = re.compile(r"[^,\s]+")


class LogInterval(NamedTuple):
    start_s: float  # offset from the log's start time
    length_s: float
    histogram: Histogram
    tag: str | None


class IntervalLog(NamedTuple):
    start_time_s: float | None  # seconds since the epoch
    intervals: list[LogInterval]


@contextmanager
def _opened(target: str | os.PathLike[str] | IO[str], mode: str) -> Iterator[IO[str]]:
    if isinstance(target, str | os.PathLike):
        with open(target, mode, encoding="utf-8", newline="\n") as f:
            yield f
    else:
        yield target


def write_interval_log(
    dest: str | os.PathLike[str] | IO[str],
    start_time_s: float,
    intervals: Iterable[tuple[float, float, Histogram]],
    max_value_unit_ratio: float = 1e6,
    tag: str | None = None,
) -> None:
    """Write an HdrHistogram interval log (.hlog).

    start_time_s: run start, seconds since the epoch; intervals: (start offset
    from start_time_s in seconds, length in seconds, histogram of ns values)."""
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise ValueError(f"log tag must be non-empty without commas or spaces: {tag!r}")
    if not (start_time_s >= 0 and max_value_unit_ratio > 0):
        raise ValueError("start time must be >= 0 and max_value_unit_ratio > 0")
    when = datetime.fromtimestamp(start_time_s, tz=UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    prefix = f"Tag={tag}," if tag is not None else ""
    with _opened(dest, "w") as out:
        out.write("#[Logged with loadctl]\n")
        out.write("#[Histogram log format version 1.3]\n")
        out.write(f"#[StartTime: {start_time_s:.3f} (seconds since epoch), {when}]\n")
        out.write(f"#[BaseTime: {start_time_s:.3f} (seconds since epoch)]\n")
        out.write(_LEGEND + "\n")
        for start, length, hist in intervals:
            if not (start >= 0 and length >= 0):
                raise ValueError(f"interval start and length must be >= 0: {start}, {length}")
            payload = hist.to_hdr_v2().decode("ascii")
            peak = hist.max / max_value_unit_ratio
            out.write(f"{prefix}{start:.3f},{length:.3f},{peak:.3f},{payload}\n")


def load_interval_log(src: str | os.PathLike[str] | IO[str]) -> IntervalLog:
    """Read an interval log; interval starts are offsets from its StartTime
    (from the first interval if there is none), as HdrHistogram's readers do.
    Raises ValueError (HistogramWireError for a bad histogram) naming the line."""
    start: float | None = None
    base: float | None = None
    out: list[LogInterval] = []
    with _opened(src, "r") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith('"StartTimestamp"'):
                continue
            if line.startswith("#"):
                if m := _START_RE.match(line):
                    start = float(m.group(1))
                elif m := _BASE_RE.match(line):
                    base = float(m.group(1))
                continue
            tag = None
            if line.startswith("Tag="):
                tag, _, line = line[4:].partition(",")
            fields = line.split(",")
            try:
                if len(fields) != 4:
                    raise ValueError("expected start,length,max,histogram")
                ts, length = float(fields[0]), float(fields[1])
                hist = Histogram.from_hdr_v2(fields[3])
            except ValueError as e:
                raise type(e)(f"interval log line {lineno}: {e}") from e
            if start is None:
                start = ts
            if base is None:
                base = start if ts < start - 365 * 24 * 3600.0 else 0.0
            out.append(LogInterval(ts + base - start, length, hist, tag))
    return IntervalLog(start, out)


def read_interval_log(
    src: str | os.PathLike[str] | IO[str],
) -> list[tuple[float, float, Histogram]]:
    """(start offset s, length s, histogram) for each interval of a .hlog."""
    return [(iv.start_s, iv.length_s, iv.histogram) for iv in load_interval_log(src).intervals]
