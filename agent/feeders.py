"""Data feeders on the agent: rows for users and iterations.

Rows come from the plan (`Plan.files["data/NAME"]`: the rows this agent may
use, each with its index in the file) or, for `shared_path: true`, from the
file itself, cut to the same shard the coordinator would have shipped. One
`Feeder` per source serves every phase and user on the agent:

* unique-per-user: user u of a phase takes row `first + u` of the phase's
  block (see `protocol.journey.user_blocks`) for its whole life; a user that
  moved here after a rebalance takes a spare row if the shard has one. When
  agents join mid-run, rows nobody has used change hands (see
  `protocol.handover`): given its runner's shares, a feeder stops using the
  rows that left it, and an agent that joins gets its rows in its plan;
* unique-per-iteration: each iteration takes the shard's next row;
* sequential: each iteration takes the file's next row (every agent walks
  the whole file);
* random: each iteration takes a random row.

Without `wrap`, a user that finds no row left stops (it is not restarted);
with it, the rows are used again from the first.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from loadctl.agent.shares import ShareBook
from loadctl.protocol.handover import Blocks, BoolArray, Epoch
from loadctl.protocol.journey import (
    DataSource,
    data_key,
    decode_rows,
    parse_data,
    parse_rows,
    shard,
    user_blocks,
)
from loadctl.protocol.messages import Plan
from loadctl.protocol.scenario import Phase, Scenario

log = logging.getLogger("loadctl.agent")

NO_ROW: Any = object()  # a feeder has no row left for this user or iteration


class FeederError(Exception):
    """The data a plan needs is not there (a shared path the agent cannot read)."""


class RunView(Protocol):
    """What a feeder reads of its runner (`agent.runner.Runner`)."""

    shares: ShareBook

    def run_time(self) -> float: ...


class Feeder:
    """The rows one data source gives this agent's users.

    Without `run` (unit tests, or an agent that cannot follow the shares) the
    rows are used as the plan shipped them. With it, a unique-per-user feeder
    follows the hand-over rules of `protocol.handover`: it uses a user's own
    row only while it is the row's holder, takes spares from its list less
    what it gave to agents that joined, and wraps only over rows that can no
    longer move.
    """

    def __init__(
        self,
        source: DataSource,
        rows: list[tuple[int, Any]],
        phases: tuple[Phase, ...],
        run: RunView | None = None,
    ) -> None:
        self.source = source
        self.rows = [row for _, row in rows]
        self.by_index = dict(rows)
        self.blocks = user_blocks(phases, source.name)
        block_end = max((a + n for a, n in self.blocks.values()), default=0)
        self._spares = [row for i, row in rows if i >= block_end]
        self._given: dict[tuple[str, int], Any] = {}
        self._cursor = 0
        self._warned = False
        self._run = run if source.per_user else None
        self._handover = Blocks(source.name, phases)
        self._own: dict[str, BoolArray] = {
            name: np.asarray([first + u in self.by_index for u in range(n)], dtype=bool)
            for name, (first, n) in self.blocks.items()
        }
        self._spare_order = [i for i, _ in rows if i >= block_end]  # as shipped
        self._spares_used = 0  # taken from the front of the current spare list
        self._spare_list: tuple[int, list[int]] | None = None  # (book version, list)
        self._pool: tuple[tuple[Any, ...], list[int]] | None = None  # wrap's rows, and key

    def __len__(self) -> int:
        return len(self.rows)

    def for_user(self, phase: str, user: int) -> Any:
        """unique-per-user: the user's own row (the same one if it starts again)."""
        key = (phase, user)
        row = self._given.get(key, NO_ROW)
        if row is not NO_ROW:
            return row
        if self._run is None:
            row = self._legacy_row(phase, user)
        else:
            row = self._own_or_spare(phase, user)
            if row is NO_ROW and self.source.wrap:
                row = self._wrap_row()
        if row is NO_ROW:
            self._warn(f"user {user} of phase {phase} has no row of its own here")
        else:
            self._given[key] = row
        return row

    def _legacy_row(self, phase: str, user: int) -> Any:
        first, _ = self.blocks.get(phase, (0, 0))
        row = self.by_index.get(first + user, NO_ROW)
        if row is NO_ROW and self._spares:
            row = self._spares.pop(0)
        if row is NO_ROW and self.source.wrap and self.rows:
            row = self.rows[self._cursor % len(self.rows)]
            self._cursor += 1
        return row

    # -- following the shares (protocol.handover) -------------------------------------------
    def _epochs(self) -> tuple[int, list[Epoch]]:
        assert self._run is not None
        book = self._run.shares
        return book.shares[-1].index, [Epoch(s.since, s.weights) for s in book.shares]

    def _own_or_spare(self, phase: str, user: int) -> Any:
        block = self.blocks.get(phase)
        if block is None:  # a phase the plan did not start with: no rows of its own
            return NO_ROW
        me, epochs = self._epochs()
        index = block[0] + user
        if index in self.by_index and self._handover.holder(phase, user, epochs) in (None, me):
            return self.by_index[index]
        spares = self._current_spares()
        if self._spares_used < len(spares):
            self._spares_used += 1
            return self.by_index[spares[self._spares_used - 1]]
        return NO_ROW

    def _current_spares(self) -> list[int]:
        assert self._run is not None
        version = self._run.shares.version
        if self._spare_list is None or self._spare_list[0] != version:
            me, epochs = self._epochs()
            spares = self._handover.spares_after(me, epochs, self._spare_order, self._own)
            self._spare_list = (version, spares)
        return self._spare_list[1]

    def _wrap_row(self) -> Any:
        """A row used again: only rows that can no longer change hands (the own rows
        held of users that may have started, and spares already taken)."""
        assert self._run is not None
        now = self._run.run_time()
        started = tuple(self._handover.started_by(name, now) for name in self.blocks)
        key = (self._run.shares.version, started, self._spares_used)
        if self._pool is None or self._pool[0] != key:
            me, epochs = self._epochs()
            pool = self._current_spares()[: self._spares_used]
            for (name, (first, _)), reached in zip(self.blocks.items(), started, strict=True):
                holder = self._handover.holders(name, epochs)
                mine = self._own[name] & ((holder == me) | (holder == -1))
                mine[reached:] = False
                pool += (first + np.flatnonzero(mine)).tolist()
            self._pool = (key, pool)
        pool = self._pool[1]
        if not pool:
            return NO_ROW
        row = self.by_index[pool[self._cursor % len(pool)]]
        self._cursor += 1
        return row

    def next_row(self, rng: random.Random) -> Any:
        """The row for one iteration (all modes but unique-per-user)."""
        if not self.rows:
            return NO_ROW
        if self.source.mode == "random":
            return rng.choice(self.rows)
        if self._cursor >= len(self.rows):
            if not self.source.wrap:
                self._warn("all rows are used (wrap: false): users stop")
                return NO_ROW
            self._cursor = 0
        row = self.rows[self._cursor]
        self._cursor += 1
        return row

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("data source %s: %s", self.source.name, what)


