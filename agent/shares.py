"""The agent's shares of the work over time, and what it owns under them.

A share holds from an interval boundary on (`Share.since`). For a phase, the
boundary of share e maps to the first item K_e due at or after it; items in
[K_e, K_{e+1}) follow share e's stripe, re-based at K_e (see
`loadctl.protocol.segments`). Every agent holds the same list of boundaries
(the coordinator sends each update to everyone), so ownership agrees.
"""

from __future__ import annotations

from collections.abc import Callable

from loadctl.protocol.messages import Share
from loadctl.protocol.segments import Stripe, next_item


class ShareBook:
    def __init__(self, first: Share, interval: float) -> None:
        self.interval = interval
        self.shares: list[Share] = [first]
        self._stripes: dict[tuple[int, ...], Stripe] = {}

    def add(self, share: Share) -> None:
        kept = [s for s in self.shares if s.since < share.since]
        self.shares = [*kept, share]

    def stripe(self, share: Share) -> Stripe:
        stripe = self._stripes.get(share.weights)
        if stripe is None:
            stripe = self._stripes[share.weights] = Stripe.from_weights(share.weights)
        return stripe

    def boundaries(self, first_item_at: Callable[[float], int]) -> list[int]:
        """K_e for each share, given the phase's 'first item at or after run time t'."""
        return [first_item_at(s.since * self.interval) for s in self.shares]

    def next_owned(self, start: int, first_item_at: Callable[[float], int]) -> int | None:
        """This agent's first item ≥ start across the share epochs, or None."""
        bounds = self.boundaries(first_item_at)
        k = max(start, bounds[0])  # an agent that joined late owns nothing before its first share
        e = max(i for i, b in enumerate(bounds) if b <= k)
        while e < len(self.shares):
            share = self.shares[e]
            end = bounds[e + 1] if e + 1 < len(bounds) else None
            found = next_item(self.stripe(share), share.index, k, base=bounds[e])
            if found is not None and (end is None or found < end):
                return found
            if end is None:
                return None
            k, e = end, e + 1
        return None

    def owns(self, item: int, first_item_at: Callable[[float], int]) -> bool:
        return self.next_owned(item, first_item_at) == item

    def current(self, run_time: float) -> Share | None:
        chosen = None
        for s in self.shares:
            if s.since * self.interval <= run_time:
                chosen = s
        return chosen
