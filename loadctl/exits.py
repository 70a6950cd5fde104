"""Exit codes, one meaning each (documented in the README)."""

from __future__ import annotations

import sys
from typing import NoReturn

OK = 0  # the run completed and every threshold held
THRESHOLD_FAILED = 1  # a threshold failed
USAGE = 2  # bad options, bad scenario, bad keys
RUN_FAILED = 3  # the run could not complete (no agents, lost coordinator, degraded if asked)
INTERRUPTED = 130  # Ctrl-C


def fail(message: str, code: int = USAGE) -> NoReturn:
    """One line on stderr naming the cause and the fix; no traceback."""
    print(f"loadctl: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
