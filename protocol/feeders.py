"""Data feeders: the scenario's `data` sources, their rows, and which agent holds which row.

A source is a CSV file (a header line, then rows of text) or JSON lines, read
in one of four modes: `sequential` and `random` share every row with every
agent; `unique-per-user` and `unique-per-iteration` hand out each row to one
user (or one iteration) at most, across the whole cluster.

The unique modes need no talk between agents because a shard is a pure
function of the source, the phases and the agent's share (`shard`): the
coordinator ships agent i the rows `shard(..., i)` names, and with
`shared_path: true` the agent reads the file and cuts the same shard itself.
unique-per-user rows are striped over agents the way users are (`Stripe`),
so each lands where its user runs: user u of a phase owns row first + u
(`user_blocks`) for its whole life, and phases sharing a source never share
a row. Rows no block claims are striped over agents in order.

Rows are shipped as JSON lines of `[index, row]` (`encode_rows`), so an agent
keeps the global index of each row it holds. Reading files and shipping them
are each side's own business; this is the arithmetic and the syntax.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadctl.protocol.fields import Fields, Path, ScenarioError
from loadctl.protocol.segments import Stripe
from loadctl.protocol.templates import check_name

if TYPE_CHECKING:
    from loadctl.protocol.scenario import Phase

DATA_MODES = ("unique-per-user", "unique-per-iteration", "sequential", "random")
UNIQUE_MODES = ("unique-per-user", "unique-per-iteration")
DATA_FORMATS = ("csv", "jsonl")


@dataclass(frozen=True, slots=True)
class DataSource:
    name: str
    file: str  # as written (the CLI makes relative paths absolute from the scenario's folder)
    format: str  # csv | jsonl
    mode: str
    wrap: bool
    shared_path: bool  # agents read `file` themselves instead of getting rows shipped

    @property
    def unique(self) -> bool:
        return self.mode in UNIQUE_MODES

    @property
    def per_user(self) -> bool:
        """Each user keeps one row (taken when it starts), not one per iteration."""
        return self.mode == "unique-per-user"


def parse_data(value: Any, path: Path = ("data",)) -> dict[str, DataSource]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScenarioError(path, "data maps a name to a source: {users: {file: users.csv}}")
    out: dict[str, DataSource] = {}
    for name, item in value.items():
        at = (*path, str(name))
        check_name(name, at, "data source")
        f = Fields(item, at, "data source")
        file = f.text("file")
        if not file:
            raise ScenarioError(f.at("file"), "name the file")
        lower = file.lower()
        guessed = (
            "csv"
            if lower.endswith(".csv")
            else "jsonl"
            if lower.endswith((".jsonl", ".ndjson"))
            else None
        )
        fmt = f.text("format", guessed, choices=DATA_FORMATS)
        if fmt is None:
            raise ScenarioError(
                f.at("file"),
                "say format: csv or format: jsonl (from the name "
                "only .csv, .jsonl and .ndjson are known)",
            )
        mode = f.text("mode", "sequential", choices=DATA_MODES)
        wrap = f.flag("wrap", mode == "sequential")
        shared = f.flag("shared_path", False)
        f.done()
        out[name] = DataSource(name, file, fmt, mode, wrap, shared)
    return out


def parse_rows(data: bytes, fmt: str, where: Path = ()) -> list[Any]:
    """Rows of a CSV file (header line; each row a mapping of text) or JSON lines."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ScenarioError(where, f"not UTF-8 text: {error}") from None
    rows: list[Any] = []
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] | None = None
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in record]
                if len(set(header)) != len(header) or not all(header):
                    raise ScenarioError(where, "the CSV header needs distinct, non-empty names")
                continue
            if len(record) != len(header):
                raise ScenarioError(
                    where,
                    f"CSV line {reader.line_num} has {len(record)} fields, "
                    f"the header has {len(header)}",
                )
            rows.append(dict(zip(header, record, strict=True)))
        return rows
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as error:
            raise ScenarioError(where, f"line {number} is not JSON: {error}") from None
    return rows


def user_blocks(phases: Sequence[Phase], source: str) -> dict[str, tuple[int, int]]:
    """unique-per-user: phase name -> (first row, users) — user u of the phase owns row
    first + u, so phases sharing a source never share a row."""
    out: dict[str, tuple[int, int]] = {}
    offset = 0
    for p in phases:
        if p.data == source and p.users is not None:
            out[p.name] = (offset, p.users.peak)
            offset += p.users.peak
    return out


def rows_needed(source: DataSource, phases: Sequence[Phase]) -> int:
    """The rows a run needs before it starts: users of unique-per-user sources without wrap."""
    if source.mode != "unique-per-user" or source.wrap:
        return 1
    return max(1, sum(n for _, n in user_blocks(phases, source.name).values()))


def shard(
    source: DataSource, rows: int, phases: Sequence[Phase], weights: Sequence[int], index: int
) -> list[int]:
    """Row indices agent `index` of `weights` holds: all of them for the shared modes;
    for the unique modes a part no other agent holds. unique-per-user rows follow the
    users (striped over agents as users are); the rest are striped in order."""
    if not source.unique:
        return list(range(rows))
    stripe = Stripe.from_weights(weights)
    out: list[int] = []
    used = 0
    if source.mode == "unique-per-user":
        for offset, users in user_blocks(phases, source.name).values():
            out.extend(offset + u for u in stripe.items(index, 0, users) if offset + u < rows)
            used = offset + users
    rest = range(used, rows)
    out.extend(used + k for k in stripe.items(index, 0, len(rest)))
    return out


def data_key(name: str) -> str:
    return f"data/{name}"


def encode_rows(pairs: Iterable[tuple[int, Any]]) -> bytes:
    """Shipped rows: one JSON `[index, row]` per line."""
    return b"".join(
        json.dumps([i, row], separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        for i, row in pairs
    )


def decode_rows(data: bytes) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for line in data.splitlines():
        if line.strip():
            index, row = json.loads(line)
            out.append((int(index), row))
    return out
