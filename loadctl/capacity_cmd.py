"""`loadctl capacity`: search the highest rate the target sustains within its SLOs.

Runs one local cluster (like `loadctl run`) steered by the capacity search
(`loadctl.coordinator.capacity`), then prints every step, the degradation
table and the verdict, and writes them to result.json ("capacity",
"degradation") and the reports.

Exit codes: 0 the search found the capacity (and the headroom held, with
--expected-peak); 1 the headroom is below 1, or the SLOs broke even at the
lowest rate tried; 3 the search could not conclude (generator limit: add
agents; time budget; the run failed); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from loadctl import exits
from loadctl.protocol.fields import ScenarioError, parse_duration
from loadctl.protocol.scenario import Scenario
from loadctl.protocol.thresholds import LATENCY_METRICS, RATE_METRICS, Threshold, parse_expression
from loadctl.run_cmd import metrics_option, out_option


def check_slo(t: Threshold) -> str | None:
    """Why an SLO cannot steer a capacity search (None: it can)."""
    if t.metric not in (*LATENCY_METRICS, *RATE_METRICS):
        return (
            f"'{t.expression}': a capacity SLO bounds latency (p(N), avg, max), error_rate "
            "or checks; counts and rps do not depend on the load in a way a search can use"
        )
    if t.scope == "phase":
        return f"'{t.label}': a capacity search has its own phases; use total or request:NAME"
    return None


def phase_template(scenario: Scenario) -> dict[str, Any]:
    """The request mix every step sends: the first arrival-rate phase's, else all requests."""
    first = next((p for p in scenario.phases if p.is_open), None)
    if first is not None:
        names = list(first.requests)
    else:
        names = [r.name for r in scenario.requests if r.weight > 0]
    if not names:
        raise ScenarioError(
            ("requests",), "a capacity search sends the scenario's requests: list some"
        )
    out: dict[str, Any] = {"requests": names}
    if first is not None and first.max_in_flight is not None:
        out["max_in_flight"] = first.max_in_flight
    return out


def _duration(value: str, option: str) -> float:
    try:
        return parse_duration(value)
    except ScenarioError:
        exits.fail(f"{option} {value!r}: give a duration such as 5s, 500ms or 2m")


def _fraction(value: str) -> float:
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        exits.fail(f"--precision {value!r}: give a share such as 5% or 0.05")
    if not 0 < number < 1:
        exits.fail(f"--precision {value!r}: give a share above 0 and below 100%")
    return number


def _slos(texts: tuple[str, ...], scenario_thresholds: tuple[Threshold, ...]) -> list[Threshold]:
    slos: list[Threshold] = []
    for text in texts:
        try:
            slos.append(parse_expression(text, ("--slo",)))
        except ScenarioError as error:
            exits.fail(str(error))
    if not slos:
        slos = list(scenario_thresholds)
    if not slos:
        exits.fail(
            "a capacity search needs an SLO to search against: pass --slo, e.g. "
            "--slo 'p(99)<500ms' --slo 'error_rate<1%', or give the scenario thresholds"
        )
    for t in slos:
        problem = check_slo(t)
        if problem:
            exits.fail(problem)
    return slos


