"""The compiled table kernel, or a skip: an install without a C compiler has none.
The README's test command builds it and sets LOADCTL_REQUIRE_KERNEL=1, so there a
missing kernel fails the tests instead of skipping them."""

from __future__ import annotations

import os

import pytest

from loadctl.protocol import histogram_table


def kernel_or_skip() -> None:
    if histogram_table.KERNEL is not None:
        return
    why = "the compiled table kernel is not built (no C compiler or Python headers?)"
    if os.environ.get("LOADCTL_REQUIRE_KERNEL"):
        pytest.fail(why + "; LOADCTL_REQUIRE_KERNEL is set")
    pytest.skip(why)
