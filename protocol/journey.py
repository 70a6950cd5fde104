"""Journeys, as both sides read them: what a request does with its reply, and the checks
that hold a scenario's journeys together (see docs/journeys.md for the user's view).

* `extract` items of a request: a variable taken from the reply (a JSON path,
  a regex group, a header or a cookie), with an optional default;
* `check` items: status, a JSON path's presence or value, body text, a header,
  latency; a check's expected text may be a template;
* the scenario's `variables`: constants every template may use;
* cross-checks over the whole scenario (`validate_journeys`): every name a
  template uses is defined, and a phase uses only what its model can feed
  (an arrival-rate phase has no users: no extraction, checks, user variables
  or rows).

The pieces a journey is made of live in their own modules: templates
(`protocol.templates`), JSON paths (`protocol.json_path`), data feeders
(`protocol.feeders`) and Python flow references (`protocol.flows`). Their
names are also importable from here, as they were before the split.

Pure syntax: reading files, shipping rows and running code are each side's
own business.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from loadctl.protocol.feeders import (
    DATA_FORMATS,
    DATA_MODES,
    UNIQUE_MODES,
    DataSource,
    data_key,
    decode_rows,
    encode_rows,
    parse_data,
    parse_rows,
    rows_needed,
    shard,
    user_blocks,
)
from loadctl.protocol.fields import Fields, Path, ScenarioError
from loadctl.protocol.flows import FLOW_BUILTINS, FlowRef, flow_key, is_python_flow, parse_flow_ref
from loadctl.protocol.json_path import MISSING, JsonPath, json_lookup, parse_json_path
from loadctl.protocol.templates import (
    BUILTINS,
    OPEN_BUILTINS,
    RESERVED,
    ROW,
    Ref,
    Template,
    check_name,
    is_static,
    json_refs,
    json_templates,
    parse_template,
    refs_of,
    text_of,
)

if TYPE_CHECKING:
    from loadctl.protocol.scenario import Phase, RequestSpec

__all__ = [
    "BUILTINS",
    "CHECK_KINDS",
    "DATA_FORMATS",
    "DATA_MODES",
    "EXTRACT_KINDS",
    "FLOW_BUILTINS",
    "MISSING",
    "OPEN_BUILTINS",
    "RESERVED",
    "ROW",
    "UNIQUE_MODES",
    "Check",
    "DataSource",
    "Extract",
    "FlowRef",
    "JsonPath",
    "Ref",
    "Template",
    "data_key",
    "decode_rows",
    "encode_rows",
    "flow_key",
    "is_python_flow",
    "is_static",
    "json_lookup",
    "json_templates",
    "parse_checks",
    "parse_data",
    "parse_extracts",
    "parse_flow_ref",
    "parse_json_path",
    "parse_rows",
    "parse_template",
    "parse_variables",
    "refs_of",
    "request_refs",
    "rows_needed",
    "shard",
    "text_of",
    "user_blocks",
    "validate_journeys",
]

_STATUS_CLASS = re.compile(r"[1-5]xx\Z")


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
        check_name(var, f.at("var"), "variable")
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
            Extract(
                var, kind, expr, json_path, group, None if default is None else text_of(default)
            )
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
            template = parse_template(text_of(equals), f.at("equals"))
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


# -- variables ----------------------------------------------------------------------------


def parse_variables(value: Any, path: Path = ("variables",)) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScenarioError(path, "variables map a name to a value: {item: 7}")
    out: dict[str, Any] = {}
    for name, v in value.items():
        at = (*path, str(name))
        check_name(name, at, "variable")
        if name in RESERVED:
            raise ScenarioError(at, f"'{name}' is a built-in name: choose another")
        if isinstance(v, dict | list) or v is None:
            raise ScenarioError(at, "a variable's value is text or a number")
        out[name] = v
    return out


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
            for ref in json_refs(templates):
                yield ref, (*at, "body")
        else:
            for ref in refs_of(parse_template(body, (*at, "body"))):
                yield ref, (*at, "body")
    for j, check in enumerate(spec.check):
        for part in (check.text, check.equals if isinstance(check.equals, tuple) else ()):
            for ref in refs_of(part):
                yield ref, (*at, "check", j)
