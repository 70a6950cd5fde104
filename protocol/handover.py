"""unique-per-user rows that change hands when agents join mid-run: shared arithmetic.

At the start every row of a unique source has exactly one holder (`shard`).
An agent that joins later must get rows that no agent has used, and neither
side can ask the others what they used. Both sides can, however, bound it:
which users an agent may have started by a given time is a pure function of
the phases' user curves and the shares (with their `since`), and a row is
taken only when a user starts. So both sides compute the same hand-over:

* Own rows. User u of a phase owns row first + u (`user_blocks`) and starts
  no earlier than its phase's curve reaches u + 1 users. When a share from
  `since` comes, the rows of the users no curve has reached by
  `since + MARGIN` follow their users: their holder is the owner of u under
  the newest such share (`Blocks.holder`). An agent that joins with that
  share is shipped the ones it now holds; an agent already running keeps
  the rows it holds and no longer uses the ones that left it (a row whose
  new holder never had it is simply not used). A user that has started
  keeps its row where it is.
* Spare rows (those beyond the blocks) serve users that start on an agent
  without holding their own row (users that moved with a share). Each agent
  takes its spares in the order of its list, one per such user, so by time
  T it has taken at most the first `Blocks.spares_taken(...)` of them. At a
  share that brings in an agent (a weight that was 0 or absent), every
  running agent gives it, out of the rest of its list, the positions the new
  stripe assigns to it. A lost agent gives nothing (it may run on until its
  dead-man switch stops it), and what an agent planned anew did not take
  under its old plan is not used again: safe, if wasteful.

An agent reads both the shares and the curves on its own run clock, so
clock error between agents does not matter here; `MARGIN` covers a share
that reaches an agent up to a second after its `since` (the run sends it
0.3 s ahead) and the controller's reaction time. unique-per-iteration
rows are taken at a pace nobody can bound, so they never move: an agent
that joins gets none of them.

Every function here is deterministic over floats and integers that cross the
wire unchanged, so the coordinator (replaying the run's shares) and each
agent (its own `ShareBook`) agree to the row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from loadctl.protocol.journey import user_blocks
from loadctl.protocol.scenario import Phase
from loadctl.protocol.segments import Stripe

MARGIN: Final = 1.0  # seconds after a share's `since` in which the old share may still rule

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Epoch:
    """One share of the run as every agent holds it: from `since`, these weights."""

    since: float
    weights: tuple[int, ...]


def joined(before: Sequence[int], after: Sequence[int]) -> list[int]:
    """Positions that have weight in `after` and had none in `before`: the joiners."""
    return [q for q, w in enumerate(after) if w > 0 and (q >= len(before) or before[q] == 0)]


@lru_cache(maxsize=256)
def stripe_of(weights: tuple[int, ...]) -> Stripe:
    return Stripe.from_weights(weights)


def owners(weights: tuple[int, ...], n: int) -> IntArray:
    """The owner of each of the items 0..n-1 under `weights`."""
    stripe = stripe_of(weights)
    period = np.asarray(stripe.owners, dtype=np.int64)
    result: IntArray = period[np.arange(n, dtype=np.int64) % stripe.period]
    return result


def users_between(phase: Phase, lo: float, hi: float) -> int:
    """At least the most users `phase` wants at any run time in [lo, hi] (0 if none):
    user u may run in that window only if u is below it."""
    curve = phase.users
    if curve is None or hi < lo:
        return 0
    a, b = lo - phase.start, hi - phase.start
    if b < 0:
        return 0
    a = max(a, 0.0)
    best = 0
    start = 0.0
    for stage in curve.stages:
        end = start + stage.duration
        x0, x1 = max(a, start), min(b, end)
        if x0 <= x1 and x0 < end:
            slope = (stage.end_users - stage.start_users) / stage.duration
            v0 = stage.start_users + slope * (x0 - start)
            v1 = stage.end_users if x1 >= end else stage.start_users + slope * (x1 - start)
            best = max(best, math.ceil(max(v0, v1)))
        start = end
    return best


def split_tail(
    tail: Sequence[int], weights: tuple[int, ...], joiners: Sequence[int]
) -> tuple[list[int], dict[int, list[int]]]:
    """A running agent's untaken spares at a share: (kept, given to each joiner)."""
    stripe = stripe_of(weights)
    kept: list[int] = []
    given: dict[int, list[int]] = {q: [] for q in joiners}
    for j, row in enumerate(tail):
        owner = stripe.owner(j)
        if owner in given:
            given[owner].append(row)
        else:
            kept.append(row)
    return kept, given


