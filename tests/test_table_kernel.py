# The compiled table kernel against the numpy decoder it replaces: for every rule
# and for random damage to valid tables, both accept the same tables and refuse
# the others with the same message. And the kernel guards its own memory: lengths
# that disagree, offsets outside the block and an unchecked table raise, whoever
# calls it.
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mutations import damage
from table_kernel_required import kernel_or_skip
from test_histogram_table import BAD, GOOD, raw_table, valid_tables

from loadctl.protocol import histogram_table
from loadctl.protocol.histogram import COUNTS_LEN, HistogramWireError


@pytest.fixture(autouse=True)
def _kernel() -> None:
    kernel_or_skip()


def kernel_check(table: list[Any]) -> str | None:
    assert histogram_table.KERNEL is not None
    return histogram_table.KERNEL.check(*table)


def numpy_check(table: list[Any]) -> str | None:
    try:
        histogram_table._decode_columns([table], [table[0]])
    except HistogramWireError as error:
        return str(error).removeprefix("malformed histogram table: ")
    return None


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_rule_refused_with_numpys_message(case: str) -> None:
    for histograms in ([BAD[case]], [GOOD, BAD[case]], [BAD[case], GOOD]):
        table = raw_table(histograms)
        fault = kernel_check(table)
        assert fault is not None
        assert fault == numpy_check(table)
    assert kernel_check(raw_table([GOOD, GOOD])) is None


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_damaged_tables_get_the_same_verdict_as_numpy(data: st.DataObject) -> None:
    table = valid_tables()[data.draw(st.integers(0, 1))]
    for _ in range(data.draw(st.integers(1, 2))):
        damage(data, table, data.draw(st.integers(0, len(table) - 1)))
    try:
        histogram_table._check_fields(table, 3)  # both decoders need this first
    except HistogramWireError:
        return
    assert kernel_check(table) == numpy_check(table)


def test_scatter_equals_numpys_scatter() -> None:
    tables = valid_tables()
    sizes = [3, 3]
    offsets = np.array([5, 0, 3, 5, 1, 0], dtype=np.int64) * COUNTS_LEN
    ours = np.zeros((6, COUNTS_LEN), dtype=np.uint64)
    theirs = ours.copy()
    batch = histogram_table.decode_tables(tables, sizes)
    assert isinstance(batch, histogram_table.TableBatch)
    batch.scatter(ours.reshape(-1), offsets)
    histogram_table._decode_columns(tables, sizes).scatter(theirs.reshape(-1), offsets)
    assert ours.sum() > 0 and np.array_equal(ours, theirs)


def test_the_kernel_guards_its_memory() -> None:
    kernel = histogram_table.KERNEL
    assert kernel is not None
    table = valid_tables()[0]
    block = np.zeros((2, COUNTS_LEN), dtype=np.uint64)
    row = np.array([0, 1, 1], dtype=np.int64) * COUNTS_LEN
    kernel.scatter(block.reshape(-1), row.tobytes(), [table])
    scalars = np.frombuffer(table[2], "<i8").reshape(-1, 4)
    assert int(block.sum()) == int((scalars[:, 0] - scalars[:, 1]).sum())
    with pytest.raises(ValueError, match="inconsistent lengths"):
        kernel.check(*table[:3], table[3][:-1], *table[4:])
    with pytest.raises(ValueError, match="inconsistent lengths"):
        kernel.check(3, table[1], table[2], table[3], table[4], table[5], 3, table[7])
    with pytest.raises(ValueError, match="inconsistent lengths"):
        kernel.scatter(block.reshape(-1), row.tobytes(), [[*table[:3], table[3][:-1], *table[4:]]])
    with pytest.raises(TypeError):
        kernel.scatter(block.reshape(-1), row.tobytes(), [table[:7]])
    with pytest.raises(TypeError):
        kernel.scatter(block.reshape(-1), row.tobytes(), [5])
    beyond = np.array([0, 0, 2 * COUNTS_LEN - 10], dtype=np.int64)
    negative = np.array([0, -1, 0], dtype=np.int64)
    for offsets in (beyond, negative, row[:2]):
        with pytest.raises(ValueError, match="offset"):
            kernel.scatter(block.reshape(-1), offsets.tobytes(), [table])
    with pytest.raises(ValueError, match="8-byte counts"):
        kernel.scatter(np.zeros(3 * COUNTS_LEN, dtype=np.uint32), row.tobytes(), [table])
    with pytest.raises((TypeError, BufferError)):
        kernel.scatter(bytes(8 * 2 * COUNTS_LEN), row.tobytes(), [table])
    far = raw_table([([1000, COUNTS_LEN + 5], [1, 2], 3, 0, 0, 0)])  # check refuses it
    assert kernel.check(*far) == "index out of range"
    before = block.copy()
    with pytest.raises(RuntimeError, match="unchecked table: index out of range"):
        kernel.scatter(block.reshape(-1), np.zeros(1, dtype=np.int64).tobytes(), [far])
    assert int(block.sum()) - int(before.sum()) == 1  # the slot before the fault only