@click.command("capacity")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option(
    "--slo",
    "slo_texts",
    multiple=True,
    metavar="EXPR",
    help="An SLO the rate must hold, e.g. 'p(99)<500ms' or 'error_rate<1%' (repeatable; "
    "default: the scenario's thresholds).",
)
@click.option("--start", "start_rate", default=50.0, show_default=True, help="First rate (RPS).")
@click.option("--max", "max_rate", default=100_000.0, show_default=True, help="Highest rate tried.")
@click.option(
    "--precision",
    default="5%",
    show_default=True,
    help="Stop bisecting when the last good and first bad rate are this close.",
)
@click.option(
    "--step-factor",
    default=1.5,
    show_default=True,
    help="Each probe step multiplies the rate by this.",
)
@click.option("--settle", default="5s", show_default=True, help="Hold each step this long first.")
@click.option("--window", default="10s", show_default=True, help="Then measure it this long.")
@click.option("--agents", default=0, help="Local agent processes (default: one per core).")
@click.option(
    "--expected-peak",
    type=float,
    default=None,
    help="Your expected peak (RPS): adds the headroom factor and a pass/fail line.",
)
@click.option(
    "--degradation-rates",
    default=None,
    metavar="R,R,R",
    help="Rates for the degradation table (default: 20%, 50%, 100% of the capacity).",
)
@click.option("--no-degradation", is_flag=True, help="Skip the degradation steps.")
@click.option(
    "--max-send-lag",
    default=None,
    metavar="DURATION",
    help="Send-lag p99 above which a step that broke an SLO may be the generator's limit "
    "(default: 10ms or 10% of the tightest latency SLO, whichever is smaller).",
)
@click.option(
    "--max-duration",
    default="30m",
    show_default=True,
    help="Time budget for the whole search.",
)
@out_option
@click.option("--quiet", is_flag=True, help="Print only the results, not each step.")
@metrics_option
@click.option("-v", "--verbose", is_flag=True)
def capacity_command(
    scenario: str,
    slo_texts: tuple[str, ...],
    start_rate: float,
    max_rate: float,
    precision: str,
    step_factor: float,
    settle: str,
    window: str,
    agents: int,
    expected_peak: float | None,
    degradation_rates: str | None,
    no_degradation: bool,
    max_send_lag: str | None,
    max_duration: str,
    out_dir: Path | None,
    quiet: bool,
    metrics_port: str,
    verbose: bool,
) -> None:
    """Find the highest arrival rate SCENARIO's target sustains within the SLOs.

    Steps the rate up geometrically (each step held for --settle, then measured
    over --window), bisects between the last good and first bad rate to
    --precision, confirms the answer, and runs the degradation levels — all in
    one run, changing the agents' rate at interval boundaries. Stops with
    "generator limit reached" when the agents, not the target, are the limit.
    """
    from loadctl.cluster import metrics_address
    from loadctl.coordinator.capacity import CapacitySearch, SearchSettings, capacity_scenario
    from loadctl.coordinator.degradation import parse_rates
    from loadctl.coordinator.reports.capacity import print_capacity
    from loadctl.coordinator.run import Coordinator
    from loadctl.run_cmd import run_local
    from loadctl.scenario_file import ScenarioFileError, load_scenario

    try:
        parsed = load_scenario(scenario)
    except ScenarioFileError as error:
        exits.fail(str(error))
    if not 0 < start_rate <= max_rate:
        exits.fail("--start must be above 0 and at most --max")
    if not step_factor > 1:
        exits.fail("--step-factor must be above 1, e.g. 1.5")
    if expected_peak is not None and not expected_peak > 0:
        exits.fail("--expected-peak must be above 0")
    rates = None
    if degradation_rates:
        try:
            rates = parse_rates(degradation_rates)
        except ValueError as error:
            exits.fail(str(error))
    try:
        metrics = metrics_address(metrics_port, "127.0.0.1")
    except ValueError as error:
        exits.fail(str(error))
    settings = SearchSettings(
        slos=tuple(_slos(slo_texts, parsed.thresholds)),
        start_rate=start_rate,
        max_rate=max_rate,
        step_factor=step_factor,
        precision=_fraction(precision),
        settle=_duration(settle, "--settle"),
        window=_duration(window, "--window"),
        max_send_lag_ms=(
            _duration(max_send_lag, "--max-send-lag") * 1000 if max_send_lag else None
        ),
        degradation=not no_degradation,
        degradation_rates=rates,
        expected_peak=expected_peak,
        max_duration=_duration(max_duration, "--max-duration"),
    )
    if settings.window <= 0 or settings.max_duration <= 0:
        exits.fail("--window and --max-duration must be longer than zero")
    try:
        template = phase_template(parsed)
        search_scenario = capacity_scenario(parsed, settings, template)
    except ScenarioError as error:
        exits.fail(str(error))

    def progress(line: str) -> None:
        print(f"capacity: {line}", file=sys.stderr, flush=True)

    search = CapacitySearch(settings, template, None if quiet else progress)
    record: dict[str, Any] = {}

    def extra_result(run: Coordinator) -> dict[str, Any]:
        record["capacity"] = search.report(run)
        table = search.degradation()
        if table is not None:
            record["degradation"] = table
        return dict(record)

    count = agents if agents > 0 else (os.cpu_count() or 1)
    code = run_local(
        search_scenario,
        count,
        out_dir,
        True,  # no live panel: the steps print as they are measured
        verbose,
        metrics,
        controller=search,
        extra_result=extra_result,
    )
    if "capacity" not in record:
        sys.exit(code)
    print_capacity(record)
    sys.exit(code if code != exits.OK else exit_code(record["capacity"]))


def exit_code(capacity: dict[str, Any]) -> int:
    status = capacity.get("status")
    if status == "interrupted":
        return exits.INTERRUPTED
    if status == "below-start" or capacity.get("headroom_ok") is False:
        return exits.THRESHOLD_FAILED
    if status in ("found", "max-reached") or (
        status == "unconfirmed" and capacity.get("max_sustainable_rps") is not None
    ):
        return exits.OK
    return exits.RUN_FAILED
