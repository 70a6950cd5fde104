"""Journeys, as both sides read them: templates, extraction, checks, data, flows.

Pure syntax and arithmetic (see docs/journeys.md for the user's view):

* templates: `${name}` in a request's path, query, header values and body
  (and in check values); `$${` writes a literal `${`. Names are the built-ins
  (`user_id`, `iteration`, `random`, `uuid`, `now`, `now_ms`, `now_iso`), the
  scenario's `variables`, variables a request extracts, and the current
  feeder row: `${row.FIELD}` (or `${row}` for the whole row);
* `extract` and `check` items of a request;
* `data` sources (CSV or JSON-lines files) and how their rows are sharded
  across agents (both sides compute the same shard from the same share);
* Python flow references (`path/to/file.py:function` or `module:function`).

Reading files, shipping rows and running code are each side's own business.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadctl.protocol.fields import Fields, Path, ScenarioError
from loadctl.protocol.segments import Stripe

if TYPE_CHECKING:
    from loadctl.protocol.scenario import Phase, RequestSpec

# Built-ins every template may use in a users phase; an arrival-rate phase has
# no users (hence no user id, iteration, variables of its own or rows).
BUILTINS = ("user_id", "iteration", "random", "uuid", "now", "now_ms", "now_iso")
OPEN_BUILTINS = ("random", "uuid", "now", "now_ms", "now_iso")
ROW = "row"
RESERVED = (*BUILTINS, ROW)

DATA_MODES = ("unique-per-user", "unique-per-iteration", "sequential", "random")
UNIQUE_MODES = ("unique-per-user", "unique-per-iteration")
DATA_FORMATS = ("csv", "jsonl")
FLOW_BUILTINS = ("mix", "sequence")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STATUS_CLASS = re.compile(r"[1-5]xx\Z")


# -- templates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """`${name}`, or `${row.field}` (name "row", field "field")."""

    name: str
    field: str | None = None

    def __str__(self) -> str:
        return "${" + self.name + (f".{self.field}" if self.field is not None else "") + "}"


Template = tuple["str | Ref", ...]


def parse_template(text: str, path: Path = ()) -> Template:
    """Split text into literal parts and references; `$${` is a literal `${`."""
    if "${" not in text:
        return (text,)
    parts: list[str | Ref] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
            continue
        if text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise ScenarioError(path, f"unclosed '${{' in {text!r}: close it with '}}'")
            ref = _parse_ref(text[i + 2 : end].strip(), path)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(ref)
            i = end + 1
            continue
        literal.append(text[i])
        i += 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def _parse_ref(inner: str, path: Path) -> Ref:
    name, dot, field = inner.partition(".")
    if not _NAME.match(name):
        raise ScenarioError(
            path, f"'${{{inner}}}' is not a variable: use ${{name}} or ${{row.field}}"
        )
    if dot:
        if name != ROW:
            raise ScenarioError(
                path, f"'${{{inner}}}': only feeder rows have fields (${{row.{field or 'field'}}})"
            )
        if not field:
            raise ScenarioError(path, f"'${{{inner}}}': name the row's field, as ${{row.username}}")
        return Ref(ROW, field)
    return Ref(name)


def is_static(template: Template) -> bool:
    return all(isinstance(p, str) for p in template)


def refs_of(template: Template) -> list[Ref]:
    return [p for p in template if isinstance(p, Ref)]


def json_templates(value: Any, path: Path) -> Any:
    """A JSON body with each text leaf parsed into a Template (keys stay as written)."""
    if isinstance(value, str):
        return parse_template(value, path)
    if isinstance(value, list):
        return [json_templates(v, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: json_templates(v, (*path, k)) for k, v in value.items()}
    return value


def _json_refs(value: Any) -> Iterable[Ref]:
    if isinstance(value, tuple):
        yield from refs_of(value)
    elif isinstance(value, list):
        for v in value:
            yield from _json_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _json_refs(v)


# -- JSON paths: $.a.b[0].c, $['key with spaces'], $.list[-1] ------------------------------

JsonPath = tuple[str | int, ...]
_PATH_TOKEN = re.compile(
    r"\.(?P<name>[A-Za-z_$][\w$-]*)"
    r"|\[\s*(?P<index>-?\d+)\s*\]"
    r"|\[\s*'(?P<single>(?:[^'\\]|\\.)*)'\s*\]"
    r'|\[\s*"(?P<double>(?:[^"\\]|\\.)*)"\s*\]'
)


def parse_json_path(text: str, path: Path = ()) -> JsonPath:
    if not isinstance(text, str) or not text.startswith("$"):
        raise ScenarioError(
            path, f"a JSON path starts with '$', as $.token or $.items[0].id: {text!r}"
        )
    out: list[str | int] = []
    i = 1
    while i < len(text):
        m = _PATH_TOKEN.match(text, i)
        if m is None:
            raise ScenarioError(
                path,
                f"JSON path {text!r}: cannot read {text[i:]!r} (use .name, [0] or ['name'])",
            )
        if m.group("name") is not None:
            out.append(m.group("name"))
        elif m.group("index") is not None:
            out.append(int(m.group("index")))
        else:
            raw = m.group("single") if m.group("single") is not None else m.group("double")
            out.append(re.sub(r"\\(.)", r"\1", raw))
        i = m.end()
    return tuple(out)


MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


def json_lookup(document: Any, json_path: JsonPath) -> Any:
    """The value at `json_path`, or MISSING."""
    value = document
    for key in json_path:
        if isinstance(key, int):
            if not isinstance(value, list) or not -len(value) <= key < len(value):
                return MISSING
            value = value[key]
        else:
            if not isinstance(value, dict) or key not in value:
                return MISSING
            value = value[key]
    return value


# -- extraction ---------------------------------------------------------------------------

EXTRACT_KINDS = ("json", "regex", "header", "cookie")


@dataclass(frozen=True, slots=True)
class Extract:
    var: str
    kind: str  # json | regex | header | cookie
    expr: str  # the JSON path, pattern, header or cookie name as written
    json_path: JsonPath = ()
    group: int | None = None  # regex: the group to take (default: 1 if any, else 0)
    default: str | None = None  # used when nothing matches (then it is not a failure)

    @property
    def label(self) -> str:
        return f"extract {self.var}"


def parse_extracts(items: list[Any], path: Path) -> tuple[Extract, ...]:
    out: list[Extract] = []
    for i, item in enumerate(items):
        f = Fields(item, (*path, i), "extraction")
        var = f.text("var")
        if not _NAME.match(var):
            raise ScenarioError(f.at("var"), f"'{var}' is not a variable name (letters, digits, _)")
        if var in RESERVED:
            raise ScenarioError(f.at("var"), f"'{var}' is a built-in name: choose another")
        kinds = [k for k in EXTRACT_KINDS if f.has(k)]
        if len(kinds) != 1:
            raise ScenarioError(
                (*path, i),
                "say where to extract from with exactly one of: json, regex, header, cookie",
            )
        kind = kinds[0]
        expr = f.text(kind)
        json_path: JsonPath = ()
        group: int | None = None
        if kind == "json":
            json_path = parse_json_path(expr, f.at(kind))
        if kind == "regex":
            try:
                groups = re.compile(expr).groups
            except re.error as error:
                raise ScenarioError(f.at(kind), f"not a regular expression: {error}") from None
            group = f.number("group", None, minimum=0, integer=True)
            if group is not None and group > groups:
                raise ScenarioError(f.at("group"), f"the pattern has {groups} group(s)")
        default = f.raw("default", None)
        if default is not None and (isinstance(default, dict | list)):
            raise ScenarioError(f.at("default"), "the default must be text or a number")
        f.done()
        out.append(
            Extract(var, kind, expr, json_path, group, None if default is None else _text(default))
        )
    return tuple(out)


# -- checks -------------------------------------------------------------------------------

CHECK_KINDS = ("status", "json", "body_contains", "header", "latency_under")


@dataclass(frozen=True, slots=True)
class Check:
    kind: str  # status | json | body_contains | header | latency_under
    label: str
    statuses: tuple[str, ...] = ()  # "200", "2xx"
    json_path: JsonPath = ()
    exists: bool | None = None
    equals: Any = None  # a value, or a Template for text (None: not compared)
    has_equals: bool = False
    text: Template = ()  # body_contains
    header: str = ""
    seconds: float = 0.0  # latency_under

    @property
    def needs_body(self) -> bool:
        return self.kind in ("json", "body_contains", "header")


def parse_checks(items: list[Any], path: Path) -> tuple[Check, ...]:
    out: list[Check] = []
    for i, item in enumerate(items):
        f = Fields(item, (*path, i), "check")
        kinds = [k for k in CHECK_KINDS if f.has(k)]
        if len(kinds) != 1:
            raise ScenarioError(
                (*path, i),
                "a check is one of: status, json (with exists or equals), body_contains, "
                "header, latency_under",
            )
        kind = kinds[0]
        name = f.text("name", None)
        check = _check(f, kind)
        f.done()
        out.append(check if name is None else _relabel(check, name))
    return tuple(out)


def _relabel(check: Check, label: str) -> Check:
    from dataclasses import replace

    return replace(check, label=label)


def _check(f: Fields, kind: str) -> Check:
    if kind == "status":
        value = f.raw("status")
        values = value if isinstance(value, list) else [value]
        statuses: list[str] = []
        for j, v in enumerate(values):
            at = (*f.at("status"), j) if isinstance(value, list) else f.at("status")
            if isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599:
                statuses.append(str(v))
            elif isinstance(v, str) and (_STATUS_CLASS.match(v) or v.isdigit()):
                statuses.append(v)
            else:
                raise ScenarioError(at, f"a status is a code (200) or a class (2xx): {v!r}")
        if not statuses:
            raise ScenarioError(f.at("status"), "list at least one status")
        return Check("status", f"status in ({', '.join(statuses)})", statuses=tuple(statuses))
    if kind == "json":
        expr = f.text("json")
        json_path = parse_json_path(expr, f.at("json"))
        exists = f.flag("exists", None)
        has_equals = f.has("equals")
        if exists is None and not has_equals:
            raise ScenarioError(f.at("json"), "say what to check: exists: true/false, or equals")
        if exists is False and has_equals:
            raise ScenarioError(f.at("equals"), "equals and exists: false contradict each other")
        equals = f.raw("equals", None)
        if isinstance(equals, str):
            equals = parse_template(equals, f.at("equals"))
        if has_equals:
            shown = equals if not isinstance(equals, tuple) else "".join(map(str, equals))
            return Check(
                "json",
                f"{expr} == {shown}",
                json_path=json_path,
                exists=exists,
                equals=equals,
                has_equals=True,
            )
        label = f"{expr} {'exists' if exists else 'is absent'}"
        return Check("json", label, json_path=json_path, exists=exists)
    if kind == "body_contains":
        text = f.text("body_contains")
        return Check(
            "body_contains",
            f"body contains {text!r}",
            text=parse_template(text, f.at("body_contains")),
        )
    if kind == "header":
        header = f.text("header")
        if not header:
            raise ScenarioError(f.at("header"), "name the header")
        equals = f.raw("equals", None)
        if equals is not None:
            if isinstance(equals, dict | list):
                raise ScenarioError(f.at("equals"), "a header value is text")
            template = parse_template(_text(equals), f.at("equals"))
            return Check(
                "header",
                f"header {header} == {equals}",
                header=header,
                equals=template,
                has_equals=True,
            )
        return Check("header", f"header {header} present", header=header)
    seconds = f.duration("latency_under", positive=True)
    return Check("latency_under", f"latency < {f.raw('latency_under')}", seconds=seconds)


def _text(value: Any) -> str:
    """A value as it reads in text: JSON's spelling for true/false/null."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


