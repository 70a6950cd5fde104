"""What the coordinator ships to agents: data rows, Python flows, TLS certificates.

Both travel inside the Plan (`Plan.files`), over the authenticated link:

* `data/NAME`: the rows of data source NAME that agent may use, as JSON lines
  `[row index, row]`. Unique modes ship each agent its own shard (no row is
  in two shards); the shared modes ship every row. A source with
  `shared_path: true` ships nothing at the start: agents read the file and
  cut the same shard themselves.

  An agent that joins mid-run gets the unique-per-user rows nobody has used
  that `protocol.handover` hands it (the own rows of users that have not
  started, and spares the running agents give up); with `shared_path: true`
  only their indices travel (`[index, null]`), the agent reads the rows. The
  coordinator works them out by replaying the run's shares (`ShareHistory`,
  kept by the run). unique-per-iteration rows never move.
* `flow/REF`: the source of the Python module a phase's `flow: REF` names.
  Agents run code only from this entry, never from their own disk.

* `tls/ca.pem`, `tls/cert.pem`, `tls/key.pem`: the CA certificates and the client
  certificate and key `defaults.tls` names, for https targets (see
  protocol/target_tls.py).

Everything is read and checked once, when the scenario is loaded (a missing
file, a bad row, too few unique rows, a flow without its function are
scenario errors, before any agent starts), and kept for the run.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import ssl
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.handover import MARGIN, Blocks, BoolArray, Epoch, joined, split_tail
from loadctl.protocol.journey import (
    ROW,
    DataSource,
    FlowRef,
    data_key,
    encode_rows,
    flow_key,
    is_python_flow,
    parse_data,
    parse_flow_ref,
    parse_rows,
    request_refs,
    rows_needed,
    shard,
)
from loadctl.protocol.messages import Share
from loadctl.protocol.scenario import Phase, Scenario
from loadctl.protocol.target_tls import CA_FILE_KEY, CERT_FILE_KEY, KEY_FILE_KEY, client_context

# Plans must stay well under the codec's frame limit (64 MiB).
MAX_SHIPPED_BYTES = 48 * 1024 * 1024


@dataclass
class LoadedData:
    source: DataSource
    rows: list[Any] | None  # None: a shared path the coordinator cannot read itself
    sha256: str = ""


@dataclass
class LoadedFlow:
    ref: FlowRef
    origin: str  # the file the source came from
    code: bytes
    sha256: str


class ShareHistory:
    """The shares a run has sent, in order, as every agent's `ShareBook` holds them.

    The run adds the first share (`add(0.0, weights)` when it starts) and each new
    one it sends (`add(since, weights)` in every reshare); `plan_files` notes which
    agent a mid-run plan went to. A share replaces those from its `since` on, as in
    the agents' books."""

    def __init__(self) -> None:
        self.epochs: list[Epoch] = []
        self.planned: list[set[int]] = []  # per epoch: positions given a plan with it

    def add(self, since: float, weights: Sequence[int]) -> None:
        keep = sum(1 for e in self.epochs if e.since < since)
        del self.epochs[keep:], self.planned[keep:]
        self.epochs.append(Epoch(since, tuple(weights)))
        self.planned.append(set())

    def find(self, share: Share) -> int | None:
        """The epoch `share` belongs to (None if the history never had it)."""
        for k in range(len(self.epochs) - 1, -1, -1):
            epoch = self.epochs[k]
            if epoch.since == share.since and epoch.weights == share.weights:
                return k
        return None


