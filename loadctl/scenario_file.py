"""Loading a scenario file, with errors that point at the line to fix.

The scenario model validates plain data and reports a *path* (phases[1].rate);
here the YAML is also composed into nodes so the path can be turned into a
line and column of the file, the way a compiler error reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.scenario import Scenario


class ScenarioFileError(Exception):
    """One line: file, position, problem and fix."""


def load_scenario(
    path: str | Path, scale: float = 1.0, overrides: dict[str, Any] | None = None
) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioFileError(f"{path}: no such file: check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioFileError(f"{path}: cannot read it: {error}") from None
    return parse_scenario_text(text, str(path), scale, overrides)


def parse_scenario_text(
    text: str, name: str, scale: float = 1.0, overrides: dict[str, Any] | None = None
) -> Scenario:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ScenarioFileError(f"{where}: not valid YAML: {problem}") from None
    if isinstance(data, dict) and overrides:
        data = {**data, **overrides}
    try:
        return Scenario.from_dict(data, scale=scale)
    except ScenarioError as error:
        line = _line_of(root, error.path)
        where = f"{name}:{line}" if line else name
        raise ScenarioFileError(f"{where}: {error}") from None


def _line_of(node: yaml.Node | None, path: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest node along `path` that exists in the file."""
    if node is None:
        return None
    best = node.start_mark.line + 1
    for part in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    best = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            return best
        node = child
        best = node.start_mark.line + 1
    return best