class Blocks:
    """The unique-per-user blocks of one data source over the scenario's phases."""

    def __init__(self, source: str, phases: Sequence[Phase]) -> None:
        self.blocks = user_blocks(phases, source)  # phase -> (first row, users)
        self.phases = {p.name: p for p in phases if p.name in self.blocks}
        self.end = max((first + n for first, n in self.blocks.values()), default=0)

    def started_by(self, phase: str, t: float) -> int:
        """Users of `phase` that may have started by run time t: users u below this."""
        return users_between(self.phases[phase], -math.inf, t)

    def holder(self, phase: str, user: int, epochs: Sequence[Epoch]) -> int | None:
        """Who holds the user's own row after `epochs`: the owner of the user under the
        newest epoch whose `since` came before the user could start; None if none did
        (the row is where the first of `epochs` put it)."""
        found = None
        for epoch in epochs:
            if user >= self.started_by(phase, epoch.since + MARGIN):
                found = stripe_of(epoch.weights).owner(user)
        return found

    def holders(self, phase: str, epochs: Sequence[Epoch]) -> IntArray:
        """`holder` for every user of the phase's block, -1 for None."""
        users = self.blocks[phase][1]
        result: IntArray = np.full(users, -1, dtype=np.int64)
        for epoch in epochs:
            first_free = self.started_by(phase, epoch.since + MARGIN)
            if first_free < users:
                result[first_free:] = owners(epoch.weights, users)[first_free:]
        return result

    def moving(
        self, phase: str, since: float, weights: tuple[int, ...], position: int
    ) -> BoolArray:
        """Users whose own rows go to `position` with a share from `since`: users no
        curve reached by since + MARGIN, owned by `position` under `weights`."""
        users = self.blocks[phase][1]
        mask: BoolArray = owners(weights, users) == position
        mask[: min(users, self.started_by(phase, since + MARGIN))] = False
        return mask

    def spares_taken(
        self,
        position: int,
        epochs: Sequence[Epoch],
        upto: float,
        own: Mapping[str, BoolArray],
    ) -> int:
        """At least how many spares the agent at `position` has taken by run time `upto`.

        `epochs` are its shares, from the one its plan came with; `own[phase][u]` says
        whether its plan gave it user u's own row. A user started without holding its
        own row takes one spare, once (a restart keeps it): count the users it may have
        started in each share's time (widened by MARGIN) that it did not hold."""
        taken = 0
        for name, (_, users) in self.blocks.items():
            if users == 0:
                continue
            phase = self.phases[name]
            may: BoolArray = np.zeros(users, dtype=bool)
            for i, epoch in enumerate(epochs):
                lo = epoch.since - MARGIN
                hi = upto if i + 1 == len(epochs) else min(upto, epochs[i + 1].since + MARGIN)
                n = min(users, users_between(phase, lo, hi))
                if n > 0:
                    may[:n] |= owners(epoch.weights, n) == position
            holder = self.holders(name, epochs)
            holds = own[name] & ((holder == position) | (holder == -1))
            taken += int(np.count_nonzero(may & ~holds))
        return taken

    def spares_after(
        self,
        position: int,
        epochs: Sequence[Epoch],
        spares: Sequence[int],
        own: Mapping[str, BoolArray],
    ) -> list[int]:
        """A running agent's spare list after `epochs` (the first: its plan's share, with
        `spares` and `own` from the plan): less what it gave to agents that joined."""
        current = list(spares)
        for k in range(1, len(epochs)):
            joiners = joined(epochs[k - 1].weights, epochs[k].weights)
            if not joiners or position in joiners or not current:
                continue
            taken = self.spares_taken(position, epochs[: k + 1], epochs[k].since + MARGIN, own)
            kept, _ = split_tail(current[taken:], epochs[k].weights, joiners)
            current = current[:taken] + kept
        return current
