"""Logging set-up shared by the commands: one plain line per event on stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False, prefix: str = "loadctl") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix} %(levelname)s %(message)s"))
    root = logging.getLogger("loadctl")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
