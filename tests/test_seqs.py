"""The coordinator's bookkeeping of snapshot seqs, and reading a snapshot's head
from its first bytes (it is acked on arrival, decoded later)."""

from __future__ import annotations

import random

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from loadctl.coordinator.seqs import SeqSet
from loadctl.coordinator.timeline import Timeline
from loadctl.protocol.codec import decode, encode, peek_snapshot
from loadctl.protocol.histogram import Histogram
from loadctl.protocol.histogram_table import to_table
from loadctl.protocol.messages import Heartbeat, Series, Snapshot


@given(st.lists(st.integers(min_value=-3, max_value=60), max_size=120))
def test_seqset_is_a_set_of_the_seqs_added(seqs: list[int]) -> None:
    got = SeqSet()
    for s in seqs:
        got.add(s)
    want = set(seqs)
    assert len(got) == len(want)
    for s in range(-5, 70):
        assert (s in got) == (s in want)
    for last in range(0, 65):
        missing = [s for s in range(1, last + 1) if s not in want]
        assert got.missing_up_to(last) == missing
        assert got.has_all_up_to(last) == (not missing)


def test_seqset_memory_stays_flat_over_a_long_run() -> None:
    seqs = list(range(1, 100_001))
    rng = random.Random(3)
    for i in range(0, len(seqs) - 3, 50):  # a few arrive out of order
        j = i + rng.randrange(1, 3)
        seqs[i], seqs[j] = seqs[j], seqs[i]
    got = SeqSet()
    for s in seqs:
        got.add(s)
        assert len(got.above) <= 3
    assert got.upto == 100_000 and not got.above


def _snapshot(seq: int, run_id: str = "run-1", agent_id: str = "agent-a") -> Snapshot:
    latency = Histogram()
    latency.record_many([1_000_000 + 1000 * i for i in range(50)])
    table = to_table([latency, latency, Histogram()])
    series = Series("p", "get", 50, {"2xx": 50})
    return Snapshot(run_id, agent_id, seq, 3, 3.0, 4.0, (series,), table, 0, 0, 1.0, 1 << 20)


def test_peek_snapshot_reads_run_agent_and_seq() -> None:
    frame = encode(_snapshot(17))
    assert peek_snapshot(frame) == ("run-1", "agent-a", 17)
    assert decode(frame) == _snapshot(17)


def test_peek_snapshot_refuses_anything_else() -> None:
    frame = encode(_snapshot(5))
    assert peek_snapshot(encode(Heartbeat("running", 0.0, 0, 0, 1.0))) is None
    assert peek_snapshot(b"") is None
    assert peek_snapshot(b"\xc1garbage") is None
    assert peek_snapshot(frame[:10]) is None
    wrong_version = msgpack.packb([999, 7, ["r", "a", 1]])
    assert peek_snapshot(wrong_version) is None
    wrong_types = msgpack.packb([msgpack.unpackb(frame)[0], 7, [1, "a", 1, 0]])
    assert peek_snapshot(wrong_types) is None


def test_timeline_merges_each_seq_once() -> None:
    timeline = Timeline()
    assert timeline.add(_snapshot(1))
    assert not timeline.add(_snapshot(1))  # a resend after a lost ack
    assert timeline.seen("agent-a", 1) and not timeline.seen("agent-a", 2)
    results = timeline.add_many([_snapshot(2), _snapshot(2), _snapshot(3)])
    assert results == [True, False, True]
    assert timeline.duplicates == 2
    assert timeline.run_totals().latency.count == 150
