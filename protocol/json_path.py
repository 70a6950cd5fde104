"""JSON paths into a reply: `$.a.b[0].c`, `$['key with spaces']`, `$.list[-1]`.

The small subset extraction and checks need: names, quoted keys and (negative)
list indexes, no wildcards or filters. A path is parsed once, when the
scenario is read, into a tuple of keys (text) and indexes (int), so the agent
only walks it; a step that is not there gives `MISSING` (never an exception),
which keeps "absent" apart from a JSON null.
"""

from __future__ import annotations

import re
from typing import Any

from loadctl.protocol.fields import Path, ScenarioError

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
