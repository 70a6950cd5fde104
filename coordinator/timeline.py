"""The run's results as they arrive: per interval, per series, and in total.

Snapshots are merged by interval index (intervals are aligned to the run
start on the coordinator's clock, so every agent's interval i is the same
second). Duplicates — the same (agent, seq) resent after a lost ack — are
dropped here, so a resend can never count twice.

Cost: a snapshot's histograms arrive as one table, validated column by column
(`decode_tables`; the tables of many snapshots together) and merged into its
interval in one scatter: an open interval keeps the dense counts of all its
series as rows of one block. The run totals are not touched per snapshot: an
interval is folded into them once, when it is compacted or when the totals are
read, and only snapshots that arrive for an interval already folded are added
to both.

Memory: once an interval is a few intervals old it is compacted to the sparse
wire form, and re-inflated only if a late snapshot for it arrives. So memory
per interval is that of its non-empty buckets, not of the full layout, and
the duplicate check keeps per agent the highest seq below which all arrived
plus the few above it, not every (agent, seq) of the run.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np
import numpy.typing as npt

from loadctl.coordinator.seqs import SeqSet
from loadctl.coordinator.stats import Totals, validate_snapshots
from loadctl.protocol.histogram import (
    COUNTS_LEN,
    Histogram,
    HistogramBatch,
    add_batch,
    check_batch,
)
from loadctl.protocol.messages import Series, Snapshot

SeriesKey = tuple[str, str]  # (phase, request name)
_KEEP_OPEN = 4  # intervals behind the newest that stay dense
_ROWS = 3  # block rows per series: latency, service, send_lag


class _Compact:
    """A series of an old interval, in as few bytes as it takes: its counters and the
    sparse wire forms of its histograms, msgpack-packed and zlib-compressed (index
    deltas and small counts compress well) into one bytes object."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    @classmethod
    def of(cls, t: Totals) -> _Compact:
        plain = [
            t.arrivals,
            t.outcomes,
            [t.latency.to_wire(), t.service.to_wire(), t.send_lag.to_wire()],
            t.bytes_in,
            t.checks_passed,
            t.checks_failed,
        ]
        return cls(zlib.compress(msgpack.packb(plain, use_bin_type=True), 1))

    def inflate(self) -> Totals:
        out = Totals()
        self.inflate_into(out)
        return out

    def inflate_into(self, t: Totals) -> None:
        """Add this into `t` (an empty Totals, possibly over block rows)."""
        arrivals, outcomes, wires, bytes_in, passed, failed = msgpack.unpackb(
            zlib.decompress(self.blob), raw=False
        )
        t.arrivals += arrivals
        for k, v in outcomes.items():
            t.outcomes[k] = t.outcomes.get(k, 0) + v
        t.latency.add_wire(wires[0])
        t.service.add_wire(wires[1])
        t.send_lag.add_wire(wires[2])
        t.bytes_in += bytes_in
        t.checks_passed += passed
        t.checks_failed += failed