@dataclass
class Payload:
    data: dict[str, LoadedData] = field(default_factory=dict)
    flows: dict[str, LoadedFlow] = field(default_factory=dict)
    tls_files: dict[str, bytes] = field(default_factory=dict)  # defaults.tls's PEM files
    tls_notes: list[str] = field(default_factory=list)  # for the summary

    def files_for(
        self, scenario: Scenario, share: Share, history: ShareHistory | None = None
    ) -> dict[str, bytes]:
        """Plan.files for the agent at `share`. An agent that joins mid-run (a share
        from a later time) gets the unique-per-user rows `handed_over` gives it, given
        the run's `history` (without it, none); never unique-per-iteration rows: those
        were all handed out at the start, and handing them out again would reuse them."""
        files: dict[str, bytes] = {}
        epoch = None
        if share.since != 0 and history is not None:
            epoch = history.find(share)
            if epoch is not None:
                history.planned[epoch].add(share.index)
        for name, loaded in self.data.items():
            source = loaded.source
            rows = loaded.rows
            if rows is None or (source.shared_path and (share.since == 0 or not source.unique)):
                continue  # the agent reads the file and cuts its rows itself
            if not source.unique:
                indices: list[int] = list(range(len(rows)))
            elif share.since == 0:
                indices = shard(source, len(rows), scenario.phases, share.weights, share.index)
            elif epoch is not None and history is not None and source.mode == "unique-per-user":
                indices = handed_over(source, len(rows), scenario.phases, history, epoch)[
                    share.index
                ]
            else:
                indices = []
            if source.shared_path:  # the agent reads the rows itself: only indices travel
                if indices:
                    files[data_key(name)] = encode_rows((i, None) for i in indices)
                continue
            files[data_key(name)] = encode_rows((i, rows[i]) for i in indices)
        for ref, flow in self.flows.items():
            files[flow_key(ref)] = flow.code
        files.update(self.tls_files)
        size = sum(len(v) for v in files.values())
        if size > MAX_SHIPPED_BYTES:
            raise ScenarioError(("data",), _too_big(size))
        return files

    def notes(self) -> list[str]:
        return [
            f"flow {ref}{'' if flow.ref.is_file else f' ({flow.origin})'} shipped to the "
            f"agents, sha256 {flow.sha256}"
            for ref, flow in self.flows.items()
        ] + self.tls_notes


@dataclass
class _Holding:
    """What one agent's current plan gave it of a unique-per-user source."""

    base: int  # the epoch of its plan
    own: dict[str, BoolArray]  # phase -> which users' own rows it has
    spares: list[int]  # its spare rows, in the order it takes them


def handed_over(
    source: DataSource, rows: int, phases: Sequence[Phase], history: ShareHistory, upto: int
) -> dict[int, list[int]]:
    """The row indices shipped to each agent planned at epoch `upto` (own rows first,
    then its spares in order), by replaying the run's shares (`protocol.handover`)."""
    blocks = Blocks(source.name, phases)
    epochs = history.epochs

    def own_rows(position: int, epoch: int, held: set[int] | None = None) -> dict[str, BoolArray]:
        e = epochs[epoch]
        out: dict[str, BoolArray] = {}
        for name, (first, users) in blocks.blocks.items():
            if held is not None:  # the start's shard: the rows of the users it owned
                mask: BoolArray = np.asarray([first + u in held for u in range(users)], dtype=bool)
            else:
                mask = blocks.moving(name, e.since, e.weights, position)
            mask &= np.arange(first, first + users) < rows
            out[name] = mask
        return out

    holdings: dict[int, _Holding] = {}
    for position in range(len(epochs[0].weights)):
        initial = shard(source, rows, phases, epochs[0].weights, position)
        own = own_rows(position, 0, set(initial))
        holdings[position] = _Holding(0, own, [i for i in initial if i >= blocks.end])
    shipped: dict[int, list[int]] = {}
    for k in range(1, upto + 1):
        weights = epochs[k].weights
        joiners = joined(epochs[k - 1].weights, weights)
        planned = history.planned[k]
        given: dict[int, list[int]] = {q: [] for q in joiners}
        for position, holding in sorted(holdings.items()):
            # Only agents that run on give: a lost one may not have stopped yet when
            # its weight went to 0, and one planned again has a new feeder (what its
            # old one did not take is not used again: safe, if wasteful).
            running = position < len(weights) and weights[position] > 0
            if not joiners or not running or position in planned or not holding.spares:
                continue
            own_epochs = epochs[holding.base : k + 1]
            taken = blocks.spares_taken(position, own_epochs, epochs[k].since + MARGIN, holding.own)
            kept, gifts = split_tail(holding.spares[taken:], weights, joiners)
            holding.spares = holding.spares[:taken] + kept
            for q, part in gifts.items():
                given[q] += part
        for position in sorted(planned):
            own = own_rows(position, k)
            spares = given.get(position, [])
            holdings[position] = _Holding(k, own, spares)
            if k == upto:
                first_rows = [
                    first + u
                    for name, (first, _) in blocks.blocks.items()
                    for u in np.flatnonzero(own[name]).tolist()
                ]
                shipped[position] = first_rows + spares
    return shipped


