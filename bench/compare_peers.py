"""loadctl against its peers: wrk, hey and each loadctl engine on the same target.

The target is nginx (1 worker, `return 200 "ok"`, no access log) on a free
port of 127.0.0.1, pinned to core 1; every client is pinned to core 0 (when
`taskset` and a second core exist) and runs a closed loop of 64 concurrent
requests on 64 keep-alive connections for 5 s:

- wrk: `wrk -t1 -c64 -d5s URL` (one thread);
- hey: `hey -c 64 -z 5s -cpus 1 URL` (64 workers, GOMAXPROCS 1);
- loadctl, one agent process per engine (fast, aiohttp) with full
  measurement on: the agent's `Runner` runs a constant-users phase of 64
  users without think time, so every request goes through the closed-model
  scheduler, the `Sender` and the `Recorder` (outcome class, latency,
  service time, send lag), and each 1 s interval is cut, binned into
  histograms and encoded as a Snapshot, as in a real run (only the ZeroMQ
  link to a coordinator is left out). See `engine_bench.py`.

CPU is user + system time of the client process over all its threads: for
wrk and hey the `wait4` rusage of the whole process (start-up and the final
report included), for loadctl `getrusage(RUSAGE_SELF)` over 5 whole
intervals after a 1 s warm-up. Requests are those answered 2xx: from wrk's
and hey's own output, from the agent's snapshots for loadctl.

The clients run in N interleaved rounds (default 3: wrk, hey, fast,
aiohttp, then again), so a change in the machine's load touches them all
alike; each figure is the median over the rounds, and ratios are of medians.
A row "Python floor" is the cheapest Python client there is: a bare uvloop
Protocol per connection parsing with httptools and writing the next request
from its parser callback, no loadctl code and no measurement (`engine_bench.
_floor_loop`); it shows how close to wrk any Python agent can get here.
When the aiohttp engine is measured, a row "aiohttp floor" is aiohttp's own
client at its plainest: 64 coroutines on one default `ClientSession` calling
`session.get` and reading the body, no loadctl code and no measurement
(`engine_bench._aiohttp_floor_loop`); no engine built on aiohttp can cost
less, so the aiohttp engine is judged against it too.
`--bare` adds rows for the engines alone (no scheduler, no recorder).
`--engines fast,fast-nolane` measures the fast engine with and without its
compiled lane (agent/_lane.c) in the same rounds.
A missing wrk or hey is reported and skipped (no ratios without wrk).

Prints figures only; nothing here asserts. All load goes to 127.0.0.1 and
each run stops after its duration.

    python bench/compare_peers.py [--runs 3] [--duration 5] [--concurrency 64] [--bare]
        [--tls]

`--tls`: the same over https (engine_bench.py says how).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_bench as eb  # the bench directory is not a package: found by sys.path

HEY = "/usr/bin/hey"


@dataclass
class Tool:
    name: str
    run: Callable[[str, float, int], eb.Run]


def run_hey(url: str, duration: float, concurrency: int) -> eb.Run:
    cmd = [*eb.pin(0), HEY, "-c", str(concurrency), "-z", f"{duration:g}s"]
    if eb.pin(0):
        cmd += ["-cpus", "1"]  # one core, like the others
    code, output, usage = eb.run_measured([*cmd, url], duration + 60)
    total = re.search(r"Total:\s+([\d.]+) secs", output)
    if code != 0 or total is None:
        raise SystemExit(f"hey failed:\n{output}")
    statuses = {
        int(status): int(n) for status, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    }
    _, _, error_part = output.partition("Error distribution:")
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", error_part, re.M))
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    errors += sum(statuses.values()) - ok
    return eb.Run(ok, errors, float(total.group(1)), usage.ru_utime, usage.ru_stime)


def engine_tool(engine: str, bare: bool) -> Tool:
    def run(url: str, duration: float, concurrency: int) -> eb.Run:
        return eb.run_engine(engine, url, duration, concurrency, bare)

    return Tool(f"{engine} (bare)" if bare else f"loadctl {engine}", run)


def version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    found = re.search(pattern, out.stdout + out.stderr)
    return found.group(1) if found else "?"


def tools_for(args: argparse.Namespace) -> list[Tool]:
    tools = []
    if os.access(eb.WRK, os.X_OK):
        tools.append(Tool("wrk", eb.run_wrk))
    else:
        print(f"{eb.WRK} not found (Debian package wrk): skipped, and no ratios to wrk")
    if os.access(HEY, os.X_OK):
        tools.append(Tool("hey", run_hey))
    else:
        print(f"{HEY} not found (Debian package hey): skipped")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    tools += [engine_tool(e, bare=False) for e in engines]
    tools.append(Tool("Python floor", lambda url, d, c: eb.run_engine("floor", url, d, c)))
    if "aiohttp" in engines:
        tools.append(
            Tool("aiohttp floor", lambda url, d, c: eb.run_engine("aiohttp-floor", url, d, c))
        )
    if args.bare:
        tools += [engine_tool(e, bare=True) for e in engines]
    return tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--engines", default="fast,aiohttp")
    parser.add_argument(
        "--bare", action="store_true", help="also measure the engines alone (no recorder)"
    )
    parser.add_argument(
        "--tls", action="store_true", help="nginx over TLS (self-signed), every client on https"
    )
    args = parser.parse_args()

    load_start = os.getloadavg()
    cores = os.cpu_count() or 1
    pinned = "clients on core 0, target on core 1" if eb.pin(1) else "not pinned"
    print(
        f"{cores} cores; load average at start {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f}; {pinned}"
    )
    wrk_version = version([eb.WRK, "-v"], r"wrk (?:\w+/)?(\S+)")
    nginx_version = version([eb.NGINX, "-v"], r"nginx/([\d.]+)")
    print(
        f"Python {platform.python_version()}, aiohttp {metadata.version('aiohttp')}, "
        f"wrk {wrk_version}, hey (no version flag), nginx {nginx_version}"
    )
    tools = tools_for(args)
    with eb.serve_target(args.tls) as (url, target):
        print(
            f"target: {target} at {url}; closed loop, {args.concurrency} connections, "
            f"{args.duration:g} s per run, {args.runs} interleaved rounds\n",
            flush=True,
        )
        runs: dict[str, list[eb.Run]] = {t.name: [] for t in tools}
        for round_ in range(args.runs):
            for tool in tools:
                run = tool.run(url, args.duration, args.concurrency)
                runs[tool.name].append(run)
                print(
                    f"  round {round_ + 1}  {tool.name:<17}{run.rps:>8.0f} RPS "
                    f"{run.us_per_request:>7.1f} µs/req  {run.cpu / run.wall:>4.0%} CPU"
                    f"{f'  {run.errors} errors' if run.errors else ''}",
                    flush=True,
                )
    report(runs, args, load_start)


def report(
    runs: dict[str, list[eb.Run]], args: argparse.Namespace, load_start: tuple[float, ...]
) -> None:
    def med(name: str, key: Callable[[eb.Run], float]) -> float:
        return statistics.median(key(r) for r in runs[name])

    rps = {name: med(name, lambda r: r.rps) for name in runs}
    us = {name: med(name, lambda r: r.us_per_request) for name in runs}
    user = {name: med(name, lambda r: r.user / max(r.requests, 1) * 1e6) for name in runs}
    sys_ = {name: med(name, lambda r: r.sys / max(r.requests, 1) * 1e6) for name in runs}
    use = {name: med(name, lambda r: r.cpu / r.wall) for name in runs}
    errors = {name: sum(r.errors for r in runs[name]) for name in runs}
    wrk = "wrk" if "wrk" in runs else None

    print(f"\nmedians of {args.runs} rounds (each column its own median):\n")
    header = (
        f"{'tool':<18}{'RPS':>8}{'CPU µs/req':>12}{'user':>7}{'sys':>7}{'CPU use':>9}{'errors':>8}"
    )
    if wrk:
        header += f"{'CPU/req ÷ wrk':>15}{'RPS ÷ wrk':>11}"
    print(header)
    print("-" * len(header))
    for name in runs:
        line = (
            f"{name:<18}{rps[name]:>8.0f}{us[name]:>12.1f}{user[name]:>7.1f}"
            f"{sys_[name]:>7.1f}{use[name]:>9.0%}{errors[name]:>8d}"
        )
        if wrk:
            line += f"{us[name] / us[wrk]:>15.2f}{rps[name] / rps[wrk]:>11.2f}"
        print(line)

    print("\ntargets (from the issue):")
    goal = eb.TARGETS["fast_cpu_ratio_to_wrk"]
    if wrk and "loadctl fast" in runs:
        ratio = us["loadctl fast"] / us[wrk]
        verdict = "met" if ratio <= goal else "not met"
        print(
            f"  fast engine, full measurement: {ratio:.2f} × wrk's CPU per request "
            f"(target ≤ {goal:g}×): {verdict}"
        )
        if "Python floor" in runs:
            print(
                f"  (the Python floor, a bare uvloop Protocol + httptools client with no "
                f"measurement: {us['Python floor'] / us[wrk]:.2f} × wrk)"
            )
    else:
        print(f"  fast engine ≤ {goal:g} × wrk's CPU per request: not measured")
    goal = eb.TARGETS["aiohttp_us_per_request"]
    if "loadctl aiohttp" in runs:
        value = us["loadctl aiohttp"]
        verdict = "met" if value <= goal else "not met"
        print(
            f"  aiohttp engine, full measurement: {value:.1f} µs CPU per request "
            f"(target ≤ {goal:g} µs): {verdict}"
        )
        if "aiohttp floor" in runs:
            print(
                f"  (aiohttp floor, a plain ClientSession loop with no measurement: "
                f"{us['aiohttp floor']:.1f} µs; the engine costs "
                f"{value / us['aiohttp floor']:.2f} × that)"
            )
    else:
        print(f"  aiohttp engine ≤ {goal:g} µs per request: not measured")
    end = os.getloadavg()
    print(
        f"\nload average at start {load_start[0]:.2f}, at end {end[0]:.2f} "
        f"({os.cpu_count() or 1} cores); a shared machine moves absolute figures, "
        "ratios measured in the same rounds move less"
    )


if __name__ == "__main__":
    main()
