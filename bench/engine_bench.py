"""CPU per request of the agent's HTTP engines, against wrk as the reference.

Starts its own nginx (1 worker, 127.0.0.1 on a free port, `return 200 "ok"`,
no access log; pinned to core 1 when `taskset` and a second core exist),
then for each engine runs a closed loop of 64 concurrent requests for ~5 s
in a fresh Python process pinned to core 0, and wrk (`-t1 -c64 -d5s`)
pinned to core 0 the same way. Each measurement is the median of 3 runs.

By default each engine runs with full measurement, as in a real run: the
agent's own `Runner` executes a constant-users phase (64 users, no think
time, a shared pool of 64 connections), so every request goes through the
closed-model scheduler, the `Sender` and the `Recorder` (outcome classes,
latency, service time and send lag), and every 1 s interval is cut, binned
into histograms and encoded as the Snapshot the agent would send (only the
ZeroMQ link is left out). `--bare` measures the engines alone instead: 64
coroutines calling `client.send` and counting replies. `--journey` gives each
request what a typical journey step has: a templated query rendered per request
(`?u=${user_id}&i=${iteration}`: the Python path) and a status check, judged and
counted per reply; `--journey per-user` a query that stays the user's
(`?u=${user_id}`, rendered once per user) and the same check, which the compiled
lane carries.

CPU is user + system time of the client process: `getrusage(RUSAGE_SELF)`
over the measured window for the engines (with full measurement, after one
interval of warm-up and from one interval cut to another, so the window holds
whole intervals; bare, after 0.5 s of warm-up), and `wait4`'s rusage of the
whole wrk process for wrk (so wrk's start-up is counted against it; a few ms
in 5 s).

Without nginx, the target is an aiohttp server; without wrk, no reference.
Prints figures only; nothing here asserts a speed (a journey run whose checks
do not add up stops with a message). All load goes to 127.0.0.1 and
stops after the given duration. `bench/compare_peers.py` reuses this module
to add hey to the comparison.

    python bench/engine_bench.py [--duration 5] [--runs 3] [--concurrency 64] [--bare | --journey
        [rendered | per-user]] [--tls]

`--tls` serves nginx over TLS (a self-signed P-256 certificate; TLS 1.3) and runs
every client on https without checking the certificate, as wrk and hey do not:
connections are kept alive, so what differs is the cost of encrypting each request
and decrypting each reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NGINX = "/usr/sbin/nginx"
NO_LANE = "-nolane"  # an engine name's suffix: the same engine, compiled lane off
WRK = "/usr/bin/wrk"
TARGETS = {"fast_cpu_ratio_to_wrk": 1.2, "aiohttp_us_per_request": 60.0}
FLOORS = ("floor", "aiohttp-floor")
# Over TLS, uvloop reads a plain Protocol's connection with SSLObject.read(256 KiB): a
# 256 KiB buffer per read, which glibc, depending on what else is on the heap, gives
# back to the kernel at each free (brk) and faults in again at the next read. The bare
# floors paid it (24-28 us of system time per request against 6.5-8.5 without), the
# agent did not (alternated with and without these: the same CPU), so the floors run
# with the thresholds fixed, to stay floors: nothing mmap'd or trimmed below 1 / 8 MiB.
FLOOR_HEAP_OVER_TLS = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(8 << 20),
}


# -- the measured client (runs in its own process) -----------------------------


def _unchecked_tls(url: str) -> ssl.SSLContext | None:
    """For an https URL, a context that does not check the bench's self-signed
    certificate (as wrk and hey do not): the handshake is once per connection, and
    what is measured is the cost per request on the encrypted connection."""
    if not url.startswith("https:"):
        return None
    from loadctl.protocol.target_tls import client_context

    return client_context(False, None)


class _Users:
    """`concurrency` coroutines sending one request after another until measured."""

    def __init__(self) -> None:
        self.counts = {"ok": 0, "errors": 0}
        self.running = True

    async def measure(
        self, user: Callable[[], Awaitable[None]], duration: float, concurrency: int
    ) -> dict[str, float]:
        tasks = [asyncio.ensure_future(user()) for _ in range(concurrency)]

        async def stop() -> None:
            self.running = False
            await asyncio.gather(*tasks)

        return await _measured_window(duration, self.counts, stop)


async def _closed_loop(
    engine: str, url: str, duration: float, concurrency: int
) -> dict[str, float]:
    from loadctl.agent.engines import make_client
    from loadctl.agent.http import Endpoint, HttpRequest, SendError

    parts = url.split("/", 3)
    endpoint = Endpoint.parse("/".join(parts[:3]))
    if endpoint.host not in ("127.0.0.1", "localhost"):
        raise SystemExit("the bench only sends load to 127.0.0.1")
    request = HttpRequest(endpoint, "GET", "/" + (parts[3] if len(parts) > 3 else ""))
    client = make_client(engine, concurrency, ssl_context=_unchecked_tls(url))
    users = _Users()
    counts = users.counts

    async def user() -> None:
        send = client.send
        while users.running:
            try:
                reply = await send(request, 5.0)
            except SendError:
                counts["errors"] += 1
            else:
                counts["ok" if reply.status == 200 else "errors"] += 1

    result = await users.measure(user, duration, concurrency)
    await client.close()
    return result


async def _measured_window(
    duration: float, counts: dict[str, int], stop: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    """After 0.5 s of warm-up (connections made, caches filled), `counts` and this
    process's CPU over `duration` seconds; `stop` ends the clients before the end."""
    await asyncio.sleep(0.5)
    counts["ok"] = counts["errors"] = 0
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.sleep(duration)
    await stop()
    wall = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": counts["ok"],
        "errors": counts["errors"],
        "wall": wall,
        "user": usage1.ru_utime - usage0.ru_utime,
        "sys": usage1.ru_stime - usage0.ru_stime,
    }


