"""The degradation table: the target's health at low, medium and high load.

Each level is an offered rate: by default 20 %, 50 % and 100 % of a reference
(the capacity a search found, or for any other run the peak offered rate of
its open-model phases), or the rates a user gave (`--degradation-rates
100,300,500`). Each row holds p50/p95/p99 (from merged histograms), the error
rate ((errors + dropped) ÷ attempted) and the achieved rate next to the
offered one, so a reader sees where the target starts to bend.

Two sources: the measured windows of a capacity search's steps
(`from_windows`), or for any run the intervals of its timeline whose target
rate lies within ±10 % of the level (`from_result`, pure code over
result.json data).

Also here, because they read the same curve of health against load: `judge`,
the verdict on one measured window (the SLOs held, the target broke one, or
the load generator was the limit — see `loadctl.coordinator.capacity` for the
rules), and `knee`, where p99 bends upward against the offered rate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from loadctl.coordinator.result import latency_histogram
from loadctl.coordinator.stats import Totals
from loadctl.coordinator.thresholds import observe
from loadctl.protocol.histogram import Histogram, HistogramWireError
from loadctl.protocol.thresholds import LATENCY_METRICS, Threshold

LEVELS = (("low", 0.2), ("medium", 0.5), ("high", 1.0))
LAG_SHARE = 0.25  # a send lag this share of p99 makes a broken latency SLO the generator's
NEAR = 0.10  # an interval belongs to a level when its target rate is within ±10 %
_MS = 1e6


def parse_rates(text: str) -> tuple[float, ...]:
    """`100,300,500` → (100.0, 300.0, 500.0); ValueError with the fix otherwise."""
    try:
        rates = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(
            f"--degradation-rates {text!r}: give rates in requests per second, e.g. 100,300,500"
        ) from None
    if not rates or any(not r > 0 for r in rates):
        raise ValueError(f"--degradation-rates {text!r}: give rates above 0, e.g. 100,300,500")
    return tuple(sorted(set(rates)))


def plan_levels(
    reference: float | None, rates: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """The levels to measure: [{"level", "fraction", "rate"}], lowest first."""
    if rates:
        ordered = sorted(rates)
        names = [n for n, _ in LEVELS] if len(ordered) == 3 else []
        return [
            {
                "level": names[i] if names else f"level {i + 1}",
                "fraction": rate / reference if reference else None,
                "rate": rate,
            }
            for i, rate in enumerate(ordered)
        ]
    if not reference or reference <= 0:
        return []
    return [{"level": n, "fraction": f, "rate": f * reference} for n, f in LEVELS]


def health(
    arrivals: int, requests: int, errors: int, dropped: int, latency: Histogram, seconds: float
) -> dict[str, Any]:
    """One window's figures, in the shape every row and capacity step uses."""
    attempted = requests + dropped
    values = latency.percentiles((50.0, 95.0, 99.0)) if latency.count else None
    offered = arrivals / seconds if seconds > 0 else 0.0
    achieved = requests / seconds if seconds > 0 else 0.0
    return {
        "seconds": seconds,
        "arrivals": arrivals,
        "requests": requests,
        "errors": errors,
        "dropped": dropped,
        "offered_rps": offered,
        "achieved_rps": achieved,
        "achieved_ratio": achieved / offered if offered > 0 else None,
        "error_rate": (errors + dropped) / attempted if attempted else None,
        "p50_ms": values[0] / _MS if values else None,
        "p95_ms": values[1] / _MS if values else None,
        "p99_ms": values[2] / _MS if values else None,
    }


def from_windows(
    levels: Sequence[dict[str, Any]],
    windows: Sequence[dict[str, Any] | None],
    basis: str,
    reference: float | None,
    sources: Sequence[str] = (),
) -> dict[str, Any]:
    """A table from one measured window (a `health` dict, or None) per level."""
    rows = []
    for i, level in enumerate(levels):
        window = windows[i] if i < len(windows) else None
        row: dict[str, Any] = {**level, "measured": window is not None}
        if window is not None:
            row.update(window)
        if i < len(sources):
            row["source"] = sources[i]
        rows.append(row)
    return {"basis": basis, "reference_rps": reference, "levels": rows}


def _histogram(stats: dict[str, Any]) -> Histogram | None:
    try:
        return latency_histogram(stats)
    except (HistogramWireError, ValueError):
        return None


def from_result(
    result: dict[str, Any], rates: Sequence[float] | None = None
) -> dict[str, Any] | None:
    """The table for any run, from its timeline; None when it had no open-model load."""
    rows = [
        r
        for r in result.get("timeline", [])
        if r.get("target_rps") and isinstance(r.get("total"), dict)
    ]
    if not rows:
        return None
    peak = max(float(r["target_rps"]) for r in rows)
    levels = plan_levels(peak, rates)
    interval = float(result.get("interval") or 1.0)
    windows: list[dict[str, Any] | None] = []
    sources = []
    for level in levels:
        rate = level["rate"]
        near = [r for r in rows if abs(float(r["target_rps"]) - rate) <= NEAR * rate]
        if not near:
            windows.append(None)
            sources.append(f"no interval ran within ±{NEAR:.0%} of this rate")
            continue
        latency = Histogram()
        exact = True
        for r in near:
            h = _histogram(r["total"])
            if h is None:
                exact = False
            else:
                latency.merge(h)
        seconds = sum(float(r.get("end", 0) - r.get("start", 0)) or interval for r in near)
        window = health(
            sum(int(r["total"].get("arrivals", 0)) for r in near),
            sum(int(r["total"].get("requests", 0)) for r in near),
            sum(int(r["total"].get("errors", 0)) for r in near),
            sum(int(r["total"].get("dropped", 0)) for r in near),
            latency if exact else Histogram(),
            seconds,
        )
        windows.append(window)
        sources.append(f"{len(near)} interval(s)")
    basis = "given rates" if rates else "peak offered rate"
    return from_windows(levels, windows, basis, None if rates else peak, sources)