@dataclass
class IntervalRecord:
    index: int
    start: float
    end: float
    series: dict[SeriesKey, Totals | _Compact] = field(default_factory=dict)
    agents: set[str] = field(default_factory=set)
    active_users: dict[str, int] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    rss_bytes: dict[str, int] = field(default_factory=dict)
    folded: bool = False  # its series are in the run totals: later merges go to both
    # dense series: their histograms' counts are rows of one block (3 rows per series)
    _block: npt.NDArray[np.uint64] | None = field(default=None, repr=False)
    _rows: dict[SeriesKey, int] = field(default_factory=dict, repr=False)

    def totals(self, key: SeriesKey) -> Totals:
        """The dense totals of `key`, created (or re-inflated) if need be."""
        value = self.series.get(key)
        if isinstance(value, Totals):
            return value
        self._make_dense([key])
        dense = self.series[key]
        assert isinstance(dense, Totals)
        return dense

    def view(self, key: SeriesKey) -> Totals:
        value = self.series[key]
        return value.inflate() if isinstance(value, _Compact) else value

    @property
    def dense(self) -> bool:
        return bool(self._rows)

    def compact(self) -> None:
        for key, value in self.series.items():
            if isinstance(value, Totals):
                self.series[key] = _Compact.of(value)
        self._block = None
        self._rows = {}

    def merge(
        self, keys: Sequence[SeriesKey], series: Sequence[Series], batch: HistogramBatch
    ) -> None:
        """Add a snapshot's validated series (`batch` holds their histograms)."""
        if not keys:
            return
        missing = [k for k in keys if not isinstance(self.series.get(k), Totals)]
        if missing:
            self._make_dense(missing)
        rows: list[int] = []
        histograms: list[Histogram] = []
        targets: list[Totals] = []
        for k in keys:
            row = self._rows[k]
            t = self.series[k]
            assert isinstance(t, Totals)
            rows += (row, row + 1, row + 2)
            histograms += (t.latency, t.service, t.send_lag)
            targets.append(t)
        assert self._block is not None
        add_batch(self._block, rows, histograms, batch)
        for t, s in zip(targets, series, strict=True):
            t.add_counters(s)

    def histograms_for(self, keys: Iterable[SeriesKey]) -> list[Histogram]:
        """The dense histograms a merge of `keys` would add to (for a limit check)."""
        out: list[Histogram] = []
        for k in keys:
            t = self.series.get(k)
            if isinstance(t, Totals):
                out += (t.latency, t.service, t.send_lag)
        return out

    def _make_dense(self, keys: Sequence[SeriesKey]) -> None:
        """Give `keys` rows in the block (growing it) and dense Totals over them; a
        compacted series is re-inflated into its rows."""
        new = list(dict.fromkeys(k for k in keys if k not in self._rows))
        used = _ROWS * len(self._rows)
        need = used + _ROWS * len(new)
        block = self._block
        if block is None or need > block.shape[0]:
            grown: npt.NDArray[np.uint64] = np.zeros(
                (max(need, 2 * used), COUNTS_LEN), dtype=np.uint64
            )
            if block is not None and used:
                grown[:used] = block[:used]
            for k, row in self._rows.items():
                t = self.series[k]
                assert isinstance(t, Totals)
                t.latency.rebase(grown[row])
                t.service.rebase(grown[row + 1])
                t.send_lag.rebase(grown[row + 2])
            self._block = block = grown
        for k in new:
            row = _ROWS * len(self._rows)
            self._rows[k] = row
            t = Totals(
                latency=Histogram.over(block[row]),
                service=Histogram.over(block[row + 1]),
                send_lag=Histogram.over(block[row + 2]),
            )
            old = self.series.get(k)
            if isinstance(old, _Compact):
                old.inflate_into(t)
            self.series[k] = t


