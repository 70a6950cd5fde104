"""CPU per request of the open model (a constant-rate phase) on the fast engine.

A closed loop reads many replies per event-loop wake; the open model wakes once
per arrival, at its intended time (see agent/pacer.py), so its cost per request
depends on the rate. This runs the agent's `Runner` with one constant-rate phase
of one request against nginx (1 worker, pinned to core 1), in a worker process
pinned to core 0, with full measurement on, for each `--rates` value in
`--runs` interleaved rounds, and prints the medians: CPU µs per request (user and
system apart) and the share of arrivals sent. Each figure is the difference of
two runs, of `--duration` and of twice that, divided by the difference of their
requests (`getrusage` of the worker around each run), so that what a run costs
whatever its length (starting, draining, the first intervals) is left out.

All load goes to 127.0.0.1, bounded by the rate and `--duration`.

    python bench/open_model_cost.py [--rates 2000,8000,16000] [--duration 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_bench as eb  # the bench directory is not a package: found by sys.path


def worker(url: str, rate: float, duration: float) -> None:
    """Run the phase in this process; print one JSON line of figures."""
    import uvloop

    from loadctl.agent.runner import Runner
    from loadctl.protocol.clock import ClockEstimate
    from loadctl.protocol.messages import Plan, Series, Share
    from loadctl.protocol.scenario import Scenario

    scenario = Scenario.from_dict(
        {
            "name": "open-model-cost",
            "target": url,
            "defaults": {"engine": "fast", "connections": 256, "timeout": 5.0, "interval": 1.0},
            "requests": [{"name": "get", "path": "/"}],
            "phases": [
                {"name": "rate", "executor": "constant-rate", "rate": rate, "duration": duration}
            ],
        }
    )
    counts = {"ok": 0, "arrivals": 0}

    async def sink(
        index: int, start: float, end: float, series: tuple[Series, ...], _: list[Any]
    ) -> None:
        for s in series:
            counts["arrivals"] += s.arrivals
            counts["ok"] += s.outcomes.get("2xx", 0)

    async def main() -> None:
        plan = Plan("open", scenario.wire(), Share(0.0, (1,), 0), time.time() + 0.2, 1.0)
        await Runner(plan, ClockEstimate(0.0, 0.0, 1), sink).run()

    before = resource.getrusage(resource.RUSAGE_SELF)
    uvloop.run(main())
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({**counts, "user": user, "sys": sys_, "scheduled": rate * duration}))


def measure(url: str, rate: float, duration: float) -> dict[str, float]:
    cmd = [*eb.pin(0), sys.executable, __file__, "--worker", "--url", url]
    cmd += ["--rates", str(rate), "--duration", str(duration)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60)
    data: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,8000,16000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.worker:
        worker(args.url, rates[0], args.duration)
        return
    with tempfile.TemporaryDirectory(prefix="loadctl-open-") as tmp:
        port = eb.free_port()
        nginx = eb.start_nginx(Path(tmp), port)
        try:
            eb.wait_for_port(port, nginx)
            url = f"http://127.0.0.1:{port}"
            results: dict[float, list[dict[str, float]]] = {r: [] for r in rates}
            for round_ in range(1, args.runs + 1):
                for rate in rates:
                    short = measure(url, rate, args.duration)
                    long = measure(url, rate, 2 * args.duration)
                    got = {key: long[key] - short[key] for key in long}
                    got["sent"] = long["arrivals"] / long["scheduled"]
                    results[rate].append(got)
                    cpu = (got["user"] + got["sys"]) / max(1, got["ok"]) * 1e6
                    print(f"  round {round_}  {rate:>8,.0f} RPS  {cpu:6.1f} µs/req", flush=True)
        finally:
            nginx.terminate()
            nginx.wait(10)
    print("\nmedians (open model, fast engine, full measurement, one agent process):\n")
    print(f"{'rate':>8}  {'CPU µs/req':>10}  {'user':>6}  {'sys':>6}  {'sent':>7}")
    for rate, runs in results.items():

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] / max(1, r["ok"]) * 1e6 for r in runs)

        user, sys_ = median("user"), median("sys")
        sent = statistics.median(r["sent"] for r in runs)
        print(f"{rate:>8,.0f}  {user + sys_:>10.1f}  {user:>6.1f}  {sys_:>6.1f}  {sent:>7.1%}")


if __name__ == "__main__":
    main()
