"""Load models at full size on this machine: the 5,000 RPS burst and 1,000 concurrent users.

    python bench/load_models_bench.py [--agents 2] [--burst-rate 5000] [--users 1000]

Runs each with `loadctl run` (a local coordinator and agent processes) against the
demo target, or against nginx when it is installed (a static 200 answer; much faster
than the Python target, so the generator is what is measured), and prints: the
achieved rate against the schedule, the send lag (actual send minus intended time)
p50/p99, each agent's peak CPU % and RSS, and the active-users gauge at the plateau.
Figures only; nothing is asserted. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
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
    users = [r["active_users"] for r in rows]
    if any(users):
        print(f"  active users per interval: {users}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--burst-rate", type=int, default=5000)
    parser.add_argument("--burst-seconds", type=int, default=5)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    with target() as url:
        burst = {
            "target": url,
            "defaults": {"timeout": "5s", "max_in_flight": 5000},
            "requests": [{"name": "get", "path": "/"}],
            "phases": [
                {
                    "name": "burst",
                    "executor": "burst",
                    "rate": args.burst_rate,
                    "duration": args.burst_seconds,
                }
            ],
        }
        report(
            f"burst {args.burst_rate} RPS × {args.burst_seconds} s on {args.agents} agents",
            run(burst, args.agents),
            args.burst_rate * args.burst_seconds,
        )
        users = {
            "target": url,
            "defaults": {"timeout": "5s"},
            "requests": [{"name": "get", "path": "/"}],
            "phases": [
                {
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
            ],
        }
        report(
            f"{args.users} concurrent users (per-user connections, 0.5–1.5 s think) "
            f"on {args.agents} agents",
            run(users, args.agents),
            None,
        )


if __name__ == "__main__":
    main()