async def _agent_closed_loop(
    engine: str,
    url: str,
    duration: float,
    concurrency: int,
    think: float = 0.0,
    journey: str = "",
) -> dict[str, float]:
    """The same closed loop, run by the agent's `Runner` with full measurement on.

    One constant-users phase: `concurrency` users, no think time, one shared
    pool of `concurrency` connections. Interval 0 is the warm-up; the window
    measured runs from the cut of interval 0 to the cut of interval n (n
    intervals of about 1 s, n·interval = `duration`), so it holds the per-
    request recording of intervals 1..n and their cuts (histogram binning,
    Snapshot encoding) and nothing else. Requests are counted from the
    snapshots themselves.
    """
    import psutil

    from loadctl.agent.http import Endpoint
    from loadctl.agent.runner import Runner
    from loadctl.protocol.clock import ClockEstimate
    from loadctl.protocol.codec import encode
    from loadctl.protocol.messages import Plan, Series, Share, Snapshot
    from loadctl.protocol.scenario import Scenario

    parts = url.split("/", 3)
    endpoint = Endpoint.parse("/".join(parts[:3]))
    if endpoint.host not in ("127.0.0.1", "localhost"):
        raise SystemExit("the bench only sends load to 127.0.0.1")
    intervals = max(1, round(duration))
    interval = duration / intervals
    scenario = Scenario.from_dict(
        {
            "name": "engine-bench",
            "target": endpoint.base_url,
            "defaults": {
                **({"tls": {"verify": False}} if endpoint.tls else {}),
                "engine": engine,
                "connections": concurrency,
                "timeout": 5.0,
                "interval": interval,
            },
            "requests": [
                {
                    "name": "get",
                    "method": "GET",
                    "path": "/"
                    + (parts[3] if len(parts) > 3 else "")
                    + JOURNEY_QUERIES.get(journey, ""),
                    **(CHECK if journey else {}),
                }
            ],
            "phases": [
                {
                    "name": "closed",
                    "executor": "constant-users",
                    "users": concurrency,
                    "think": think,
                    "grace": 1.0,
                    # warm-up interval, measured intervals, and a little beyond the last cut
                    "duration": (intervals + 1) * interval + 0.25,
                }
            ],
        }
    )
    plan = Plan("engine-bench", scenario.wire(), Share(0.0, (1,), 0), time.time() + 0.1, interval)
    process = psutil.Process()
    process.cpu_percent(None)
    counts = {"ok": 0, "errors": 0, "checked": 0}
    marks: dict[int, tuple[float, resource.struct_rusage]] = {}
    runner: Runner

    async def sink(
        index: int, start: float, end: float, series: tuple[Series, ...], histograms: list[Any]
    ) -> None:
        # What the agent's session does with each cut (less the ZeroMQ send).
        encode(
            Snapshot(
                run_id=plan.run_id,
                agent_id="bench",
                seq=index + 1,
                interval=index,
                start=start,
                end=end,
                series=series,
                histograms=histograms,
                active_users=runner.users_at_cut,
                in_flight=runner.sender.in_flight,
                cpu_percent=process.cpu_percent(None),
                rss_bytes=process.memory_info().rss,
            )
        )
        if 1 <= index <= intervals:
            for s in series:
                counts["checked"] += s.checks_passed
                for outcome, n in s.outcomes.items():
                    counts["ok" if outcome == "2xx" else "errors"] += n
        if index in (0, intervals) and index not in marks:
            marks[index] = (time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF))

    runner = Runner(plan, ClockEstimate(0.0, 0.0, 1), sink)
    await runner.run()
    if runner.engine != engine:
        raise SystemExit(f"the agent ran the {runner.engine} engine, not {engine}")
    if journey and counts["checked"] != counts["ok"]:  # each 200 passes its status check
        raise SystemExit(f"{counts['checked']} checks passed for {counts['ok']} replies of 200")
    (t0, usage0), (t1, usage1) = marks[0], marks[intervals]
    return {
        "requests": counts["ok"],
        "errors": counts["errors"],
        "wall": t1 - t0,
        "user": usage1.ru_utime - usage0.ru_utime,
        "sys": usage1.ru_stime - usage0.ru_stime,
    }


# what --journey adds to the request: a templated query (rendered per request, or
# once per user) and a status check
JOURNEY_QUERIES = {"rendered": "?u=${user_id}&i=${iteration}", "per-user": "?u=${user_id}"}
CHECK = {"check": [{"status": 200}]}


def worker_main(
    engine: str,
    url: str,
    duration: float,
    concurrency: int,
    bare: bool,
    think: float,
    journey: str = "",
) -> None:
    import uvloop

    if engine == "floor":
        result = uvloop.run(_floor_loop(url, duration, concurrency))
    elif engine == "aiohttp-floor":
        result = uvloop.run(_aiohttp_floor_loop(url, duration, concurrency))
    elif bare:
        result = uvloop.run(_closed_loop(engine, url, duration, concurrency))
    else:
        result = uvloop.run(_agent_closed_loop(engine, url, duration, concurrency, think, journey))
    print(json.dumps(result))


# -- the driver ---------------------------------------------------------------


@dataclass
class Run:
    requests: int
    errors: int
    wall: float
    user: float
    sys: float

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def rps(self) -> float:
        return self.requests / self.wall

    @property
    def us_per_request(self) -> float:
        return self.cpu / max(self.requests, 1) * 1e6


def pin(core: int) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset is None or (os.cpu_count() or 1) <= core:
        return []
    return [taskset, "-c", str(core)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the target exited early (code {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the target did not listen on 127.0.0.1:{port}")


def start_nginx(tmp: Path, port: int, tls: bool = False) -> subprocess.Popen[bytes]:
    listen = f"127.0.0.1:{port}"
    if tls:
        _self_signed(tmp)
        listen += f" ssl; ssl_protocols TLSv1.3; ssl_certificate {tmp}/cert.pem"
        listen += f"; ssl_certificate_key {tmp}/key.pem"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {tmp}/nginx.pid;
            error_log {tmp}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                keepalive_requests 10000000;
                client_body_temp_path {tmp}/client_body;
                proxy_temp_path {tmp}/proxy;
                fastcgi_temp_path {tmp}/fastcgi;
                uwsgi_temp_path {tmp}/uwsgi;
                scgi_temp_path {tmp}/scgi;
                server {{
                    listen {listen};
                    location / {{ return 200 "ok"; }}
                }}
            }}
            """
        )
    )
    return subprocess.Popen(
        [*pin(1), NGINX, "-p", str(tmp), "-c", str(conf), "-e", f"{tmp}/error.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


AIOHTTP_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def start_aiohttp(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*pin(1), sys.executable, "-c", AIOHTTP_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_engine(
    engine: str,
    url: str,
    duration: float,
    concurrency: int,
    bare: bool = False,
    journey: str = "",
) -> Run:
    """One measured run of a loadctl engine, in a fresh Python process pinned to core 0.
    `ENGINE-nolane` is ENGINE with the compiled extensions off (LOADCTL_NO_KERNEL=1): the
    fast engine without its lane, to compare the two in the same rounds."""
    env = None
    if engine.endswith(NO_LANE):
        engine = engine.removesuffix(NO_LANE)
        env = {**os.environ, "LOADCTL_NO_KERNEL": "1"}
    if engine in FLOORS and url.startswith("https:"):
        env = {**os.environ, **FLOOR_HEAP_OVER_TLS}
    cmd = [*pin(0), sys.executable, os.path.abspath(__file__), "--worker", engine, "--url", url]
    cmd += ["--duration", str(duration), "--concurrency", str(concurrency)]
    if bare:
        cmd.append("--bare")
    if journey:
        cmd += ["--journey", journey]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=duration + 60, env=env
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Run(int(data["requests"]), int(data["errors"]), data["wall"], data["user"], data["sys"])


def run_measured(cmd: list[str], timeout: float) -> tuple[int, str, resource.struct_rusage]:
    """Run `cmd` to its end; its exit code, its output (stdout and stderr) and the
    rusage of the whole process (every thread) from `wait4`. Killed after `timeout`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, output, usage


def run_wrk(url: str, duration: float, concurrency: int) -> Run:
    cmd = [*pin(0), WRK, "-t1", f"-c{concurrency}", f"-d{duration:g}s", url]
    code, output, usage = run_measured(cmd, duration + 30)
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if code != 0 or match is None:
        raise SystemExit(f"wrk failed:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    measured = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    return Run(
        int(match.group(1)),
        int(errors.group(1)) if errors else 0,
        measured,
        usage.ru_utime,
        usage.ru_stime,
    )


def median_run(runs: list[Run]) -> Run:
    """The run with the median CPU per request (its RPS is reported with it)."""
    return sorted(runs, key=lambda r: r.us_per_request)[len(runs) // 2]


def _self_signed(tmp: Path) -> None:
    """cert.pem and key.pem in `tmp`: a self-signed certificate for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("--tls needs the openssl command (Debian package openssl)")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )


@contextmanager
def serve_target(tls: bool = False) -> Iterator[tuple[str, str]]:
    """nginx (1 worker, pinned to core 1) on a free port of 127.0.0.1, or an aiohttp
    server without nginx; yields (URL, description) and stops it on exit. `tls`:
    nginx over TLS (a self-signed certificate), the URL https."""
    port = free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="loadctl-bench-") as tmp:
        if os.access(NGINX, os.X_OK):
            target, proc = "nginx (1 worker)", start_nginx(Path(tmp), port, tls)
            if tls:
                target += " over TLS 1.3"
        elif tls:
            raise SystemExit("--tls needs nginx (Debian package nginx)")
        else:
            print(f"{NGINX} not found: the target is an aiohttp server instead")
            target, proc = "aiohttp server", start_aiohttp(port)
        try:
            wait_for_port(port, proc)
            yield url, target
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _floor_loop(url: str, duration: float, concurrency: int) -> dict[str, float]:
    """The floor for a Python client: a bare uvloop Protocol per connection that
    parses with httptools and writes the next request from its message-complete
    callback. No loadctl code, no timeouts, no measurement: what the design notes
    call "a bare uvloop asyncio.Protocol client parsing with httptools"."""
    import httptools

    parts = url.split("/", 3)
    host, port = parts[2].rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("the bench only sends load to 127.0.0.1")
    wire = f"GET /{parts[3] if len(parts) > 3 else ''} HTTP/1.1\r\nHost: {parts[2]}\r\n\r\n"
    request = wire.encode()
    counts = {"ok": 0, "errors": 0}
    running = True

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.transport.write(request)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            counts["ok" if self.parser.get_status_code() == 200 else "errors"] += 1
            if running:
                self.transport.write(request)

    async def stop() -> None:
        nonlocal running
        running = False

    loop = asyncio.get_running_loop()
    for _ in range(concurrency):
        await loop.create_connection(Client, host, int(port), ssl=_unchecked_tls(url))
    return await _measured_window(duration, counts, stop)


async def _aiohttp_floor_loop(url: str, duration: float, concurrency: int) -> dict[str, float]:
    """aiohttp's own floor: `concurrency` coroutines calling `session.get` and reading
    the body on one plain `ClientSession` (its defaults: default headers, a cookie
    jar, the session's 5-minute timeout; one pool of `concurrency` connections). No
    loadctl code and no measurement: what the issue measured as "aiohttp on uvloop",
    the cost below which no engine built on aiohttp's client can go."""
    import aiohttp

    if url.split("/", 3)[2].rsplit(":", 1)[0] not in ("127.0.0.1", "localhost"):
        raise SystemExit("the bench only sends load to 127.0.0.1")
    users = _Users()
    counts = users.counts
    tls = _unchecked_tls(url)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, ssl=tls if tls is not None else True)
    )

    async def user() -> None:
        while users.running:
            async with session.get(url) as reply:
                await reply.read()
                counts["ok" if reply.status == 200 else "errors"] += 1

    result = await users.measure(user, duration, concurrency)
    await session.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--engines", default="fast,aiohttp")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="measure the engines alone, without the agent's scheduler and recorder",
    )
    parser.add_argument(
        "--journey",
        nargs="?",
        const="rendered",
        default="",
        choices=sorted(JOURNEY_QUERIES),
        help="each request with a templated query (rendered per request, or once per "
        "user) and a status check (full measurement)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="nginx over TLS (self-signed), the clients on https"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--think", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(
            args.worker,
            args.url,
            args.duration,
            args.concurrency,
            args.bare,
            args.think,
            args.journey,
        )
        return
    with serve_target(args.tls) as (url, target):
        report(url, target, args)


def report(url: str, target: str, args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    pinned = "client on core 0, target on core 1" if pin(1) else "not pinned (no taskset or 1 core)"
    print(f"target: {target} at {url}; {pinned}")
    measurement = "engines alone (--bare)" if args.bare else "full measurement (agent Runner)"
    if args.journey:
        measurement += (
            f", a templated query ({args.journey}) and a status check per request (--journey)"
        )
    print(
        f"loadctl: {measurement}; "
        f"closed loop, {args.concurrency} concurrent, {args.duration:g} s, "
        f"median of {args.runs} interleaved rounds, {cores} cores, "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if os.access(WRK, os.X_OK):
        names.append("wrk")
    else:
        print(f"{WRK} not found: no wrk reference, no ratios")
    # Rounds interleave the clients, so that a change in the machine's load
    # during the bench touches all of them alike.
    all_runs: dict[str, list[Run]] = {name: [] for name in names}
    for round_ in range(args.runs):
        for name in names:
            if name == "wrk":
                run = run_wrk(url, args.duration, args.concurrency)
            else:
                run = run_engine(
                    name, url, args.duration, args.concurrency, args.bare, args.journey
                )
            all_runs[name].append(run)
            print(
                f"  round {round_ + 1} {name:<8} {run.rps:>8.0f} RPS "
                f"{run.us_per_request:>7.1f} µs/req",
                flush=True,
            )
    results = {name: median_run(runs) for name, runs in all_runs.items()}

    wrk = results.get("wrk")
    print()
    header = (
        f"{'client':<10}{'RPS':>10}{'CPU µs/req':>12}{'user':>7}{'sys':>7}"
        f"{'CPU use':>9}{'errors':>8}"
    )
    if wrk:
        header += f"{'CPU/req ÷ wrk':>15}{'RPS ÷ wrk':>11}"
    print(header)
    print("-" * len(header))
    for name, run in results.items():
        line = (
            f"{name:<10}{run.rps:>10.0f}{run.us_per_request:>12.1f}"
            f"{run.user / run.requests * 1e6:>7.1f}{run.sys / run.requests * 1e6:>7.1f}"
            f"{run.cpu / run.wall:>8.0%} {run.errors:>8d}"
        )
        if wrk:
            line += f"{run.us_per_request / wrk.us_per_request:>15.2f}{run.rps / wrk.rps:>11.2f}"
        print(line)
    print()
    if wrk and "fast" in results:
        ratio = results["fast"].us_per_request / wrk.us_per_request
        goal = TARGETS["fast_cpu_ratio_to_wrk"]
        print(f"fast engine: {ratio:.2f} × wrk's CPU per request (target ≤ {goal})")
    if "aiohttp" in results:
        us = results["aiohttp"].us_per_request
        goal = TARGETS["aiohttp_us_per_request"]
        print(f"aiohttp engine: {us:.1f} µs CPU per request (target ≤ {goal:g})")


if __name__ == "__main__":
    main()