class Timeline:
    def __init__(self) -> None:
        self.intervals: dict[int, IntervalRecord] = {}
        self._totals: dict[SeriesKey, Totals] = {}
        self._seen: dict[str, SeqSet] = {}
        self._dense: set[int] = set()  # intervals whose series are (partly) dense
        self._unfolded: set[int] = set()  # intervals not yet folded into the totals
        self.duplicates = 0
        self.newest = -1

    @property
    def totals(self) -> dict[SeriesKey, Totals]:
        """The run's totals per series (every interval merged so far)."""
        for i in sorted(self._unfolded):
            self._fold(self.intervals[i])
        return self._totals

    def seen(self, agent_id: str, seq: int) -> bool:
        """Whether the snapshot (agent_id, seq) is merged already."""
        seen = self._seen.get(agent_id)
        return seen is not None and seq in seen

    def drop_duplicate(self) -> None:
        """Count a resent snapshot that was dropped before reaching `add` (still waiting
        or already merged: the intake tells from its first bytes)."""
        self.duplicates += 1

    def add(self, snapshot: Snapshot) -> bool:
        """Merge a snapshot; False if it was a duplicate. Raises ValueError if malformed."""
        merged = self._add(snapshot)
        self._compact_old()
        return merged

    def _add(self, snapshot: Snapshot) -> bool:
        seen = self._seen.get(snapshot.agent_id)
        if seen is not None and snapshot.seq in seen:
            self.duplicates += 1
            return False
        if snapshot.interval < 0 or snapshot.interval > 10_000_000:
            raise ValueError(f"interval index {snapshot.interval} out of range")
        series = snapshot.series
        # Validate every histogram first: a malformed one must not leave half a snapshot merged.
        batch = validate_snapshots((snapshot,))
        keys = [(s.phase, s.name) for s in series]
        record = self._record(snapshot)
        if record.folded:  # a late snapshot: into the interval and the totals
            totals = [self._totals.setdefault(k, Totals()) for k in keys]
            check_batch(record.histograms_for(keys), batch)  # both checked before either
            check_batch([h for t in totals for h in (t.latency, t.service, t.send_lag)], batch)
            record.merge(keys, series, batch)
            for k, (t, s) in enumerate(zip(totals, series, strict=True)):
                t.add_series(
                    s, (batch.parts(3 * k), batch.parts(3 * k + 1), batch.parts(3 * k + 2))
                )
        else:
            record.merge(keys, series, batch)
        self._note(snapshot, record)
        return True

    def add_many(self, snapshots: Sequence[Snapshot]) -> list[bool | ValueError]:
        """`add` for each snapshot in turn, each result (or ValueError) in its place;
        cheaper than one by one: the snapshots of an interval are validated together
        and merged in one scatter. A malformed one is still dropped alone: then that
        interval's snapshots go through `add` one by one."""
        results: list[bool | ValueError] = [False] * len(snapshots)
        groups: dict[int, list[int]] = {}  # interval -> positions of its new snapshots
        pending: set[tuple[str, int]] = set()
        for pos, snapshot in enumerate(snapshots):
            seen = self._seen.get(snapshot.agent_id)
            key = (snapshot.agent_id, snapshot.seq)
            if key in pending or snapshot.interval < 0 or snapshot.interval > 10_000_000:
                groups.setdefault(-1, []).append(pos)  # one by one (in order, below)
                continue
            if seen is not None and snapshot.seq in seen:
                self.duplicates += 1
                continue
            pending.add(key)
            record = self.intervals.get(snapshot.interval)
            group = -1 if record is not None and record.folded else snapshot.interval
            groups.setdefault(group, []).append(pos)
        one_by_one = groups.pop(-1, [])  # last: after the first of a resent pair
        for interval, positions in [*groups.items(), (-1, one_by_one)]:
            chosen = [snapshots[p] for p in positions]
            if interval >= 0 and len(chosen) > 1:
                series = [s for snapshot in chosen for s in snapshot.series]
                try:
                    batch = validate_snapshots(chosen)
                    record = self._record(chosen[0])
                    record.merge([(s.phase, s.name) for s in series], series, batch)
                except ValueError:
                    pass  # one of them is malformed: find it one by one
                else:
                    for p, snapshot in zip(positions, chosen, strict=True):
                        self._note(snapshot, record)
                        results[p] = True
                    continue
            for p, snapshot in zip(positions, chosen, strict=True):
                try:
                    results[p] = self._add(snapshot)
                except ValueError as error:
                    results[p] = error
        self._compact_old()
        return results

    def _record(self, snapshot: Snapshot) -> IntervalRecord:
        record = self.intervals.get(snapshot.interval)
        if record is None:
            record = self.intervals[snapshot.interval] = IntervalRecord(
                snapshot.interval, snapshot.start, snapshot.end
            )
            self._unfolded.add(snapshot.interval)
        self._dense.add(snapshot.interval)
        return record

    def _note(self, snapshot: Snapshot, record: IntervalRecord) -> None:
        """What a merged snapshot adds besides its series."""
        agent = sys.intern(snapshot.agent_id)  # one string per agent, not per interval
        record.agents.add(agent)
        record.active_users[agent] = snapshot.active_users
        record.cpu_percent[agent] = snapshot.cpu_percent
        record.rss_bytes[agent] = snapshot.rss_bytes
        seen = self._seen.get(agent)
        if seen is None:
            seen = self._seen[agent] = SeqSet()
        seen.add(snapshot.seq)
        if snapshot.interval > self.newest:
            self.newest = snapshot.interval

    def _compact_old(self) -> None:
        if not self._dense or min(self._dense) > self.newest - _KEEP_OPEN:
            return
        for i in [i for i in self._dense if i <= self.newest - _KEEP_OPEN]:
            record = self.intervals[i]
            if not record.folded:
                self._fold(record)
            record.compact()
            self._dense.discard(i)

    def _fold(self, record: IntervalRecord) -> None:
        for key, value in record.series.items():
            total = self._totals.get(key)
            if total is None:
                total = self._totals[key] = Totals()
            if isinstance(value, Totals):
                total.merge(value)
            else:
                value.inflate_into(total)
        record.folded = True
        self._unfolded.discard(record.index)

    def phase_totals(self, phase: str) -> Totals:
        out = Totals()
        for (p, _), t in self.totals.items():
            if p == phase:
                out.merge(t)
        return out

    def name_totals(self) -> dict[str, Totals]:
        out: dict[str, Totals] = {}
        for (_, name), t in self.totals.items():
            out.setdefault(name, Totals()).merge(t)
        return out

    def run_totals(self) -> Totals:
        out = Totals()
        for t in self.totals.values():
            out.merge(t)
        return out

    def ordered(self) -> list[IntervalRecord]:
        return [self.intervals[i] for i in sorted(self.intervals)]