def load_feeders(scenario: Scenario, plan: Plan, run: RunView | None = None) -> dict[str, Feeder]:
    """A feeder per data source the scenario's phases use; `run` (the runner) lets the
    unique-per-user ones follow the shares when agents join (see `Feeder`)."""
    used = {p.data for p in scenario.phases if p.data is not None}
    out: dict[str, Feeder] = {}
    for name, source in parse_data(scenario.source.get("data")).items():
        if name not in used:
            continue
        if source.shared_path:
            rows = _read_shared(source, scenario, plan)
        else:
            shipped = plan.files.get(data_key(name))
            if shipped is None:
                if source.unique and plan.share.since != 0:
                    shipped = b""  # joined mid-run with nothing handed over
                else:
                    raise FeederError(f"the plan carries no rows for data source {name!r}")
            rows = decode_rows(shipped)
        out[name] = Feeder(source, rows, scenario.phases, run)
    return out


def _read_shared(source: DataSource, scenario: Scenario, plan: Plan) -> list[tuple[int, Any]]:
    try:
        raw = Path(source.file).read_bytes()
    except OSError as error:
        raise FeederError(
            f"data source {source.name!r} has shared_path: true, but this agent cannot read "
            f"{source.file}: {error.strerror or error}"
        ) from None
    rows = parse_rows(raw, source.format, ("data", source.name))
    share = plan.share
    if source.unique and share.since != 0:
        # joined mid-run: the plan names the rows handed over (none for
        # unique-per-iteration: those were all handed out at the start)
        handed = decode_rows(plan.files.get(data_key(source.name), b""))
        return [(i, rows[i]) for i, _ in handed if 0 <= i < len(rows)]
    indices = shard(source, len(rows), scenario.phases, share.weights, share.index)
    return [(i, rows[i]) for i in indices]