text_of = _text


# -- data sources -------------------------------------------------------------------------


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


def parse_data(value: Any, path: Path = ("data",)) -> dict[str, DataSource]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScenarioError(path, "data maps a name to a source: {users: {file: users.csv}}")
    out: dict[str, DataSource] = {}
    for name, item in value.items():
        at = (*path, str(name))
        if not isinstance(name, str) or not _NAME.match(name):
            raise ScenarioError(at, f"'{name}' is not a data source name (letters, digits, _)")
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


def parse_variables(value: Any, path: Path = ("variables",)) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScenarioError(path, "variables map a name to a value: {item: 7}")
    out: dict[str, Any] = {}
    for name, v in value.items():
        at = (*path, str(name))
        if not isinstance(name, str) or not _NAME.match(name):
            raise ScenarioError(at, f"'{name}' is not a variable name (letters, digits, _)")
        if name in RESERVED:
            raise ScenarioError(at, f"'{name}' is a built-in name: choose another")
        if isinstance(v, dict | list) or v is None:
            raise ScenarioError(at, "a variable's value is text or a number")
        out[name] = v
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


# -- Python flows -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowRef:
    text: str  # as written in the scenario
    target: str  # a file path, or a dotted module name
    function: str
    is_file: bool


def is_python_flow(flow: str) -> bool:
    return flow not in FLOW_BUILTINS


