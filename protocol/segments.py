"""Deterministic splitting of work across weighted agents.

The model is k6's execution segments, reduced to what we need. The global
work is a sequence of items: arrival k of a phase's schedule (open model), or
user u of a phase's user count (closed model). A `Stripe` assigns every item
to exactly one agent by repeating one period of owners; the period is built
with smooth weighted round robin, so that any window of consecutive items is
split in proportion to the weights within ±1 item per agent. Hence:

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
        current = [0] * len(reduced)
        owners = []
        for _ in range(period):
            for i, w in enumerate(reduced):
                current[i] += w
            best = max(range(len(reduced)), key=lambda i: (current[i], -i))
            current[best] -= period
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
