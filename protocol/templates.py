"""Templates: `${name}` in a request's path, query, header values and body (and checks).

`$${` writes a literal `${`. Names are the built-ins (`user_id`, `iteration`,
`random`, `uuid`, `now`, `now_ms`, `now_iso`), the scenario's `variables`,
variables a request extracts, and the current feeder row: `${row.FIELD}` (or
`${row}` for the whole row). A template is parsed once into literal text and
`Ref`s, so both sides agree on what it references and the agent only fills
it in; a template without references is its text alone (`is_static`).

What a name may be (`NAME`, `check_name`) is decided here for every name the
scenario defines: variables, extracted variables, data sources, flow functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loadctl.protocol.fields import Path, ScenarioError

# Built-ins every template may use in a users phase; an arrival-rate phase has
# no users (hence no user id, iteration, variables of its own or rows).
BUILTINS = ("user_id", "iteration", "random", "uuid", "now", "now_ms", "now_iso")
OPEN_BUILTINS = ("random", "uuid", "now", "now_ms", "now_iso")
ROW = "row"
RESERVED = (*BUILTINS, ROW)

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_name(name: Any, at: Path, what: str) -> None:
    """Raise unless `name` can be written in a template (letters, digits, _)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ScenarioError(at, f"'{name}' is not a {what} name (letters, digits, _)")


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
    if not NAME.match(name):
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


def json_refs(value: Any) -> Iterable[Ref]:
    """Every reference in a body parsed by `json_templates`."""
    if isinstance(value, tuple):
        yield from refs_of(value)
    elif isinstance(value, list):
        for v in value:
            yield from json_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from json_refs(v)


def text_of(value: Any) -> str:
    """A value as it reads in text: JSON's spelling for true/false/null."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
