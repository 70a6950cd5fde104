"""Load models at full size on this machine: the 5,000 RPS burst and 1,000 concurrent users.

    python bench/load_models_bench.py [--agents 2] [--burst-rate 5000] [--users 1000]
        [--parts burst,low,users] [--burst-only] [--low-rate 10] [--low-seconds 10]
        [--pacer timerfd|sleep]

Runs each with `loadctl run` (a local coordinator and agent processes) against the
demo target, or against nginx when it is installed (a static 200 answer; much faster
than the Python target, so the generator is what is measured), and prints: the
achieved rate against the schedule, the send lag (actual send minus intended time)
p50/p99, each agent's peak CPU % and RSS, and the active-users gauge at the plateau.

The parts (`--parts`, in this order; `--burst-only` is `--parts burst`):

- `burst`: `--burst-rate` RPS for `--burst-seconds` on `--agents` agents;
- `low`: `--low-rate` RPS (10) for `--low-seconds` (10) on one agent, which
  shows whether the scheduler's CPU follows the load or the wall clock: the
  agent's CPU % per interval (median and max over the intervals inside the
  phase; heartbeats and snapshots included);
- `users`: `--users` concurrent users on `--agents` agents;
- `pacer` (not in the default): the pacer alone, in this process on uvloop, no
  HTTP: `wait_until` at `--low-rate` and at the burst's per-agent rate, with
  its lag (wake minus deadline) p50/p99/max and this process's CPU % meanwhile,
  for each of its methods (timerfd, and the sleep(0) fallback), alternated.

`--pacer sleep` makes the agents use the pacer's fallback (`LOADCTL_PACER`),
to compare it with the timerfd on the same machine in the same minutes.

Figures only; nothing is asserted. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

LOADCTL = [sys.executable, "-m", "loadctl"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def target() -> Iterator[str]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        if nginx:
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(
                f"worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log stderr;\n"
                "events { worker_connections 4096; }\n"
                f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n"
                f"  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
                f"  keepalive_requests 1000000;\n"
                f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }} }}\n"
            )
            proc = subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.DEVNULL)
            kind = "nginx (1 worker)"
        else:
            proc = subprocess.Popen(
                [*LOADCTL, "target", "--port", str(port)], stdout=subprocess.DEVNULL
            )
            kind = "the demo target (nginx not installed)"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"target: {kind} on 127.0.0.1:{port}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def run(scenario: dict[str, Any], agents: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_text(yaml.safe_dump(scenario))
        out = Path(tmp) / "out"
        subprocess.run(
            [
                *LOADCTL,
                "run",
                str(path),
                "--agents",
                str(agents),
                "--out",
                str(out),
                "--quiet",
                "--metrics-port",
                "0",
            ],
            capture_output=True,
            timeout=300,
        )
        result: dict[str, Any] = json.loads((out / "result.json").read_text())
        return result


def report(title: str, result: dict[str, Any], expected: int | None) -> None:
    totals = result["totals"]
    lag = totals["send_lag_ms"]
    print(f"\n{title}")
    sent = totals["arrivals"]
    if expected:
        print(
            f"  arrivals {sent} of {expected} scheduled ({100 * sent / expected:.2f} %), "
            f"completed {totals['requests']}, dropped {totals['dropped']}, "
            f"errors {totals['errors']}"
        )
    else:
        print(
            f"  completed {totals['requests']} ({totals['rps']:.0f} RPS), errors {totals['errors']}"
        )
    print(
        f"  send lag p50 {lag.get('p50', 0):.3f} ms, p99 {lag.get('p99', 0):.3f} ms, "
        f"max {lag.get('max', 0):.1f} ms; latency p99 {totals['latency_ms'].get('p99', 0):.2f} ms"
    )
    for a in result["agents"]:
        if a["planned"]:
            print(
                f"  agent {a['id']}: peak CPU {a['max_cpu_percent']:.0f} %, "
                f"peak RSS {a['max_rss_bytes'] / 2**20:.0f} MiB, requests {a['requests']}"
            )
    rows = result["timeline"]
    per_second = [sum(s["arrivals"] for s in r["series"]) for r in rows]
    if expected:
        print(f"  arrivals per interval: {per_second}")
        lag_p99 = [r["total"]["send_lag_ms"].get("p99", 0) for r in rows]
        print(f"  send lag p99 per interval (ms): {[round(v, 2) for v in lag_p99]}")
    users = [r["active_users"] for r in rows]
    if any(users):
        print(f"  active users per interval: {users}")


def report_low(title: str, result: dict[str, Any], expected: int) -> None:
    report(title, result, expected)
    rows = [r for r in result["timeline"] if any(s["arrivals"] for s in r["series"])]
    inner = rows[1:-1] or rows  # the first and last intervals hold start-up and wind-down
    agents = sorted({a for r in inner for a in r.get("cpu_percent", {})})
    for agent in agents:
        samples = [r["cpu_percent"][agent] for r in inner if agent in r.get("cpu_percent", {})]
        if samples:
            print(
                f"  agent {agent}: CPU per interval median {statistics.median(samples):.1f} %, "
                f"max {max(samples):.1f} % over {len(samples)} intervals"
            )


async def _pace(rate: float, seconds: float) -> tuple[list[float], float, float]:
    """wait_until for each arrival of `rate` RPS: the lags (s), CPU seconds and wall seconds."""
    from loadctl.agent.pacer import wait_until

    lags: list[float] = []
    gap = 1.0 / rate
    start = time.perf_counter() + 0.1
    count = int(rate * seconds)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(count):
        intended = start + k * gap
        await wait_until(intended)
        lags.append(time.perf_counter() - intended)
    return lags, time.process_time() - cpu0, time.perf_counter() - wall0


def report_pacer(rates: list[float], seconds: float) -> None:
    import uvloop

    from loadctl.agent import pacer

    methods = [pacer.TIMERFD, pacer.SLEEP] if pacer.method() == pacer.TIMERFD else [pacer.SLEEP]
    print(f"\npacer alone on uvloop, {seconds:g} s per rate and method")
    for rate in rates:
        for name in methods:
            pacer._method = name  # new loops take it
            lags, cpu, wall = uvloop.run(_pace(rate, seconds))
            lags.sort()
            ms = [1000 * lags[int(q * (len(lags) - 1))] for q in (0.5, 0.99)]
            print(
                f"  {rate:g} RPS, {name}: lag p50 {ms[0]:.3f} ms, p99 {ms[1]:.3f} ms, "
                f"max {1000 * lags[-1]:.3f} ms; CPU {100 * cpu / wall:.1f} % of a core"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--burst-rate", type=int, default=5000)
    parser.add_argument("--burst-seconds", type=int, default=5)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--low-rate", type=float, default=10)
    parser.add_argument("--low-seconds", type=int, default=10)
    parser.add_argument("--parts", default="burst,low,users", help="of burst,low,users,pacer")
    parser.add_argument("--burst-only", action="store_true", help="the same as --parts burst")
    parser.add_argument("--pacer", choices=["timerfd", "sleep"], help="the agents' pacer method")
    args = parser.parse_args()
    if args.pacer:
        os.environ["LOADCTL_PACER"] = args.pacer
        print(f"agents' pacer: {args.pacer}")
    parts = {"burst"} if args.burst_only else set(args.parts.split(","))
    unknown = parts - {"burst", "low", "users", "pacer"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if "pacer" in parts:
        report_pacer([args.low_rate, args.burst_rate / args.agents], args.low_seconds)
    if not parts & {"burst", "low", "users"}:
        return
    with target() as url:

        def one_phase(phase: dict[str, Any], **defaults: Any) -> dict[str, Any]:
            """A scenario of one GET / phase against the target."""
            return {
                "target": url,
                "defaults": {"timeout": "5s", **defaults},
                "requests": [{"name": "get", "path": "/"}],
                "phases": [phase],
            }

        if "burst" in parts:
            burst = {
                "name": "burst",
                "executor": "burst",
                "rate": args.burst_rate,
                "duration": args.burst_seconds,
            }
            report(
                f"burst {args.burst_rate} RPS × {args.burst_seconds} s on {args.agents} agents",
                run(one_phase(burst, max_in_flight=5000), args.agents),
                args.burst_rate * args.burst_seconds,
            )
        if "low" in parts:
            low = {
                "name": "low",
                "executor": "constant-rate",
                "rate": args.low_rate,
                "duration": args.low_seconds,
            }
            report_low(
                f"constant {args.low_rate:g} RPS × {args.low_seconds} s on 1 agent",
                run(one_phase(low), 1),
                int(args.low_rate * args.low_seconds),
            )
        if "users" in parts:
            users = {
                "name": "users",
                "executor": "ramping-users",
                "start_users": 0,
                "think": "uniform:500ms:1500ms",
                "connections": "per-user",
                "grace": "5s",
                "stages": [
                    {"duration": "5s", "target": args.users},
                    {"duration": "10s", "target": args.users},
                ],
            }
            report(
                f"{args.users} concurrent users (per-user connections, 0.5–1.5 s think) "
                f"on {args.agents} agents",
                run(one_phase(users), args.agents),
                None,
            )


if __name__ == "__main__":
    main()
