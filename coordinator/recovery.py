"""Recovery time after a disturbance: how long until p99 and errors were back to normal.

A *disturbance* is a phase marked `disturbance: true` (bursts are, by default;
so is a fault window). Its *baseline* is the phase that ran just before it:
p99 over that phase's intervals (merged histograms, never averaged
percentiles; its first interval is skipped when it has three or more, so
connection set-up does not loosen the baseline) and its error rate
((errors + dropped) ÷ attempted, as everywhere in loadctl).

After the disturbance ends, each interval of the timeline is compared with the
baseline: p99 is *within* when it is at most `baseline × (1 + p99_relative)`
(and never less than `baseline + p99_floor_ms`, so a 1 ms baseline does not
turn timer jitter into "not recovered"), the error rate when it is at most
`baseline + error_points`. A metric has recovered at the start of the first
interval from which it stays within for `sustain` intervals (or for all that
remain of the observation, if fewer); the recovery time is that instant minus
the disturbance's end. Observation ends at the next disturbance or at the end
of the load; a metric that was never back within by then "never recovered".

Pure code over result.json data (`timeline` rows with `t`, and their `total`
or `series` stats): `loadctl report` recomputes it from a saved file.
`compute_recovery` does it for every disturbance phase; `recovery_after` for
any window with any baseline (a chaos fault, say).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadctl.coordinator.result import latency_histogram
from loadctl.protocol.histogram import Histogram, HistogramWireError

_MS = 1e6


@dataclass(frozen=True)
class Tolerance:
    p99_relative: float = 0.20  # p99 within 20 % of the baseline ...
    p99_floor_ms: float = 2.0  # ... or within 2 ms of it, whichever is looser
    error_points: float = 0.01  # error rate within baseline + 1 percentage point
    sustain: int = 3  # intervals it must stay within


@dataclass
class _Row:
    t: float
    length: float
    requests: int
    attempted: int
    bad: int  # errors + dropped
    histogram: Histogram | None  # None: no histogram in the file (p99 alone, if any)
    p99_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.bad / self.attempted if self.attempted else None


def _errors(stats: dict[str, Any]) -> int:
    if "errors" in stats:
        return int(stats.get("errors") or 0)
    outcomes = stats.get("outcomes", {})
    return sum(int(v) for k, v in outcomes.items() if k not in ("2xx", "3xx", "dropped"))


def _histogram(stats: dict[str, Any]) -> Histogram | None:
    try:
        h = latency_histogram(stats)
    except (HistogramWireError, ValueError):
        return None
    return h if h.count or not stats.get("requests") else None


def _rows(result: dict[str, Any]) -> list[_Row]:
    interval = float(result.get("interval") or 1.0)
    out = []
    for row in result.get("timeline", []):
        parts = [row["total"]] if isinstance(row.get("total"), dict) else row.get("series", [])
        requests = attempted = bad = 0
        merged: Histogram | None = Histogram()
        p99: float | None = None
        for stats in parts:
            dropped = int(stats.get("dropped") or 0)
            requests += int(stats.get("requests") or 0)
            attempted += int(stats.get("requests") or 0) + dropped
            bad += _errors(stats) + dropped
            h = _histogram(stats)
            if h is None or merged is None:
                merged = None
            else:
                merged.merge(h)
            value = stats.get("latency_ms", {}).get("p99")
            if value is not None:
                p99 = value if p99 is None else max(p99, value)  # only when no histogram
        if merged is not None:
            p99 = merged.percentile(99.0) / _MS if merged.count else None
        length = float(row.get("end", 0) - row.get("start", 0)) or interval
        t = float(row.get("t", row.get("interval", 0) * interval))
        out.append(_Row(t, length, requests, attempted, bad, merged, p99))
    return sorted(out, key=lambda r: r.t)


def _baseline(rows: Sequence[_Row]) -> tuple[float | None, float | None, int]:
    """(p99 ms, error rate, intervals) over rows, merged exactly where histograms exist."""
    if len(rows) >= 3:
        rows = rows[1:]
    merged = Histogram()
    exact = True
    worst: float | None = None
    for r in rows:
        if r.histogram is None:
            exact = False
            if r.p99_ms is not None:
                worst = r.p99_ms if worst is None else max(worst, r.p99_ms)
        else:
            merged.merge(r.histogram)
    p99 = merged.percentile(99.0) / _MS if exact and merged.count else worst
    attempted = sum(r.attempted for r in rows)
    errors = sum(r.bad for r in rows) / attempted if attempted else None
    return p99, errors, len(rows)


def _first_sustained(within: Iterable[bool], sustain: int) -> int | None:
    """Index of the first flag that starts `sustain` Trues (or only Trues to the end)."""
    flags = list(within)
    for i in range(len(flags)):
        if all(flags[i : i + sustain]):
            return i
    return None


def _metric(
    flags: Iterable[bool],
    sustain: int,
    after: Sequence[_Row],
    end: float,
    baseline: float | None,
    limit: float | None,
    peak: float | None,
) -> dict[str, Any]:
    index = _first_sustained(flags, sustain)
    at = after[index].t if index is not None else None
    return {
        "baseline": baseline,
        "limit": limit,
        "peak": peak,
        "recovered": at is not None,
        "at": at,
        "seconds": max(0.0, at - end) if at is not None else None,
    }


def _phases(result: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(
        (p for p in result.get("phases", []) if float(p.get("duration") or 0) > 0),
        key=lambda p: (float(p.get("start", 0)), float(p.get("end", 0))),
    )


def recovery_after(
    result: dict[str, Any],
    end: float,
    baseline: tuple[float, float],
    horizon: float | None = None,
    tolerance: Tolerance = Tolerance(),
    rows: list[_Row] | None = None,
) -> dict[str, Any]:
    """Recovery of p99 and the error rate after a disturbance that ended at `end` (run
    seconds), against the baseline window (start, end), observed until `horizon` (or
    the end of the load). Usable for any window: a phase, a chaos fault."""
    rows = _rows(result) if rows is None else rows
    b0, b1 = baseline
    inside = [r for r in rows if r.t >= b0 - 1e-6 and r.t + r.length <= b1 + 1e-6]
    if not inside:  # a baseline shorter than an interval: take what overlaps
        inside = [r for r in rows if r.t < b1 and r.t + r.length > b0]
    p99, errors, count = _baseline(inside)
    after = [r for r in rows if r.t >= end - 1e-6 and (horizon is None or r.t < horizon - 1e-6)]
    while after and after[-1].requests == 0:  # the load ended: nothing more to judge
        after.pop()
    p99_limit = (
        max(p99 * (1 + tolerance.p99_relative), p99 + tolerance.p99_floor_ms)
        if p99 is not None
        else None
    )
    err_limit = errors + tolerance.error_points if errors is not None else None
    p99_within = (
        r.p99_ms is not None and p99_limit is not None and r.p99_ms <= p99_limit for r in after
    )
    err_within = (
        r.error_rate is not None and err_limit is not None and r.error_rate <= err_limit
        for r in after
    )
    out: dict[str, Any] = {
        "end": end,
        "baseline": {"p99_ms": p99, "error_rate": errors, "intervals": count},
        "tolerance": asdict(tolerance),
        "observed_until": after[-1].t + after[-1].length if after else end,
        "p99": _metric(
            p99_within,
            tolerance.sustain,
            after,
            end,
            p99,
            p99_limit,
            max((r.p99_ms for r in after if r.p99_ms is not None), default=None),
        ),
        "error_rate": _metric(
            err_within,
            tolerance.sustain,
            after,
            end,
            errors,
            err_limit,
            max((r.error_rate for r in after if r.error_rate is not None), default=None),
        ),
    }
    both = (out["p99"]["seconds"], out["error_rate"]["seconds"])
    out["ok"] = all(s is not None for s in both)
    out["seconds"] = max(s for s in both if s is not None) if out["ok"] else None
    return out


def compute_recovery(
    result: dict[str, Any], tolerance: Tolerance = Tolerance()
) -> list[dict[str, Any]]:
    """One entry per disturbance phase, in run order (empty when the run had none)."""
    phases = _phases(result)
    disturbances = [p for p in phases if p.get("disturbance")]
    rows = _rows(result) if disturbances else []
    out = []
    for n, d in enumerate(disturbances):
        start, end = float(d["start"]), float(d["end"])
        entry: dict[str, Any] = {"phase": d["name"], "start": start, "end": end}
        before = [p for p in phases if not p.get("disturbance") and float(p["end"]) <= start + 1e-6]
        if not before:
            entry.update(
                baseline_phase=None,
                ok=None,
                note="no phase ran before it: no baseline to recover to",
            )
            out.append(entry)
            continue
        base = max(before, key=lambda p: float(p["end"]))
        horizon = float(disturbances[n + 1]["start"]) if n + 1 < len(disturbances) else None
        window = (float(base["start"]), float(base["end"]))
        entry["baseline_phase"] = base["name"]
        entry.update(recovery_after(result, end, window, horizon, tolerance, rows))
        out.append(entry)
    return out


def _seconds(metric: dict[str, Any], until: float, end: float) -> str:
    if metric.get("recovered"):
        return f"{metric['seconds']:.0f} s"
    return f"never within the run ({until - end:.0f} s observed)"


def recovery_lines(recovery: list[dict[str, Any]] | None) -> list[str]:
    """The summary's lines: one per disturbance."""
    out = []
    for r in recovery or []:
        if r.get("baseline_phase") is None:
            out.append(f"recovery after {r['phase']}: {r.get('note', 'no baseline')}")
            continue
        base = r["baseline"]
        p99, err = r["p99"], r["error_rate"]
        until, end = r.get("observed_until", r["end"]), r["end"]
        b99 = "-" if base["p99_ms"] is None else f"{base['p99_ms']:.1f} ms"
        berr = "-" if base["error_rate"] is None else f"{100 * base['error_rate']:.2g}%"
        out.append(
            f"recovery after {r['phase']} (ended at {end:g} s; baseline {r['baseline_phase']}: "
            f"p99 {b99}, errors {berr}): p99 back within {p99['limit'] or 0:.1f} ms after "
            f"{_seconds(p99, until, end)}, error rate back within "
            f"{100 * (err['limit'] or 0):.2g}% after {_seconds(err, until, end)}"
        )
    return out


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """What every result.json gets: "recovery" (per disturbance) and "degradation"
    (health at 20/50/100 % of the peak offered rate; a capacity search replaces it
    with the levels it measured)."""
    from loadctl.coordinator.degradation import from_result

    try:
        return {"recovery": compute_recovery(result), "degradation": from_result(result)}
    except Exception:  # an analysis bug must never cost the result file
        logging.getLogger("loadctl.coordinator").exception("recovery/degradation analysis failed")
        return {"recovery": [], "degradation": None}
