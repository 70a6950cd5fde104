"""Loading a scenario file, with errors that point at the line to fix.

The scenario model validates plain data and reports a *path* (phases[1].rate);
here the YAML is also composed into nodes so the path can be turned into a
line and column of the file, the way a compiler error reads.

Scenarios name files: data sources (`data.NAME.file`), Python flows
(`flow: path/to/file.py:function`) and certificates for https targets
(`defaults.tls`: ca, cert, key). Relative paths resolve from the scenario file's
folder and are written back absolute, so the scenario the agents and the result
see is self-contained. The files are then read and checked here (rows, unique-row
needs, the flow's function, the certificates), before any agent starts; the
coordinator ships their contents to the agents in the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loadctl.protocol.fields import ScenarioError
from loadctl.protocol.journey import is_python_flow, parse_flow_ref
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
    return parse_scenario_text(text, str(path), scale, overrides, base_dir=path.parent)


def parse_scenario_text(
    text: str,
    name: str,
    scale: float = 1.0,
    overrides: dict[str, Any] | None = None,
    base_dir: Path | None = None,
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
    base = (base_dir or Path.cwd()).resolve()
    if isinstance(data, dict):
        data = _absolute_paths(data, base)
    try:
        scenario = Scenario.from_dict(data, scale=scale)
        files = scenario.defaults.tls_ca or scenario.defaults.tls_cert or data.get("data")
        if files or _has_python_flow(scenario):  # read and checked now, shipped in plans
            from loadctl.coordinator.feeders import load_payload

            load_payload(scenario, base)
        return scenario
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


def _has_python_flow(scenario: Scenario) -> bool:
    return any(is_python_flow(p.flow) for p in scenario.phases)


def _absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The scenario with data files and flow files made absolute from `base` (a copy;
    anything malformed is left for the scenario model to report)."""
    out = dict(data)
    sources = data.get("data")
    if isinstance(sources, dict):
        out["data"] = {
            name: (
                {**item, "file": _absolute(item["file"], base)}
                if isinstance(item, dict) and isinstance(item.get("file"), str) and item["file"]
                else item
            )
            for name, item in sources.items()
        }
    defaults = data.get("defaults")
    if isinstance(defaults, dict) and isinstance(defaults.get("tls"), dict):
        tls = dict(defaults["tls"])
        for key in ("ca", "cert", "key"):
            if isinstance(tls.get(key), str) and tls[key].strip():
                tls[key] = _absolute(tls[key], base)
        out["defaults"] = {**defaults, "tls": tls}
    phases = data.get("phases")
    if isinstance(phases, list):
        out["phases"] = [
            {**p, "flow": _absolute_flow(p["flow"], base)}
            if isinstance(p, dict) and isinstance(p.get("flow"), str)
            else p
            for p in phases
        ]
    return out


def _absolute(file: str, base: Path) -> str:
    path = Path(file).expanduser()
    return str(path if path.is_absolute() else base / path)


def _absolute_flow(flow: str, base: Path) -> str:
    if not is_python_flow(flow):
        return flow
    try:
        ref = parse_flow_ref(flow)
    except ScenarioError:
        return flow
    return f"{_absolute(ref.target, base)}:{ref.function}" if ref.is_file else flow
