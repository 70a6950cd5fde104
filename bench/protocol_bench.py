# Protocol benchmarks: the latency histogram's recording cost and the snapshot
# encode / decode+merge path, each against the `hdrhistogram` package measured in
# the same run. Prints figures (medians of several repeats); asserts nothing.
# Times are CPU time of this process (time.process_time), so other load on a
# shared machine inflates them less than wall-clock time would.
#
#   python bench/protocol_bench.py
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from hdrh.histogram import HdrHistogram

from loadctl.protocol.histogram import Histogram

REPEATS = 7
HISTOGRAMS_PER_SNAPSHOT = 10
SAMPLES_PER_HISTOGRAM = 1_150  # ~1,000 non-empty slots with the spread below


def median_seconds(fn: Callable[[], object], number: int, repeats: int = REPEATS) -> float:
    """Median over repeats of the mean CPU time of one call."""
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        times.append((time.process_time() - t0) / number)
    return statistics.median(times)


def latencies(rng: np.random.Generator, n: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Log-normal request latencies in ns: median 5 ms, a long right tail."""
    return rng.lognormal(np.log(5e6), 0.8, n)


def bench_record(rng: np.random.Generator) -> None:
    print("record (log-normal latencies, median 5 ms)")
    print(f"  {'batch':>8} {'ours ns/value':>14} {'hdrhistogram':>13} {'speed-up':>9}")
    for batch in (1_000, 100_000):
        values = latencies(rng, batch)
        ints = np.rint(values).astype(np.int64).tolist()
        ours = Histogram()
        ref = HdrHistogram(1, Histogram.HIGHEST, 3)

        def record_ours(values: Any = values, h: Histogram = ours) -> None:
            h.record_many(values)

        def record_ref(ints: list[int] = ints, h: HdrHistogram = ref) -> None:
            for v in ints:
                h.record_value(v)

        t_ours = median_seconds(record_ours, number=max(1, 200_000 // batch)) / batch
        t_ref = median_seconds(record_ref, number=1, repeats=5) / batch
        print(f"  {batch:>8,} {t_ours * 1e9:>14.1f} {t_ref * 1e9:>13.1f} {t_ref / t_ours:>8.0f}x")
    one = Histogram()
    t_one = median_seconds(lambda: one.record(4_321_000), number=20_000)
    print(f"  single record(): {t_one * 1e9:.0f} ns")


def bench_snapshots(rng: np.random.Generator) -> None:
    ours = []
    refs = []
    for _ in range(HISTOGRAMS_PER_SNAPSHOT):
        values = latencies(rng, SAMPLES_PER_HISTOGRAM)
        h = Histogram()
        h.record_many(values)
        ours.append(h)
        ref = HdrHistogram(1, Histogram.HIGHEST, 3)
        for v in np.rint(values).astype(np.int64).tolist():
            ref.record_value(v)
        refs.append(ref)
    slots = statistics.mean(int(h.to_wire()[0]) for h in ours)  # n, the first field
    print(
        f"snapshot of {HISTOGRAMS_PER_SNAPSHOT} histograms, "
        f"~{slots:.0f} non-empty slots each (msgpack included)"
    )

    def encode_ours() -> bytes:
        return msgpack.packb({"seq": 1, "h": [h.to_wire() for h in ours]})

    def encode_ref() -> bytes:
        return msgpack.packb({"seq": 1, "h": [r.encode() for r in refs]})

    blob_ours, blob_ref = encode_ours(), encode_ref()
    totals = [Histogram() for _ in ours]
    ref_totals = [HdrHistogram(1, Histogram.HIGHEST, 3) for _ in refs]

    def decode_ours() -> None:
        for total, wire in zip(totals, msgpack.unpackb(blob_ours)["h"], strict=True):
            total.add_wire(wire)

    def decode_ref() -> None:
        for total, enc in zip(ref_totals, msgpack.unpackb(blob_ref)["h"], strict=True):
            total.decode_and_add(enc)

    rows = [
        ("encode", median_seconds(encode_ours, 200), median_seconds(encode_ref, 20)),
        ("decode+merge", median_seconds(decode_ours, 200), median_seconds(decode_ref, 20)),
    ]
    head = ("", "ours µs", "snaps/s", "hdrhistogram µs", "snaps/s", "speed-up")
    print("  {:>13} {:>9} {:>9} {:>16} {:>9} {:>8}".format(*head))
    for name, t_ours, t_ref in rows:
        print(
            f"  {name:>13} {t_ours * 1e6:>9.1f} {1 / t_ours:>9,.0f} {t_ref * 1e6:>16.1f} "
            f"{1 / t_ref:>9,.0f} {t_ref / t_ours:>7.1f}x"
        )
    print(f"  snapshot size: ours {len(blob_ours):,} B, hdrhistogram {len(blob_ref):,} B")


def bench_queries(rng: np.random.Generator) -> None:
    h = Histogram()
    h.record_many(latencies(rng, 100_000))
    ref = HdrHistogram(1, Histogram.HIGHEST, 3)
    ref.add(HdrHistogram.decode(h.to_hdr_v2()))
    ps = [50.0, 90.0, 95.0, 99.0, 99.9, 99.99]
    t_ours = median_seconds(lambda: h.percentiles(ps), 200)
    t_ref = median_seconds(lambda: ref.get_percentile_to_value_dict(ps), 5)
    print(f"percentiles (6 at once): ours {t_ours * 1e6:.0f} µs, hdrhistogram {t_ref * 1e6:.0f} µs")
    t_ours = median_seconds(h.to_hdr_v2, 100)
    t_ref = median_seconds(ref.encode, 100)
    print(f"V2 encode: ours {t_ours * 1e6:.0f} µs, hdrhistogram {t_ref * 1e6:.0f} µs")


def main() -> None:
    rng = np.random.default_rng(20240601)
    bench_record(rng)
    print()
    bench_snapshots(rng)
    print()
    bench_queries(rng)


if __name__ == "__main__":
    main()
