"""Data feeders on the agent: rows for users and iterations.

Rows come from the plan (`Plan.files["data/NAME"]`: the rows this agent may
use, each with its index in the file) or, for `shared_path: true`, from the
file itself, cut to the same shard the coordinator would have shipped. One
`Feeder` per source serves every phase and user on the agent:

* unique-per-user: user u of a phase takes row `first + u` of the phase's
  block (see `protocol.journey.user_blocks`) for its whole life; a user that
  moved here after a rebalance takes a spare row if the shard has one;
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
from typing import Any

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


class Feeder:
    def __init__(
        self, source: DataSource, rows: list[tuple[int, Any]], phases: tuple[Phase, ...]
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

    def __len__(self) -> int:
        return len(self.rows)

    def for_user(self, phase: str, user: int) -> Any:
        """unique-per-user: the user's own row (the same one if it starts again)."""
        key = (phase, user)
        row = self._given.get(key, NO_ROW)
        if row is not NO_ROW:
            return row
        first, _ = self.blocks.get(phase, (0, 0))
        row = self.by_index.get(first + user, NO_ROW)
        if row is NO_ROW and self._spares:
            row = self._spares.pop(0)
        if row is NO_ROW and self.source.wrap and self.rows:
            row = self.rows[self._cursor % len(self.rows)]
            self._cursor += 1
        if row is NO_ROW:
            self._warn(f"user {user} of phase {phase} has no row of its own here")
        else:
            self._given[key] = row
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


def load_feeders(scenario: Scenario, plan: Plan) -> dict[str, Feeder]:
    """A feeder per data source the scenario's phases use."""
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
                raise FeederError(f"the plan carries no rows for data source {name!r}")
            rows = decode_rows(shipped)
        out[name] = Feeder(source, rows, scenario.phases)
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
        return []  # joined mid-run: the unique rows were all handed out at the start
    indices = shard(source, len(rows), scenario.phases, share.weights, share.index)
    return [(i, rows[i]) for i in indices]