def _too_big(size: int) -> str:
    return (
        f"{size / 2**20:.0f} MiB of rows and code to ship to one agent, more than "
        f"{MAX_SHIPPED_BYTES // 2**20} MiB: put large data files where every agent can read "
        "them and set shared_path: true"
    )


def load_payload(scenario: Scenario, base_dir: Path | None = None) -> Payload:
    """Read and check every data file and flow the scenario names; raises ScenarioError."""
    base = base_dir or Path.cwd()
    payload = Payload()
    for name, source in parse_data(scenario.source.get("data")).items():
        payload.data[name] = _load_data(source, base, scenario)
    for i, phase in enumerate(scenario.phases):
        if is_python_flow(phase.flow) and phase.flow not in payload.flows:
            ref = parse_flow_ref(phase.flow, ("phases", i, "flow"))
            payload.flows[phase.flow] = _load_flow(ref, base, ("phases", i, "flow"))
    payload.tls_files, payload.tls_notes = _load_tls(scenario, base)
    shared = [d for d in payload.data.values() if d.rows is not None and not d.source.unique]
    size = sum(len(encode_rows(enumerate(d.rows or []))) for d in shared)
    size += sum(len(f.code) for f in payload.flows.values())
    if size > MAX_SHIPPED_BYTES:  # unique shards shrink with more agents: checked per plan
        raise ScenarioError(("data",), _too_big(size))
    _remember(scenario, payload)
    return payload


def payload_for(scenario: Scenario) -> Payload:
    """The payload loaded with the scenario (or, for one built in code, loaded now)."""
    found = _PAYLOADS.get(id(scenario))
    return found if found is not None else load_payload(scenario)


