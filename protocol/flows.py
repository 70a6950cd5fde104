"""Flow references: how a users phase walks its requests.

A phase's `flow` is a built-in (`mix`: weighted picks; `sequence`: in order)
or a Python function, written `path/to/file.py:function` or
`module:function`. Only the reference is parsed here; the coordinator ships
the named module's source to the agents under `flow_key(...)`, and each agent
runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadctl.protocol.fields import Path, ScenarioError
from loadctl.protocol.templates import NAME

FLOW_BUILTINS = ("mix", "sequence")


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
    if not colon or not target or not NAME.match(function):
        raise ScenarioError(
            path,
            f"flow {text!r}: use mix, sequence, path/to/file.py:function or module:function",
        )
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not all(NAME.match(p) for p in target.split(".")):
        raise ScenarioError(path, f"flow {text!r}: '{target}' is neither a .py file nor a module")
    return FlowRef(text, target, function, is_file)


def flow_key(ref: str) -> str:
    return f"flow/{ref}"
