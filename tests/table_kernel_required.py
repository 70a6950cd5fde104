"""The compiled extensions, or a skip: an install without a C compiler has none.
The README's test command builds them and sets LOADCTL_REQUIRE_KERNEL=1, so there a
missing extension fails the tests instead of skipping them."""

from __future__ import annotations

import os

import pytest

from loadctl.agent import fast_conn
from loadctl.protocol import histogram_table


def kernel_or_skip() -> None:
    """The histogram table's kernel (protocol/_table_kernel.c)."""
    if histogram_table.KERNEL is None:
        _missing("the compiled table kernel")


def lane_or_skip() -> None:
    """The fast engine's lane (agent/_lane.c)."""
    if fast_conn.LANE is None:
        _missing("the fast engine's compiled lane (loadctl.agent._lane)")


def _missing(what: str) -> None:
    why = f"{what} is not built (no C compiler or Python headers?)"
    if os.environ.get("LOADCTL_REQUIRE_KERNEL"):
        pytest.fail(why + "; LOADCTL_REQUIRE_KERNEL is set")
    pytest.skip(why)