def knee(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The knee of p99 against offered rate (Kneedle, on log p99: the measured point
    farthest below the chord of the normalised curve); None with fewer than three
    points or no bend."""
    by_rate: dict[float, dict[str, Any]] = {}
    for s in steps:
        if s["kind"] != "cooldown" and s["verdict"] in ("ok", "slo") and s.get("p99_ms"):
            by_rate[s["rate"]] = s  # the latest measurement of a rate
    points = sorted(by_rate.items())
    if len(points) < 3:
        return None
    xs = [r for r, _ in points]
    ys = [math.log10(s["p99_ms"]) for _, s in points]  # latency bends hyperbolically
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 <= x0 or y1 <= y0:
        return None
    diffs = [(x - x0) / (x1 - x0) - (y - y0) / (y1 - y0) for x, y in zip(xs, ys, strict=True)]
    best = max(range(len(points)), key=lambda i: diffs[i])
    if diffs[best] <= 0:
        return None
    s = points[best][1]
    return {
        "offered_rps": s["rate"],
        "achieved_rps": s.get("achieved_rps"),
        "p99_ms": s.get("p99_ms"),
        "method": "kneedle on log p99 against offered rate",
    }


def _served(t: Totals) -> Totals:
    """What the target did with the requests it got: latency from the actual send,
    errors over answered requests (arrivals dropped by the agents left out)."""
    return Totals(
        arrivals=t.arrivals,
        outcomes={k: v for k, v in t.outcomes.items() if k != "dropped"},
        latency=t.service,
        service=t.service,
        send_lag=t.send_lag,
        bytes_in=t.bytes_in,
        checks_passed=t.checks_passed,
        checks_failed=t.checks_failed,
    )


def _select(by_name: dict[str, Totals], t: Threshold) -> Totals:
    out = Totals()
    for name, totals in by_name.items():
        if t.scope != "request" or name == t.name:
            out.merge(totals)
    return out


def judge(
    by_name: dict[str, Totals],
    cpu: dict[str, list[float]],
    seconds: float,
    slos: Sequence[Threshold],
    lag_limit_ms: float,
    max_cpu_percent: float,
) -> tuple[str, dict[str, Any], list[dict[str, Any]], list[str]]:
    """(verdict, figures, SLO values, generator reasons) for one measured window: "ok",
    "slo" (the target broke one), or "generator" (the load generator was the limit).
    `by_name` holds the window's totals per request name, `cpu` each agent's samples."""
    total = Totals()
    for part in by_name.values():
        total.merge(part)
    figures = health(
        total.arrivals, total.completed, total.errors, total.dropped, total.latency, seconds
    )
    lag = total.send_lag.percentile(99.0) / _MS if total.send_lag.count else None
    service = total.service.percentile(99.0) / _MS if total.service.count else None
    figures.update(
        send_lag_p99_ms=lag,
        service_p99_ms=service,
        agent_cpu={a: statistics.median(v) for a, v in sorted(cpu.items()) if v},
        agent_cpu_max=max((statistics.median(v) for v in cpu.values() if v), default=None),
    )
    values = []
    for t in slos:
        v = observe(t, _select(by_name, t), seconds)
        values.append(
            {
                "slo": t.label,
                "observed": v,
                "observed_text": t.format(v),
                "ok": v is not None and t.holds(v),
            }
        )
    broken = [t for t, v in zip(slos, values, strict=True) if not v["ok"]]
    served_broken = []  # the SLOs on what the target did: service time, errors it returned
    for t in slos:
        v = observe(t, _served(_select(by_name, t)), seconds)
        if v is None or not t.holds(v):
            served_broken.append(t)
    reasons, notes, strained = [], [], []
    if total.arrivals == 0:
        reasons.append("the agents sent nothing in the window")
    if total.dropped and not served_broken:
        reasons.append(
            f"{total.dropped} arrivals dropped at the agents' in-flight limit while the "
            "target's answers met every SLO"
        )
    lag_high = lag is not None and lag > lag_limit_ms
    if lag_high:
        strained.append(f"send lag p99 {lag:.2f} ms > {lag_limit_ms:g} ms")
    for agent, samples in sorted(cpu.items()):
        hot = [v for v in samples if v > max_cpu_percent]
        if 2 * len(hot) > len(samples):  # most of the window: one sample is no saturation
            strained.append(
                f"agent {agent} above {max_cpu_percent:g}% CPU in {len(hot)} of "
                f"{len(samples)} intervals (median {statistics.median(samples):.0f}%)"
            )
    p99 = figures["p99_ms"]
    if (
        strained
        and broken
        and (
            not served_broken  # the target's own answers met every SLO
            or (  # or the lag is a large share of latencies that alone broke the SLOs
                lag_high
                and lag is not None
                and p99 is not None
                and lag >= LAG_SHARE * p99
                and all(t.metric in LATENCY_METRICS for t in served_broken)
            )
        )
    ):
        reasons += strained
    else:  # latency counts from the intended send: a strained generator only adds to it
        notes += [f"{text}: measured latencies include it" for text in strained]
    figures["notes"] = notes
    verdict = "generator" if reasons else "slo" if broken else "ok"
    return verdict, figures, values, reasons


def suspect(step_figures: dict[str, Any], verdict: str) -> bool:
    """Worth measuring again before a verdict stands: the generator looked like the
    limit, or it was strained while an SLO broke (a machine's hiccup looks like that)."""
    return verdict == "generator" or (verdict == "slo" and bool(step_figures.get("notes")))
