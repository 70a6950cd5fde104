"""What a capacity search leaves in result.json: its "capacity" record and degradation table.

Built from the search's state after (or while) it ran, so an interrupted or
failed search still reports what it learned: the highest rate that held
every SLO is always at least a lower bound (`at_least_rps`), and only a
search that found its answer (confirmed or not) states a maximum. The
headroom against an expected peak follows the same rule: a lower bound can
prove there is enough headroom, never that there is too little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loadctl.coordinator.degradation import from_windows, knee

if TYPE_CHECKING:
    from loadctl.coordinator.capacity import CapacitySearch
    from loadctl.coordinator.run import Coordinator


def capacity_record(search: CapacitySearch, run: Coordinator) -> dict[str, Any]:
    """result.json's "capacity" record."""
    s = search.settings
    status = search.status
    if status in ("running", "done") and run.status == "interrupted":
        status = "interrupted"
    elif status in ("running", "done"):
        status = "incomplete"
    steps = [x.as_dict(search.interval) for x in search.steps if x.verdict]
    hi_step = search.hi_step
    bounded = hi_step.failed if hi_step is not None else []
    bounded_values = [v for v in hi_step.slos if not v["ok"]] if hi_step else []
    lower = search.capacity if search.capacity is not None else search.lo
    exact = status in ("found", "unconfirmed") and search.capacity is not None
    message = _message(search, status, bounded_values)
    out: dict[str, Any] = {
        "status": status,
        "message": message,
        "max_sustainable_rps": search.capacity if exact else None,
        "at_least_rps": lower,
        "confirmed": search.confirmed,
        "bounded_by": bounded,
        "bounded_by_observed": bounded_values,
        "first_failing_rps": search.hi,
        "knee": knee(steps),
        "generator_limit": search.generator,
        "slos": [t.label for t in s.slos],
        "settings": {
            "start_rps": s.start_rate,
            "max_rps": s.max_rate,
            "step_factor": s.step_factor,
            "precision": s.precision,
            "settle_s": search.settle_intervals * search.interval,
            "window_s": search.window_intervals * search.interval,
            "max_send_lag_ms": s.lag_limit_ms,
            "max_cpu_percent": s.max_cpu_percent,
            "agents": len(run.registry.planned()),
        },
        "expected_peak_rps": s.expected_peak,
        "headroom": None,
        "headroom_ok": None,
        "steps": steps,
    }
    if s.expected_peak and status == "below-start":
        out["headroom_ok"] = False  # not even the lowest rate tried held the SLOs
    elif s.expected_peak and lower is not None:
        headroom = lower / s.expected_peak
        out["headroom"] = headroom
        out["headroom_is_lower_bound"] = not exact
        # a lower bound proves enough headroom, never too little
        out["headroom_ok"] = headroom >= 1 if exact or headroom >= 1 else None
    return out


def degradation_record(search: CapacitySearch) -> dict[str, Any] | None:
    """The run's "degradation" table from the levels the search measured (None: no levels)."""
    if not search.levels:
        return None
    windows = [x.figures if x is not None and x.figures else None for x in search.level_steps]
    sources = [f"step {x.number}" if x is not None else "not run" for x in search.level_steps]
    basis = "given rates" if search.settings.degradation_rates else "capacity"
    return from_windows(search.levels, windows, basis, search.capacity, sources)


def _message(search: CapacitySearch, status: str, bounded: list[dict[str, Any]]) -> str:
    why = ", ".join(f"{v['slo']} (observed {v['observed_text']})" for v in bounded)
    hi = f" at {search.hi:g} RPS" if search.hi is not None else ""
    if status in ("found", "unconfirmed") and search.capacity is not None:
        note = "" if search.confirmed else " (not confirmed: the repeat step broke an SLO too)"
        return (
            f"maximum sustainable rate {search.capacity:g} RPS{note}, bounded by {why or '-'}"
            f"{' which broke' + hi if why else ''}"
        )
    if status == "generator-limit" and search.generator is not None:
        held = f"; the target held every SLO up to at least {search.lo:g} RPS" if search.lo else ""
        return f"{search.generator['message']} ({'; '.join(search.generator['reasons'])}){held}"
    if status == "max-reached":
        top = search.settings.max_rate
        return f"no SLO broke up to --max {top:g} RPS: capacity is at least that"
    if status == "below-start":
        return search.message or (
            f"the SLOs broke even at {search.hi:g} RPS, the lowest rate tried: {why}"
        )
    if status == "budget":
        low = f"capacity is at least {search.lo:g} RPS" if search.lo else "no rate held the SLOs"
        return f"the search ran out of its time budget: {low}"
    if status == "interrupted":
        return "interrupted before the search finished"
    return search.message or "the search did not finish"
