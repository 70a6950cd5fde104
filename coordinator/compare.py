"""Comparing two result records: did the new run regress against the baseline?

Rows are the whole run, each request name and each phase present in both
files; metrics are p50/p95/p99 latency, RPS and error rate. A change is a
regression when it goes the wrong way by more than the tolerance:

- latency: new > base × (1 + tolerance), and by more than `latency_floor_ms`
  (so 0.20 → 0.25 ms on a loopback target is not a 25 % regression);
- RPS: new < base × (1 − tolerance);
- error rate: new − base > max(tolerance × base, `error_floor`) (an absolute
  floor, default 0.1 percentage point, since any change from 0 is infinite).

A name or phase in only one of the files is listed, never a regression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LATENCY = ("p50", "p95", "p99")
METRICS = (*LATENCY, "rps", "error_rate")


@dataclass(frozen=True)
class Change:
    scope: str  # total | request:NAME | phase:NAME
    metric: str
    base: float | None
    new: float | None
    regressed: bool
    where: str = "both"  # both | base | new: which files hold the scope

    @property
    def relative(self) -> float | None:
        if self.base is None or self.new is None:
            return None
        if self.base == 0:
            return 0.0 if self.new == 0 else None
        return (self.new - self.base) / self.base


@dataclass(frozen=True)
class Limits:
    tolerance: float = 0.10
    latency_floor_ms: float = 1.0
    error_floor: float = 0.001


def parse_tolerance(text: str) -> float:
    """`10%` or a fraction `0.1`; raises ValueError with the fix."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"--tolerance {text!r}: write a percentage like 10% (or 0.1)") from None
    if not 0 <= value <= 10:
        raise ValueError(f"--tolerance {text!r}: expected 0% to 1000%")
    return value


def _value(stats: dict[str, Any] | None, metric: str) -> float | None:
    if not stats:
        return None
    v = stats.get("latency_ms", {}).get(metric) if metric in LATENCY else stats.get(metric)
    return None if v is None else float(v)


def regressed(metric: str, base: float | None, new: float | None, limits: Limits) -> bool:
    if base is None or new is None:
        return False
    tol = limits.tolerance
    if metric in LATENCY:
        return new > base * (1 + tol) and new - base > limits.latency_floor_ms
    if metric == "rps":
        return new < base * (1 - tol)
    return new - base > max(tol * base, limits.error_floor)


def scopes(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {"total": result.get("totals", {})}
    for name, stats in result.get("requests", {}).items():
        out[f"request:{name}"] = stats
    for phase in result.get("phases", []):
        out[f"phase:{phase['name']}"] = phase.get("totals", {})
    return out


def compare(
    base: dict[str, Any], new: dict[str, Any], limits: Limits | None = None
) -> list[Change]:
    limits = limits or Limits()
    a, b = scopes(base), scopes(new)
    order = list(a) + [s for s in b if s not in a]
    out = []
    for scope in order:
        for metric in METRICS:
            x, y = _value(a.get(scope), metric), _value(b.get(scope), metric)
            where = "both" if scope in a and scope in b else "base" if scope in a else "new"
            out.append(Change(scope, metric, x, y, regressed(metric, x, y, limits), where))
    return out


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in LATENCY:
        return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"
    if metric == "error_rate":
        return f"{100 * value:.2f}%"
    return f"{value:.1f}"


def change_text(change: Change) -> str:
    if change.where != "both":
        return f"only in {change.where}"
    if change.base is None or change.new is None:
        return "-"
    rel = change.relative
    if rel is None:
        return "new" if change.new else "-"
    return f"{100 * rel:+.1f}%"
