"""Reading plain data (parsed YAML, or a plan off the wire) into typed values.

A `Fields` wraps one mapping and the path to it; each accessor checks one key
and raises `ScenarioError` naming the path, the problem and the fix. `done()`
rejects keys nobody read, with a "did you mean" — the most common scenario
mistake is a typo that would otherwise be silently ignored.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

Path = tuple[str | int, ...]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s|m|h)?\s*$")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ScenarioError(ValueError):
    """A mistake in a scenario; `path` locates it, the message says the fix."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message

    def where(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out or "(top level)"

    def __str__(self) -> str:
        return f"{self.where()}: {self.message}"


def parse_duration(value: Any, path: Path = ()) -> float:
    """Seconds from `5s`, `250ms`, `2m`, `1h`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ScenarioError(path, f"expected a duration like 5s or 250ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ScenarioError(path, f"expected a duration like 5s or 250ms, got {value!r}")
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ScenarioError(path, f"expected a duration like 5s or 250ms, got {value!r}")
    if seconds < 0:
        raise ScenarioError(path, f"a duration cannot be negative: {value!r}")
    return seconds


class _Required:
    pass


REQUIRED: Any = _Required()


class Fields:
    def __init__(self, data: Any, path: Path = (), what: str = "section") -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(path, f"expected a mapping for this {what}, got {_kind(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self._seen: set[str] = set()

    def at(self, key: str | int) -> Path:
        return (*self.path, key)

    def has(self, key: str) -> bool:
        self._seen.add(key)
        return key in self.data

    def raw(self, key: str, default: Any = REQUIRED) -> Any:
        self._seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is REQUIRED:
            # A typo of a required key reads better as the typo than as a missing key.
            strangers = [k for k in self.data if isinstance(k, str) and k not in self._seen]
            close = difflib.get_close_matches(key, strangers, n=1, cutoff=0.75)
            if close:
                raise ScenarioError(
                    self.at(close[0]), f"unknown key '{close[0]}': did you mean '{key}'?"
                )
            raise ScenarioError(self.at(key), f"missing required key '{key}'")
        return default

    def text(self, key: str, default: Any = REQUIRED, choices: Sequence[str] = ()) -> Any:
        value = self.raw(key, default)
        if value is default and default is not REQUIRED:
            return value
        if not isinstance(value, str):
            raise ScenarioError(self.at(key), f"expected text, got {_kind(value)}")
        if choices and value not in choices:
            raise ScenarioError(self.at(key), f"'{value}' is not one of: {', '.join(choices)}")
        return value

    def number(
        self,
        key: str,
        default: Any = REQUIRED,
        minimum: float = 0.0,
        above: bool = False,
        integer: bool = False,
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not REQUIRED:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(self.at(key), f"expected a number, got {_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ScenarioError(self.at(key), f"expected a finite number, got {value!r}")
        if integer and not float(value).is_integer():
            raise ScenarioError(self.at(key), f"expected a whole number, got {value!r}")
        if value < minimum or (above and value == minimum):
            bound = f"greater than {minimum:g}" if above else f"at least {minimum:g}"
            raise ScenarioError(self.at(key), f"must be {bound}, got {value!r}")
        return int(value) if integer else float(value)

    def duration(self, key: str, default: Any = REQUIRED, positive: bool = False) -> Any:
        value = self.raw(key, default)
        if value is default and default is not REQUIRED:
            return value
        seconds = parse_duration(value, self.at(key))
        if positive and seconds <= 0:
            raise ScenarioError(self.at(key), "must be longer than zero")
        return seconds

    def flag(self, key: str, default: Any = REQUIRED) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool) and not (value is default and default is not REQUIRED):
            raise ScenarioError(self.at(key), f"expected true or false, got {_kind(value)}")
        return value

    def items(self, key: str, default: Any = REQUIRED, non_empty: bool = False) -> Any:
        value = self.raw(key, default)
        if value is default and default is not REQUIRED:
            return value
        if not isinstance(value, list | tuple):
            raise ScenarioError(self.at(key), f"expected a list, got {_kind(value)}")
        if non_empty and not value:
            raise ScenarioError(self.at(key), "must list at least one entry")
        return list(value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.raw(key, {})
        if not isinstance(value, Mapping):
            raise ScenarioError(self.at(key), f"expected a mapping, got {_kind(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, list | dict) or v is None:
                raise ScenarioError((*self.at(key), str(k)), "expected name: value text")
            out[k] = str(v)
        return out

    def done(self, allowed_extra: Sequence[str] = ()) -> None:
        for key in self.data:
            if key in self._seen or key in allowed_extra:
                continue
            known = sorted(self._seen | set(allowed_extra))
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise ScenarioError(self.at(str(key)), f"unknown key '{key}': {hint}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"text {value!r}", bool: f"{value!r}"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )
