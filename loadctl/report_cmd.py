"""`loadctl report` (re-render a saved result) and `loadctl compare` (regression check)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from loadctl import exits


@click.command("report")
@click.argument("result_file", metavar="RESULT.json", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the reports (default: next to RESULT.json).",
)
@click.option("--quiet", is_flag=True, help="Do not print the summary.")
def report_command(result_file: str, out_dir: Path | None, quiet: bool) -> None:
    """Re-render report.html, report.md, timeline.csv and latency.hlog from RESULT.json."""
    from loadctl.coordinator.reports import write_reports
    from loadctl.coordinator.reports.data import ResultError, load_result
    from loadctl.coordinator.summary import print_summary

    try:
        result = load_result(result_file)
    except ResultError as error:
        exits.fail(str(error))
    target = out_dir or Path(result_file).parent
    try:
        written = write_reports(result, target)
    except OSError as error:
        exits.fail(f"cannot write the reports to {target}: {error}", exits.RUN_FAILED)
    except (KeyError, TypeError, ValueError) as error:
        exits.fail(f"{result_file}: incomplete or damaged result ({error!r})")
    if not quiet:
        print_summary(result)
    for path in written:
        click.echo(f"wrote {path}")


@click.command("compare")
@click.argument("base_file", metavar="BASE.json", type=click.Path(dir_okay=False))
@click.argument("new_file", metavar="NEW.json", type=click.Path(dir_okay=False))
@click.option(
    "--tolerance",
    default="10%",
    show_default=True,
    help="Allowed change before it counts as a regression.",
)
@click.option(
    "--latency-floor",
    default="1ms",
    show_default=True,
    help="Latency changes smaller than this never count.",
)
def compare_command(base_file: str, new_file: str, tolerance: str, latency_floor: str) -> None:
    """Compare p50/p95/p99, RPS and error rate of NEW.json against BASE.json.

    Per request name and phase, with the change in %. Exits 1 when latency rose,
    RPS fell or the error rate rose beyond the tolerance (the error rate also
    needs to rise by more than 0.1 percentage point), 0 otherwise."""
    from rich.console import Console
    from rich.table import Table

    from loadctl.coordinator.compare import (
        Limits,
        change_text,
        compare,
        fmt,
        parse_tolerance,
    )
    from loadctl.coordinator.reports.data import ResultError, load_result
    from loadctl.protocol.fields import ScenarioError, parse_duration

    try:
        limits = Limits(
            tolerance=parse_tolerance(tolerance),
            latency_floor_ms=parse_duration(latency_floor, ("--latency-floor",)) * 1000,
        )
    except (ValueError, ScenarioError) as error:
        exits.fail(str(error))
    try:
        base, new = load_result(base_file), load_result(new_file)
    except ResultError as error:
        exits.fail(str(error))
    changes = compare(base, new, limits)
    console = Console()
    table = Table(
        title=f"{new.get('run_id')} ({new_file}) against {base.get('run_id')} ({base_file}), "
        f"tolerance {100 * limits.tolerance:g}%",
        title_justify="left",
        header_style="bold",
    )
    for column in ("scope", "metric", "base", "new", "change", ""):
        table.add_column(column, justify="left" if column in ("scope", "metric", "") else "right")
    previous = ""
    for c in changes:
        verdict = "[red]✗ regression[/]" if c.regressed else ""
        table.add_row(
            c.scope if c.scope != previous else "",
            c.metric,
            fmt(c.metric, c.base),
            fmt(c.metric, c.new),
            change_text(c),
            verdict,
            style="red" if c.regressed else None,
        )
        previous = c.scope
    console.print(table)
    bad = [c for c in changes if c.regressed]
    if bad:
        console.print(
            f"[red]{len(bad)} regression(s)[/]: "
            + ", ".join(f"{c.scope} {c.metric} {change_text(c)}" for c in bad),
            highlight=False,
        )
        sys.exit(exits.THRESHOLD_FAILED)
    console.print("[green]no regression beyond the tolerance[/]")
