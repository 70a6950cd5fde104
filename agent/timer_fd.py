"""A Linux timerfd on CLOCK_MONOTONIC, armed at absolute `perf_counter` times.

A timerfd is a file descriptor that becomes readable when its timer expires;
the kernel keeps it with nanosecond resolution (an hrtimer, no timer slack), so
an event loop that watches it with `add_reader` wakes from epoll within a few
microseconds of the deadline instead of at uvloop's next whole millisecond.

Python 3.13 has `os.timerfd_create` and `os.timerfd_settime_ns`; on older
versions the same two libc calls are made through ctypes. `perf_counter()` is
`clock_gettime(CLOCK_MONOTONIC)` on Linux, so a deadline on it is armed as it
is (TFD_TIMER_ABSTIME): no conversion between clocks, no drift. Where any of
this does not hold (not Linux, another clock, no libc symbol), `unavailable()`
says why and callers use something else.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from typing import Any

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
# TFD_NONBLOCK and TFD_CLOEXEC are defined as O_NONBLOCK and O_CLOEXEC.
_CREATE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_PERF_COUNTER_CLOCK = "clock_gettime(CLOCK_MONOTONIC)"


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class _Libc:
    """timerfd_create / timerfd_settime from libc, for Pythons before 3.13."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc is there
        self.create = libc.timerfd_create
        self.create.argtypes = (ctypes.c_int, ctypes.c_int)
        self.create.restype = ctypes.c_int
        self.settime = libc.timerfd_settime
        self.settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        )
        self.settime.restype = ctypes.c_int


_libc: _Libc | None = None
# Python 3.13+ (looked up by name: the type stubs of older versions lack them)
_os_create: Callable[..., int] | None = getattr(os, "timerfd_create", None)
_os_settime_ns: Callable[..., Any] | None = getattr(os, "timerfd_settime_ns", None)


def unavailable() -> str | None:
    """Why a TimerFd cannot be used here, or None if it can."""
    global _libc
    if not sys.platform.startswith("linux"):
        return f"timerfd is Linux only (this is {sys.platform})"
    clock = time.get_clock_info("perf_counter").implementation
    if clock != _PERF_COUNTER_CLOCK:
        return f"perf_counter is {clock}, not CLOCK_MONOTONIC"
    if _os_create is None and _libc is None:
        try:
            _libc = _Libc()
        except (OSError, AttributeError) as error:
            return f"no timerfd in libc: {error}"
    return None


class TimerFd:
    """One non-blocking timerfd. `arm(deadline)` sets it to expire once at the
    absolute `perf_counter()` time `deadline` (re-arming replaces the previous
    setting); the fd is then readable until `drain()` reads the expiry count."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason is not None:
            raise OSError(reason)
        self._os_settime_ns = _os_settime_ns if _os_create is not None else None
        if _os_create is not None:
            self.fd: int = _os_create(CLOCK_MONOTONIC, flags=_CREATE_FLAGS)
        else:
            assert _libc is not None
            self._settime = _libc.settime
            self._spec = _Itimerspec()  # reused: arming allocates nothing
            self._spec_ref = ctypes.byref(self._spec)
            fd = _libc.create(CLOCK_MONOTONIC, _CREATE_FLAGS)
            if fd < 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")
            self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def arm(self, deadline: float) -> None:
        # An it_value of zero would disarm the timer: a deadline at or before the
        # clock's zero is due anyway, so it is armed for 1 ns (it expires at once).
        self._set(max(1, int(deadline * 1e9)))

    def disarm(self) -> None:
        self._set(0)

    def _set(self, ns: int) -> None:
        if self._os_settime_ns is not None:
            self._os_settime_ns(self.fd, flags=TFD_TIMER_ABSTIME, initial=ns)
            return
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
        if self._settime(self.fd, TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")

    def drain(self) -> int:
        """Read the number of expiries since the last arm or read (0 if none: the
        fd was re-armed after epoll reported it)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), sys.byteorder)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the fd (once: a second call does nothing, so a reused fd number
        is never closed by mistake)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0