def test_tables_of_different_sizes_scatter_histogram_by_histogram() -> None:
    """The kernel walks histogram k of every table before histogram k + 1: tables of
    one, three and no histograms, and an empty table, land where their offsets say."""
    from loadctl.protocol.histogram import Histogram
    from loadctl.protocol.histogram_table import to_table

    rng = np.random.default_rng(5)
    groups = [[Histogram()], [Histogram() for _ in range(3)], [], [Histogram(), Histogram()]]
    for group in groups:
        for h in group:
            h.record_many(rng.lognormal(np.log(1e7), 1.0, 500))
        if group:
            group[0].record(0, count=3)  # an escape at a histogram's first slot
    tables = [to_table(g) for g in groups]
    rows = [2, 0, 1, 3, 3, 0]  # histograms in table order; rows shared across tables
    block = np.zeros((4, COUNTS_LEN), dtype=np.uint64)
    kernel = histogram_table.KERNEL
    assert kernel is not None
    kernel.scatter(block.reshape(-1), (np.array(rows) * COUNTS_LEN).tobytes(), tables)
    want = [Histogram() for _ in range(4)]
    for r, h in zip(rows, [h for g in groups for h in g], strict=True):
        want[r].merge(h)
    for r in range(4):
        assert np.array_equal(block[r], want[r]._counts), f"row {r}"


def test_the_kernel_leaks_nothing_on_any_path() -> None:
    """Checks and scatters that succeed, refuse or raise, 5,000 rounds: the memory
    Python allocates (PyMem, which the kernel uses too) does not grow, and the
    tables it held are released."""
    import gc
    import sys
    import tracemalloc

    kernel = histogram_table.KERNEL
    assert kernel is not None
    tables = valid_tables()
    far = raw_table([([1000, COUNTS_LEN + 5], [1, 2], 3, 0, 0, 0)])
    block = np.zeros((6, COUNTS_LEN), dtype=np.uint64).reshape(-1)
    offsets = (np.arange(6, dtype=np.int64) * COUNTS_LEN).tobytes()

    def paths() -> None:
        assert kernel.check(*tables[0]) is None and kernel.check(*far) is not None
        kernel.scatter(block, offsets, tables)
        for bad, raised in (([far], RuntimeError), ([tables[0][:7]], TypeError), ([5], TypeError)):
            with pytest.raises(raised):
                kernel.scatter(block, offsets[:8], bad)
        with pytest.raises(ValueError):
            kernel.scatter(block, offsets[:8], tables)

    for _ in range(200):
        paths()
    gc.collect()
    held = sys.getrefcount(tables[0][1])  # after the warm-up: the rounds must not add to it
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            paths()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 5,000 rounds"
    gc.collect()  # the last round's exceptions and their frames
    after = sys.getrefcount(tables[0][1])  # outside the assert: its rewriting holds values
    assert after == held