def plan_files(
    scenario: Scenario, share: Share, history: ShareHistory | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """(Plan.files, notes for the summary) for one agent's plan; `history`: the run's
    shares so far, for an agent that joins mid-run (see `Payload.files_for`)."""
    payload = payload_for(scenario)
    return payload.files_for(scenario, share, history), payload.notes()


_PAYLOADS: dict[int, Payload] = {}


def _remember(scenario: Scenario, payload: Payload) -> None:
    key = id(scenario)
    if key not in _PAYLOADS:
        weakref.finalize(scenario, _PAYLOADS.pop, key, None)
    _PAYLOADS[key] = payload


def _resolve(file: str, base: Path) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else base / path


def _read(path: Path, at: tuple[str | int, ...]) -> bytes:
    """The file's bytes; a missing or unreadable file is a scenario error at `at`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(at, f"no such file: {path}") from None
    except OSError as error:
        raise ScenarioError(at, f"cannot read {path}: {error.strerror or error}") from None


def _load_tls(scenario: Scenario, base: Path) -> tuple[dict[str, bytes], list[str]]:
    """defaults.tls's files, read and checked as the agents will load them (a PEM file
    without a certificate, a key that is not the certificate's: a scenario error),
    and the summary's notes on them."""
    d = scenario.defaults
    named = (
        (CA_FILE_KEY, "ca", d.tls_ca),
        (CERT_FILE_KEY, "cert", d.tls_cert),
        (KEY_FILE_KEY, "key", d.tls_key),
    )
    paths: dict[str, Path] = {}
    files: dict[str, bytes] = {}
    for key, field_name, file in named:
        if file is not None:
            paths[key] = _resolve(file, base)
            files[key] = _read(paths[key], ("defaults", "tls", field_name))
    if CA_FILE_KEY in files:
        try:
            client_context(d.tls_verify, files[CA_FILE_KEY])
        except (ssl.SSLError, ValueError):
            raise ScenarioError(
                ("defaults", "tls", "ca"),
                f"{paths[CA_FILE_KEY]} holds no PEM certificate: give the CA's certificate, "
                "BEGIN CERTIFICATE",
            ) from None
    notes = []
    if CA_FILE_KEY in paths:
        notes.append(
            f"https certificates checked against the system's CAs and those of {paths[CA_FILE_KEY]}"
        )
    elif not d.tls_verify:
        notes.append("https certificates are not checked (defaults.tls.verify: false)")
    if CERT_FILE_KEY in paths:
        try:
            client_context(True, None, files[CERT_FILE_KEY], files.get(KEY_FILE_KEY))
        except (ssl.SSLError, ValueError) as error:
            key = f" and {paths[KEY_FILE_KEY]}" if KEY_FILE_KEY in paths else ""
            raise ScenarioError(
                ("defaults", "tls", "cert"),
                f"{paths[CERT_FILE_KEY]}{key}: not a PEM certificate with its private key "
                f"({getattr(error, 'reason', None) or error}): give both, the key unencrypted",
            ) from None
        notes.append(f"client certificate {paths[CERT_FILE_KEY]} shipped to the agents")
    return files, notes


def _load_data(source: DataSource, base: Path, scenario: Scenario) -> LoadedData:
    at = ("data", source.name, "file")
    path = _resolve(source.file, base)
    if source.shared_path and not path.exists():  # the agents may see a mount we do not
        return LoadedData(source, None)
    raw = _read(path, at)
    rows = parse_rows(raw, source.format, at)
    if not rows:
        raise ScenarioError(at, f"{path} has no rows")
    needed = rows_needed(source, scenario.phases)
    if len(rows) < needed:
        phases = [p.name for p in scenario.phases if p.data == source.name]
        raise ScenarioError(
            at,
            f"{path} has {len(rows)} rows, but {source.mode} needs {needed}: one per user of "
            f"phase(s) {', '.join(phases)}; add rows, lower the users, or set wrap: true "
            "(rows are then reused)",
        )
    _check_fields(source, rows, scenario)
    return LoadedData(source, rows, hashlib.sha256(raw).hexdigest())


def _check_fields(source: DataSource, rows: list[Any], scenario: Scenario) -> None:
    """`${row.FIELD}` names a column the file has (CSV: the header)."""
    if source.format != "csv":
        return
    columns = set(rows[0])
    users = {
        n
        for p in scenario.phases
        if p.data == source.name and not is_python_flow(p.flow)
        for n in p.requests
    }
    for i, spec in enumerate(scenario.requests):
        if spec.name not in users:
            continue
        for ref, where in request_refs(spec, ("requests", i)):
            if ref.name == ROW and ref.field is not None and ref.field not in columns:
                raise ScenarioError(
                    where,
                    f"{ref}: data source '{source.name}' has no column '{ref.field}' "
                    f"(columns: {', '.join(sorted(columns))})",
                )


def _load_flow(ref: FlowRef, base: Path, at: tuple[str | int, ...]) -> LoadedFlow:
    path = _resolve(ref.target, base) if ref.is_file else _find_module(ref.target, base, at)
    code = _read(path, at)
    try:
        tree = ast.parse(code, filename=str(path))
    except SyntaxError as error:
        raise ScenarioError(at, f"{path}:{error.lineno}: {error.msg}") from None
    kinds = {
        type(node).__name__
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == ref.function
    }
    bound = kinds or any(
        isinstance(node, ast.Assign | ast.ImportFrom | ast.Import | ast.AnnAssign)
        and ref.function in _bound_names(node)
        for node in tree.body
    )
    if kinds == {"FunctionDef"}:
        raise ScenarioError(
            at, f"{ref.function} in {path} must be `async def {ref.function}(user)`"
        )
    if not bound:
        raise ScenarioError(at, f"{path} defines no `async def {ref.function}(user)`")
    return LoadedFlow(ref, str(path), code, hashlib.sha256(code).hexdigest())


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def _find_module(module: str, base: Path, at: tuple[str | int, ...]) -> Path:
    """A module's source: next to the scenario, in the working directory, or importable."""
    relative = Path(*module.split("."))
    for root in (base, Path.cwd()):
        for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
            if candidate.is_file():
                return candidate
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None else None
    if origin is None or not origin.endswith(".py"):
        raise ScenarioError(
            at,
            f"cannot find the Python source of module '{module}' (looked next to the scenario, "
            "in the working directory and on the import path): name a file instead, "
            "as path/to/flow.py:function",
        )
    return Path(origin)
