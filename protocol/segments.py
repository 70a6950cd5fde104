"""Deterministic splitting of work across weighted agents.

The model is k6's execution segments, reduced to what we need. The global
work is a sequence of items: arrival k of a phase's schedule (open model), or
user u of a phase's user count (closed model). A `Stripe` assigns every item
to exactly one agent by repeating one period of owners. The period is built
with Tijdeman's chairman-assignment algorithm: for n agents with a positive
weight, agent i's count over the first k items of a stripe is within
1 - 1/(2n-2) of k·w_i/W, so over any window of consecutive items it is less
than 2 from its exact share: within ±1 of that share rounded down or up.
(Exactly ±1 of the exact share cannot be had for every set of weights: no
sequence at all achieves it for weights 2:4:5. Smooth weighted round robin,
used before, exceeds even the ±2 bound, e.g. for 74:77:74:5:5:4:1:1:5:5.)
Hence:

* union of the agents' subsets is the whole sequence, each item exactly once
  (each position of the period has exactly one owner);
* every agent's arrivals are evenly interleaved in time, not bunched;
* user counts add up exactly: agent i runs the users u < U that it owns.

When the set of agents changes at time T, the schedule gives the first item
K at or after T; items < K keep the old stripe and items ≥ K follow a new
stripe re-based at K. Both stripes are pure functions of the weights, so the
coordinator and every agent compute the same K and the same owners without
talking: no item is lost or doubled at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from math import gcd


@dataclass(frozen=True, slots=True)
class Stripe:
    """Owners of one period of items; item k belongs to owners[(k - base) % period]."""

    owners: tuple[int, ...]
    agents: int

    @classmethod
    def from_weights(cls, weights: Sequence[int]) -> Stripe:
        if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError(f"weights must be non-negative with a positive sum: {weights!r}")
        common = reduce(gcd, (w for w in weights if w))
        reduced = [w // common for w in weights]
        period = sum(reduced)
        live = [i for i, w in enumerate(reduced) if w]
        if len(live) == 1:
            return cls(tuple(live * period), len(weights))
        # Tijdeman (1980): at step t, among the agents that would not run more
        # than B = 1 - 1/m (m = 2n - 2) ahead of their share t·r_i/period,
        # pick the earliest deadline (x_i + B) / r_i; all in integers.
        m = 2 * len(live) - 2
        given = [0] * len(reduced)  # x_i: items given to agent i so far
        owners = []
        for t in range(1, period + 1):
            best = -1
            for i in live:
                if m * (t * reduced[i] - given[i] * period) < period:
                    continue
                if (
                    best < 0
                    or (m * given[i] + m - 1) * reduced[best]
                    < (m * given[best] + m - 1) * reduced[i]
                ):
                    best = i
            if best < 0:  # impossible by Tijdeman's theorem
                raise AssertionError(f"no eligible agent at step {t} for {weights!r}")
            given[best] += 1
            owners.append(best)
        return cls(tuple(owners), len(weights))

    @property
    def period(self) -> int:
        return len(self.owners)

    def offsets(self, index: int) -> tuple[int, ...]:
        return tuple(p for p, owner in enumerate(self.owners) if owner == index)

    def owner(self, item: int, base: int = 0) -> int:
        return self.owners[(item - base) % self.period]

    def count(self, index: int, start: int, stop: int, base: int = 0) -> int:
        """How many items in [start, stop) agent `index` owns."""
        if stop <= start:
            return 0
        return self._count_below(index, stop - base) - self._count_below(index, start - base)

    def _count_below(self, index: int, n: int) -> int:
        full, rest = divmod(n, self.period)  # floor division keeps negative n consistent
        offsets = self.offsets(index)
        return full * len(offsets) + sum(1 for p in offsets if p < rest)

    def items(
        self, index: int, start: int, stop: int | None = None, base: int = 0
    ) -> Iterator[int]:
        """Agent `index`'s items ≥ start (and < stop), in increasing order."""
        offsets = self.offsets(index)
        if not offsets:
            return
        period = self.period
        cycle = (start - base) // period
        while True:
            first = base + cycle * period
            for p in offsets:
                k = first + p
                if k < start:
                    continue
                if stop is not None and k >= stop:
                    return
                yield k
            cycle += 1


def next_item(stripe: Stripe, index: int, start: int, base: int = 0) -> int | None:
    """Agent `index`'s first item ≥ start, or None if it owns nothing."""
    return next(stripe.items(index, start, base=base), None)


def split_count(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer (users) so the parts add up exactly and follow the stripe."""
    stripe = Stripe.from_weights(weights)
    return [stripe.count(i, 0, total) for i in range(len(weights))]
