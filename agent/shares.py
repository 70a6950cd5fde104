"""The agent's shares of the work over time, and what it owns under them.

A share holds from a run time on (`Share.since`). For a phase, the
boundary of share e maps to the first item K_e due at or after it; items in
[K_e, K_{e+1}) follow share e's stripe, re-based at K_e (see
`loadctl.protocol.segments`). Every agent holds the same list of boundaries
(the coordinator sends each update to everyone), so ownership agrees.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from loadctl.protocol.messages import Share
from loadctl.protocol.segments import Stripe


class ShareBook:
    def __init__(self, first: Share, interval: float) -> None:
        self.interval = interval
        self.shares: list[Share] = [first]
        self.version = 0  # bumps on every change, so cursors know to recompute
        self._stripes: dict[tuple[int, ...], Stripe] = {}
        self._offsets: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}

    def add(self, share: Share) -> None:
        kept = [s for s in self.shares if s.since < share.since]
        self.shares = [*kept, share]
        self.version += 1

    def stripe(self, share: Share) -> Stripe:
        stripe = self._stripes.get(share.weights)
        if stripe is None:
            stripe = self._stripes[share.weights] = Stripe.from_weights(share.weights)
        return stripe

    def offsets(self, share: Share) -> tuple[int, ...]:
        key = (share.weights, share.index)
        found = self._offsets.get(key)
        if found is None:
            found = self._offsets[key] = self.stripe(share).offsets(share.index)
        return found

    def boundaries(self, first_item_at: Callable[[float], int]) -> list[int]:
        """K_e for each share, given the phase's 'first item at or after run time t'."""
        return [first_item_at(s.since) for s in self.shares]

    def cursor(self, first_item_at: Callable[[float], int]) -> Cursor:
        return Cursor(self, first_item_at)

    def next_owned(self, start: int, first_item_at: Callable[[float], int]) -> int | None:
        """This agent's first item ≥ start across the share epochs, or None."""
        return self.cursor(first_item_at).next_owned(start)

    def current(self, run_time: float) -> Share | None:
        chosen = None
        for s in self.shares:
            if s.since <= run_time:
                chosen = s
        return chosen


class Cursor:
    """`next_owned` for one phase, with the share boundaries cached between changes:
    it runs once per arrival, so it must cost a few hundred nanoseconds, not microseconds."""

    def __init__(self, book: ShareBook, first_item_at: Callable[[float], int]) -> None:
        self.book = book
        self.first_item_at = first_item_at
        self._version = -1
        self._bounds: list[int] = []

    def next_owned(self, start: int) -> int | None:
        book = self.book
        if self._version != book.version:
            self._bounds = book.boundaries(self.first_item_at)
            self._version = book.version
        bounds = self._bounds
        k = max(start, bounds[0])  # an agent that joined late owns nothing before its first share
        e = len(bounds) - 1
        while bounds[e] > k:
            e -= 1
        while e < len(bounds):
            share = book.shares[e]
            end = bounds[e + 1] if e + 1 < len(bounds) else None
            found = _next_in_stripe(book.offsets(share), book.stripe(share).period, k, bounds[e])
            if found is not None and (end is None or found < end):
                return found
            if end is None:
                return None
            k, e = end, e + 1
        return None


def _next_in_stripe(offsets: tuple[int, ...], period: int, start: int, base: int) -> int | None:
    if not offsets:
        return None
    cycle, position = divmod(start - base, period)
    i = bisect_left(offsets, position)
    if i == len(offsets):
        cycle, i = cycle + 1, 0
    return base + cycle * period + offsets[i]
