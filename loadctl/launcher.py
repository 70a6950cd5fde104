"""Starting agent processes on this machine, and never leaving one behind.

Agents are started as fresh commands (`python -m loadctl agent ...`), never
forked: a process that holds a ZeroMQ context must not fork. Each child asks
the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), so even a
`kill -9` of the launcher leaves no orphan load generator; the dead-man
switch is the second line of defence.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def loadctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "loadctl", *args]


class ProcessGroup:
    """Child processes that are stopped together (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            list(argv),
            preexec_fn=_die_with_parent,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]

    def stop(self, grace: float = 5.0) -> None:
        for p in self.alive():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.processes:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                p.wait(remaining)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def wait_all_quietly(self, timeout: float) -> None:
        """Give children time to exit on their own (they were told Bye)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait_all(timeout)

    def wait_all(self, timeout: float | None = None) -> list[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        codes = []
        for p in self.processes:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            codes.append(p.wait(remaining))
        return codes


@contextlib.contextmanager
def process_group() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop()
