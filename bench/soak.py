# Soak: does memory grow with the length of a run? A real local cluster (the
# coordinator and 2 agent processes, `loadctl run --agents 2`) drives the demo
# target at a steady 300 RPS for --minutes (default 10), and this prints the RSS
# of the coordinator, of each agent and of the target every minute, then each
# process's growth from minute 1 (warm: pools, buffers and the first intervals
# are in place by then) to the end, in MiB and MiB per minute. Everything runs on
# 127.0.0.1; the load is bounded by the rate and the duration.
#
# A coordinator keeps the run's timeline for the reports (each interval, compacted
# to the sparse wire form a few intervals after it ends), so it grows by that much;
# the number of intervals is printed. Agents must stay flat.
#
# `--users N` runs N closed-loop users with no think time instead (as fast as the
# target answers: on the fast engine their static requests take the compiled lane,
# agent/_lane.c, whose records must stay flat too).
#
#   python bench/soak.py                 # 10 minutes
#   python bench/soak.py --minutes 3 --rate 300
#   python bench/soak.py --minutes 3 --users 16
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

_ROOT = Path(__file__).resolve().parent.parent
LISTENING = "loadctl target listening on"
MIB = 2**20


def loadctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "loadctl", *args]


def start_target() -> tuple[subprocess.Popen[str], str]:
    target = subprocess.Popen(
        loadctl("target", "--host", "127.0.0.1", "--port", "0"),
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert target.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = target.stdout.readline()
        if LISTENING in line:
            return target, line.split(LISTENING, 1)[1].split()[0]
        if not line and target.poll() is not None:
            break
    target.kill()
    raise SystemExit("soak: the demo target did not start")


def scenario(url: str, rate: float, seconds: int, users: int = 0) -> str:
    # JSON is YAML: no YAML writer needed
    phase: dict[str, object] = (
        {"name": "steady", "executor": "constant-users", "users": users, "duration": seconds}
        if users
        else {"name": "steady", "executor": "constant-rate", "rate": rate, "duration": seconds}
    )
    return json.dumps(
        {
            "name": "soak",
            "target": url,
            "defaults": {"timeout": "5s"},
            "requests": [
                {"name": "item", "path": "/api/inventory/items/7", "weight": 4},
                {"name": "stats", "path": "/api/inventory/stats", "weight": 1},
            ],
            "phases": [phase],
        }
    )


def agents_of(run: psutil.Process) -> list[psutil.Process]:
    out = []
    for child in run.children(recursive=True):
        try:
            if "agent" in child.cmdline():
                out.append(child)
        except psutil.Error:
            pass
    return sorted(out, key=lambda p: p.pid)


def rss(p: psutil.Process) -> float | None:
    try:
        return float(p.memory_info().rss) / MIB
    except psutil.Error:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description="memory of a long steady run")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument(
        "--users", type=int, default=0, help="closed-loop users with no think time, not a rate"
    )
    args = parser.parse_args()
    seconds = round(args.minutes * 60)
    target, url = start_target()
    tmp = tempfile.TemporaryDirectory(prefix="loadctl-soak-")
    path = Path(tmp.name) / "soak.yaml"
    path.write_text(scenario(url, args.rate, seconds, args.users))
    out_dir = Path(tmp.name) / "out"
    load = f"{args.users} users" if args.users else f"{args.rate:g} RPS"
    print(
        f"soak: {load} for {seconds} s against {url}, 2 agents; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    run = subprocess.Popen(
        loadctl(
            *("run", str(path), "--agents", "2", "--quiet", "--out", str(out_dir)),
            *("--metrics-port", "0"),
        ),
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    coordinator = psutil.Process(run.pid)
    tgt = psutil.Process(target.pid)
    rows: list[tuple[float, float | None, list[float | None], float | None]] = []
    try:
        agents: list[psutil.Process] = []
        deadline = time.monotonic() + 30
        while len(agents) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
            agents = agents_of(coordinator)
        if len(agents) < 2:
            raise SystemExit("soak: the agent processes did not start")
        names = [f"agent {i}" for i in range(len(agents))]
        heads = " ".join(f"{n + ' MiB':>12}" for n in names)
        print(f"  {'minute':>6} {'coordinator MiB':>16} {heads} {'target MiB':>11}", flush=True)
        start = time.monotonic()
        minute = 0
        while run.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed >= minute * 60:
                row = (elapsed / 60, rss(coordinator), [rss(a) for a in agents], rss(tgt))
                rows.append(row)
                cells = [row[1], *row[2]]
                print(
                    f"  {minute:>6} "
                    + " ".join(f"{c:>{16 if i == 0 else 12}.1f}" if c is not None else
                               f"{'-':>{16 if i == 0 else 12}}" for i, c in enumerate(cells))
                    + f" {row[3] or 0.0:>11.1f}",
                    flush=True,
                )  # fmt: skip
                minute += 1
            time.sleep(0.5)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        target.kill()
    code = run.returncode
    print(f"  run ended with exit code {code} after {(time.monotonic() - start) / 60:.1f} min")
    if code != 0:
        print(stderr[-2000:], file=sys.stderr)
    result_path = out_dir / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        totals = result["totals"]
        expected = f"rate x duration = {round(args.rate * seconds):,}"
        if args.users:
            expected = f"{args.users} users as fast as the target answers"
        print(
            f"  requests {totals['requests']:,} ({expected}), "
            f"p99 {totals['latency_ms'].get('p99', 0):.2f} ms; timeline of "
            f"{len(result.get('timeline', []))} intervals"
        )
    tmp.cleanup()
    steady = [r for r in rows if r[0] <= seconds / 60 + 1e-6]  # before the drain and reports
    first = next((r for r in steady if r[0] >= 1.0 - 1e-6), None)
    if first is None or steady[-1] is first:
        print("  too short to measure growth (run at least 2 minutes)")
        return
    end = steady[-1]
    span = end[0] - first[0]
    print(f"growth from minute 1 to minute {end[0]:.0f} ({span:.1f} min):")

    def line(name: str, a: float | None, b: float | None) -> None:
        if a is None or b is None:
            print(f"  {name:>12}: not measured")
            return
        rate = (b - a) / span if span > 0 else 0.0
        print(f"  {name:>12}: {a:7.1f} -> {b:7.1f} MiB, {b - a:+6.1f} MiB ({rate:+.2f} MiB/min)")

    line("coordinator", first[1], end[1])
    for i in range(len(first[2])):
        line(f"agent {i}", first[2][i], end[2][i])
    line("target", first[3], end[3])


if __name__ == "__main__":
    main()