def parse_flow_ref(text: str, path: Path = ()) -> FlowRef:
    target, colon, function = text.rpartition(":")
    if not colon or not target or not _NAME.match(function):
        raise ScenarioError(
            path,
            f"flow {text!r}: use mix, sequence, path/to/file.py:function or module:function",
        )
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not all(_NAME.match(p) for p in target.split(".")):
        raise ScenarioError(path, f"flow {text!r}: '{target}' is neither a .py file nor a module")
    return FlowRef(text, target, function, is_file)


def flow_key(ref: str) -> str:
    return f"flow/{ref}"


# -- cross-checks over the whole scenario --------------------------------------------------


def validate_journeys(
    data: Any,
    variables: Any,
    requests: Sequence[RequestSpec],
    phases: Sequence[Phase],
) -> None:
    """Names used in templates exist; phases use only what their model can feed."""
    sources = parse_data(data)
    constants = parse_variables(variables)
    extracted = {e.var for r in requests for e in r.extract}
    defined = set(BUILTINS) | set(constants) | extracted
    refs: dict[str, list[tuple[Ref, Path]]] = {}
    for i, spec in enumerate(requests):
        found = refs[spec.name] = list(request_refs(spec, ("requests", i)))
        for ref, where in found:
            if ref.name != ROW and ref.name not in defined:
                close = difflib.get_close_matches(ref.name, sorted(defined), n=1)
                hint = (
                    f"did you mean ${{{close[0]}}}?"
                    if close
                    else (
                        "define it under variables, extract it from a response, or use a built-in: "
                        + ", ".join(BUILTINS)
                    )
                )
                raise ScenarioError(where, f"{ref} is not defined: {hint}")
    open_ok = set(OPEN_BUILTINS) | set(constants)
    by_name = {r.name: r for r in requests}
    for i, phase in enumerate(phases):
        at: Path = ("phases", i)
        if phase.data is not None and phase.data not in sources:
            known = ", ".join(sources) or "none: add a top-level data section"
            raise ScenarioError((*at, "data"), f"no data source '{phase.data}' (known: {known})")
        if is_python_flow(phase.flow):
            continue
        for name in phase.requests:
            spec = by_name[name]
            if phase.is_open:
                if spec.extract or spec.check or spec.abort_on_fail or spec.once:
                    raise ScenarioError(
                        (*at, "requests"),
                        f"request '{name}' extracts or checks: that runs in users phases "
                        "(journeys); an arrival-rate phase sends without looking at replies",
                    )
                for ref, where in refs[name]:
                    if ref.name not in open_ok:
                        raise ScenarioError(
                            where,
                            f"{ref} in request '{name}', sent by arrival-rate phase "
                            f"'{phase.name}': that phase has no users, hence no per-user "
                            f"variables or rows; it can use {', '.join(OPEN_BUILTINS)} and "
                            "the scenario's variables",
                        )
            elif phase.data is None:
                for ref, where in refs[name]:
                    if ref.name == ROW:
                        raise ScenarioError(
                            where,
                            f"{ref} in request '{name}': phase '{phase.name}' has no data "
                            "source: add data: NAME to it",
                        )


def request_refs(spec: RequestSpec, at: Path) -> Iterable[tuple[Ref, Path]]:
    """Every reference a request makes, with where it is written."""
    for ref in refs_of(parse_template(spec.path, (*at, "path"))):
        yield ref, (*at, "path")
    for name, value in spec.headers:
        for ref in refs_of(parse_template(value, (*at, "headers", name))):
            yield ref, (*at, "headers", name)
    if spec.body:
        body = spec.body.decode("utf-8", "replace")
        if spec.json_body:
            templates = json_templates(json.loads(body), (*at, "body"))
            for ref in _json_refs(templates):
                yield ref, (*at, "body")
        else:
            for ref in refs_of(parse_template(body, (*at, "body"))):
                yield ref, (*at, "body")
    for j, check in enumerate(spec.check):
        for part in (check.text, check.equals if isinstance(check.equals, tuple) else ()):
            for ref in refs_of(part):
                yield ref, (*at, "check", j)
