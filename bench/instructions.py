"""User-space instructions per request, counted by valgrind: a figure the machine's noise
does not move, for comparing two versions of the hot path.

CPU time on these shared VMs moves by tens of percent from one minute to the next;
instructions executed do not. Each client of `engine_bench.py` (the Python floor,
and the fast engine with full measurement) runs under `valgrind --tool=callgrind`
against nginx on 127.0.0.1, twice: for `--short` and for `--long` seconds. The
difference of the two instruction totals divided by the difference of their
request counts is the cost of one request, start-up (imports: ~2 billion
instructions) left out. The agent also does work every second whatever the load
(interval cuts, its users' controller); that is measured apart, by the same two
runs with a think time so long that hardly a request is sent, and subtracted.
Valgrind runs the client ~50x slower, so a request's share of that per-second work
would be ~50x too large without the subtraction.

Kernel time (the loopback write and read, most of a request's CPU) is not counted:
this compares our code, not the system. Expect a few percent of run-to-run spread.

    python bench/instructions.py [--clients floor,fast,aiohttp,aiohttp-floor] [--short 3]
        [--long 8] [--journey]

`--journey` gives the agent's requests a templated query and a status check, as
`engine_bench.py --journey` does.

Needs valgrind (Debian package `valgrind`). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_bench as eb  # the bench directory is not a package: found by sys.path

IDLE_THINK = 1000.0  # seconds: each user sends one request, then thinks past the run


def counted(
    url: str, client: str, seconds: float, think: float, journey: bool = False
) -> tuple[int, int]:
    """(instructions, requests) of one run of `client` under callgrind."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += [str(Path(eb.__file__)), "--worker", client, "--url", url]
    cmd += ["--duration", str(seconds), "--concurrency", "64", "--think", str(think)]
    if journey:
        cmd.append("--journey")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 20 + 300)
    total = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or total is None:
        raise SystemExit(f"{client} under valgrind failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return int(total.group(1)), int(result["requests"] + result["errors"])


def per_request(
    url: str, client: str, short: float, long: float, journey: bool = False
) -> tuple[float, float]:
    """Instructions per request, and the per-second work subtracted from it."""
    journey = journey and client not in eb.FLOORS
    (i0, n0), (i1, n1) = (counted(url, client, s, 0.0, journey) for s in (short, long))
    per_second = 0.0
    if client not in eb.FLOORS:  # a floor does nothing but requests
        (j0, _), (j1, _) = (counted(url, client, s, IDLE_THINK, journey) for s in (short, long))
        per_second = (j1 - j0) / (long - short)
    return (i1 - i0 - per_second * (long - short)) / (n1 - n0), per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", default="floor,fast", help="of floor, fast, aiohttp, aiohttp-floor"
    )
    parser.add_argument("--short", type=float, default=3.0)
    parser.add_argument("--long", type=float, default=8.0)
    parser.add_argument("--journey", action="store_true", help="a templated query and a check")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian package valgrind)")
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    with eb.serve_target() as (url, target):
        print(f"target: {target} at {url}; runs of {args.short:g} s and {args.long:g} s\n")
        figures = {}
        for client in clients:
            figures[client], per_second = per_request(
                url, client, args.short, args.long, args.journey
            )
            print(
                f"  {client:<13} {figures[client]:>9,.0f} instructions per request"
                f"  (per-second work subtracted: {per_second:,.0f})",
                flush=True,
            )
        print()
        for floor, of in (("floor", ("fast",)), ("aiohttp-floor", ("aiohttp",))):
            for client in of:
                if floor in figures and client in figures:
                    print(f"  {client:<13} {figures[client] / figures[floor]:.2f} x {floor}")


if __name__ == "__main__":
    main()
