# Coordinator scale: how much CPU, lag and memory the REAL coordinator needs to
# take snapshots from 50, 200 and 1,000 agents. The agents are simulated: many
# DEALER sockets in a few spawned processes (nice 5: the coordinator is the
# system under test), each doing what a real agent does on the wire (Hello until
# Welcome, five Ping/Pong rounds, Ready, a heartbeat after each half second of
# sending nothing), taking its Plan, sending Started, then at every interval's
# end a snapshot of 10 request
# names (three histograms each, recorded from log-normal latencies of 200 to
# 3,000 requests per name per second: ~700 non-empty slots, ~50 KiB frames),
# resending what is not acked after 2 s, and Done at the end. Snapshot frames
# are precomputed and only their seq / interval / times are patched (checked
# byte for byte against the real codec); bench/scale_sim_agents.py holds these
# simulated agents, this file the coordinator's process and the driver. The
# coordinator runs in its own process, unmodified except for a subclass that
# records timings; its scenario's target (port 9) is never contacted, because no
# real agent runs.
#
# Prints a reference measured in this run (Python speed, and the snapshot path
# alone in-process), then per size: the coordinator's CPU % (psutil; median of
# 1-s samples over the steady part, the mean split into event loop and ZeroMQ
# I/O thread), its CPU µs per snapshot, the merge CPU per snapshot, the merge
# lag (agent's send = arrival on loopback, to merged; includes the socket
# queue, decoding, validation, merge), the end-to-end lag (interval end to
# merged), RSS, agents lost, resends, whether counts are exact, GC pauses.
# See bench/README.md.
#
#   python bench/coordinator_scale.py                     # 50, 200, 1000 agents, 25 s each
#   python bench/coordinator_scale.py --agents 1000 --seconds 20 --py-spy /tmp/coord.txt
from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import math
import multiprocessing as mp
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

# Measure the tree this file is in, whatever `pip install -e` points at (the spawned
# processes run this module first, so they import the same code).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from scale_sim_agents import (  # noqa: E402  (after the path: they import loadctl)
    INTERVAL,
    NAMES,
    PHASE,
    SnapshotFrames,
    agents_main,
    raise_nofile,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scenario_dict(agents: int, seconds: int) -> dict[str, Any]:
    return {
        "name": "coordinator-scale",
        "target": "http://127.0.0.1:9",  # never contacted: the agents are simulated
        "defaults": {"timeout": "1s"},
        "requests": [{"name": n, "path": f"/{n}"} for n in NAMES],
        "phases": [
            {"name": PHASE, "executor": "constant-rate", "rate": agents, "duration": seconds}
        ],
    }


# -- the coordinator process ------------------------------------------------------------


def coordinator_main(
    endpoint: str, agents: int, seconds: int, out: Any, profile: str | None, lost_after: float
) -> None:
    """Run the real Coordinator with timing hooks; put its figures on `out`."""
    import uvloop

    from loadctl.coordinator.run import Coordinator, CoordinatorOptions
    from loadctl.coordinator.timeline import Timeline
    from loadctl.protocol.messages import Snapshot
    from loadctl.protocol.scenario import Scenario

    raise_nofile()

    class TimedTimeline(Timeline):
        """Timeline that records the CPU time of each merge, per snapshot."""

        def __init__(self) -> None:
            super().__init__()
            self.add_seconds: list[float] = []
            self.batches: list[int] = []

        def add(self, snapshot: Snapshot) -> bool:
            t0 = time.thread_time()
            try:
                return super().add(snapshot)
            finally:
                self.add_seconds.append(time.thread_time() - t0)

        def add_many(self, snapshots: Sequence[Snapshot]) -> list[bool | ValueError]:
            t0 = time.thread_time()
            try:
                return super().add_many(snapshots)
            finally:
                if snapshots:
                    share = (time.thread_time() - t0) / len(snapshots)
                    self.add_seconds += [share] * len(snapshots)
                    self.batches.append(len(snapshots))

    class BenchCoordinator(Coordinator):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.timeline = TimedTimeline()
            self.merged: list[tuple[str, int, float, float]] = []  # agent, seq, end, at
            self.handler_seconds: list[float] = []

        def _record(self, snapshots: list[Snapshot], cpu: float) -> None:
            now = time.time()
            for snapshot in snapshots:
                self.handler_seconds.append(cpu / len(snapshots))
                self.merged.append((snapshot.agent_id, snapshot.seq, snapshot.end, now))

        async def _on_snapshots(self, batch: list[tuple[Any, bytes, Snapshot]], *args: Any) -> None:
            t0 = time.thread_time()
            await super()._on_snapshots(batch, *args)  # type: ignore[misc]
            self._record([s for _, _, s in batch], time.thread_time() - t0)

    gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    scenario = Scenario.from_dict(scenario_dict(agents, seconds))
    options = CoordinatorOptions(bind=endpoint, agents=agents, wait_timeout=180.0)
    if lost_after > 0:
        options.lost_after = lost_after
    coordinator = BenchCoordinator(scenario, options)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # CPU of the event loop's thread
        profiler.enable()
    uvloop.run(coordinator.run())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    totals = coordinator.timeline.run_totals()
    server = coordinator.server
    out.put(
        {
            "start_at": coordinator.start_at,
            "ended_at": coordinator.ended_at,
            "status": coordinator.status,
            "events": [(e.kind, e.agent, e.detail) for e in coordinator.events],
            "merged": coordinator.merged,
            "add_seconds": coordinator.timeline.add_seconds,
            "handler_seconds": coordinator.handler_seconds,
            "duplicates": coordinator.timeline.duplicates,
            "batches": coordinator.timeline.batches,
            "gc": gc_pauses,
            "requests": totals.completed,
            "rejected": dict(server.rejected) if server is not None else {},
        }
    )


# -- the parent: launch, watch, report --------------------------------------------------


@dataclass
class Figures:
    agents: int
    snaps_per_s: float
    cpu_median: float
    cpu_mean: float
    cpu_main: float  # of which the event loop's thread (the rest: ZeroMQ's I/O thread)
    cpu_max: float
    us_per_snapshot: float
    add_us: tuple[float, float]
    handler_us: float
    merge_lag_ms: tuple[float, float, float]
    e2e_lag_ms: tuple[float, float, float]
    rss_mb: float
    rss_peak_mb: float
    sim_cpu: float
    lost: int
    resends: int
    requests_ok: bool
    notes: list[str]


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values), p))


def run_size(
    agents: int,
    seconds: int,
    procs: int,
    profile: str | None,
    ctx: Any,
    lost_after: float = 0.0,
    py_spy: str | None = None,
    transport: str = "tcp",
) -> Figures | None:
    if transport == "ipc":  # a Unix socket: cheaper for both ends than TCP on loopback
        endpoint = f"ipc://{tempfile.mkdtemp(prefix='loadctl-scale-')}/coordinator.sock"
    else:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
    coord_q = ctx.Queue()
    agent_q = ctx.Queue()
    coord = ctx.Process(
        target=coordinator_main,
        args=(endpoint, agents, seconds, coord_q, profile, lost_after),
        daemon=True,
    )
    coord.start()
    pc = psutil.Process(coord.pid)
    spy = None
    if py_spy:  # sampled, so the coordinator runs at full speed (cProfile slows it down)
        spy = subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(coord.pid), "--rate", "250", "--format"),
                *("raw", "--output", py_spy, "--duration", str(seconds + 30), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ids = [f"sim-{i:04d}" for i in range(agents)]
    groups = [ids[k::procs] for k in range(procs)]
    sims = [
        ctx.Process(target=agents_main, args=(endpoint, g, 1000 + k, agent_q), daemon=True)
        for k, g in enumerate(groups)
        if g
    ]
    for p in sims:
        p.start()
    psims = [psutil.Process(p.pid) for p in sims]
    # (time, coordinator CPU seconds, RSS, CPU seconds of its main thread: the event loop)
    samples: list[tuple[float, float, int, float]] = []
    sim_samples: list[tuple[float, float]] = []
    coord_result: dict[str, Any] | None = None
    sim_results: list[dict[str, Any]] = []
    deadline = time.time() + seconds + 240
    while time.time() < deadline:
        try:
            t = pc.cpu_times()
            main = sum(x.user_time + x.system_time for x in pc.threads() if x.id == pc.pid)
            samples.append((time.time(), t.user + t.system, pc.memory_info().rss, main))
            sim_cpu = 0.0
            for ps in psims:
                with_t = ps.cpu_times()
                sim_cpu += with_t.user + with_t.system
            sim_samples.append((time.time(), sim_cpu))
        except psutil.NoSuchProcess:
            pass
        if coord_result is None:
            with contextlib.suppress(queue.Empty):
                coord_result = coord_q.get(timeout=0.5)
        else:
            time.sleep(0.5)
        while True:
            try:
                sim_results.append(agent_q.get_nowait())
            except queue.Empty:
                break
        if coord_result is not None and len(sim_results) == len(sims):
            break
    for p in [coord, *sims]:
        p.join(5)
        if p.is_alive():
            p.kill()
    if spy is not None:
        spy.wait(30)  # it stops when the coordinator exits
    if coord_result is None:
        print(f"  {agents} agents: the coordinator gave no result", file=sys.stderr)
        return None
    # The steady window: from one interval after the start to the last interval's end.
    w0 = coord_result["start_at"] + INTERVAL
    w1 = coord_result["start_at"] + seconds
    window = [s for s in samples if w0 <= s[0] <= w1]
    per_s = []
    for a, b in itertools.pairwise(window):
        if b[0] - a[0] > 0.2:
            per_s.append(100 * (b[1] - a[1]) / (b[0] - a[0]))
    span = window[-1][0] - window[0][0]
    cpu_mean = 100 * (window[-1][1] - window[0][1]) / span
    cpu_main = 100 * (window[-1][3] - window[0][3]) / span
    sim_window = [s for s in sim_samples if w0 <= s[0] <= w1]
    sim_cpu = 100 * (sim_window[-1][1] - sim_window[0][1]) / (sim_window[-1][0] - sim_window[0][0])
    merged = coord_result["merged"]
    in_window = [m for m in merged if w0 <= m[3] <= w1]
    snaps_per_s = len(in_window) / (w1 - w0)
    us_per_snapshot = 1e6 * (window[-1][1] - window[0][1]) / max(1, len(in_window))
    sent_at = {(a, s): t for r in sim_results for a, s, t in r["sent"]}
    merge_lag = [1e3 * (at - sent_at[(a, s)]) for a, s, _, at in merged if (a, s) in sent_at]
    e2e_lag = [1e3 * (at - end) for _, _, end, at in merged]
    adds = [1e6 * x for x in coord_result["add_seconds"]]
    handlers = [1e6 * x for x in coord_result["handler_seconds"]]
    lost = sum(1 for kind, _, _ in coord_result["events"] if kind == "lost")
    requests_sent = sum(r["requests"] for r in sim_results)
    notes = []
    if coord_result["status"] != "completed":
        notes.append(f"status {coord_result['status']}")
    if coord_result["rejected"]:
        notes.append(f"rejected {coord_result['rejected']}")
    unfinished = sum(r["unfinished"] for r in sim_results)
    if unfinished:
        notes.append(f"{unfinished} simulated agents never got Bye")
    pauses = coord_result.get("gc") or []
    full = [t for g, t in pauses if g == 2]
    notes.append(
        f"garbage collector: {len(pauses)} collections, {sum(t for _, t in pauses):.2f} s in all; "
        f"{len(full)} full ones, longest {max(full, default=0.0) * 1e3:.0f} ms"
    )
    batches = coord_result.get("batches") or []
    if batches:
        notes.append(
            f"snapshots merged in batches of {statistics.median(batches):.0f} "
            f"(median; max {max(batches)})"
        )
    if coord_result["requests"] != requests_sent:
        notes.append(f"merged {coord_result['requests']:,} requests, sent {requests_sent:,}")
    slots = [x for r in sim_results for x in r["slots"]] or [0]
    sizes = [x for r in sim_results for x in r["frame_bytes"]] or [0]
    late = max((r["late"] for r in sim_results), default=0.0)
    if late > 0.5:
        notes.append(f"a simulated agent sent a heartbeat {late:.1f} s late (its process stalled)")
    if len(sim_results) < len(sims):
        notes.append(f"{len(sims) - len(sim_results)} simulating processes gave no result")
    notes.append(
        f"{len(merged):,} snapshots merged; latency histograms have a median "
        f"{statistics.median(slots):.0f} non-empty slots; snapshot frame "
        f"~{statistics.median(sizes) / 1024:.0f} KiB"
    )
    end_rss = [s for s in samples if s[0] <= w1]
    return Figures(
        agents=agents,
        snaps_per_s=snaps_per_s,
        cpu_median=statistics.median(per_s) if per_s else math.nan,
        cpu_mean=cpu_mean,
        cpu_main=cpu_main,
        cpu_max=max(per_s) if per_s else math.nan,
        us_per_snapshot=us_per_snapshot,
        add_us=(pct(adds, 50), pct(adds, 99)),
        handler_us=pct(handlers, 50),
        merge_lag_ms=(pct(merge_lag, 50), pct(merge_lag, 99), max(merge_lag, default=math.nan)),
        e2e_lag_ms=(pct(e2e_lag, 50), pct(e2e_lag, 99), max(e2e_lag, default=math.nan)),
        rss_mb=(end_rss[-1][2] if end_rss else samples[-1][2]) / 2**20,
        rss_peak_mb=max(s[2] for s in samples) / 2**20,
        sim_cpu=sim_cpu,
        lost=lost,
        resends=sum(r["resends"] for r in sim_results),
        requests_ok=coord_result["requests"] == requests_sent,
        notes=notes,
    )


def reference() -> tuple[float, float]:
    """This machine's speed now, measured in the parent: a pure-Python loop, and the
    coordinator's snapshot path alone (codec.decode, then Timeline.add_many in
    chunks of MERGE_CHUNK, as the intake merges a burst), in CPU µs per snapshot (medians)."""
    import timeit

    from loadctl.coordinator.intake import MERGE_CHUNK
    from loadctl.coordinator.timeline import Timeline
    from loadctl.protocol.codec import decode

    python_us = min(timeit.repeat("sum(range(1000))", number=2000, repeat=7)) / 2000 * 1e6
    frames = SnapshotFrames(np.random.default_rng(7))
    run = frames.packer.pack("run")
    ids = [frames.packer.pack(f"ref-{i:03d}") for i in range(200)]
    timeline = Timeline()
    per: list[float] = []
    for interval in range(6):
        burst = [
            frames.frame(run, ids[a], interval + 1, interval, 1.7e9 + interval, a + interval)[0]
            for a in range(len(ids))
        ]
        for k in range(0, len(burst), MERGE_CHUNK):
            part = burst[k : k + MERGE_CHUNK]
            t0 = time.thread_time()
            timeline.add_many([decode(f) for f in part])  # type: ignore[misc]
            per.append((time.thread_time() - t0) / len(part))
    return python_us, statistics.median(per[len(per) // 3 :]) * 1e6  # warm: after 2 intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", default="50,200,1000", help="comma-separated sizes")
    parser.add_argument("--seconds", type=int, default=25, help="run length per size")
    parser.add_argument(
        "--procs", type=int, default=0, help="simulated-agent processes (default: 1 per 250)"
    )
    parser.add_argument("--profile", default=None, help="cProfile the coordinator to this file")
    parser.add_argument(
        "--py-spy", default=None, help="sample the coordinator with py-spy into this file (raw)"
    )
    parser.add_argument(
        "--transport",
        choices=("tcp", "ipc"),
        default="tcp",
        help="tcp on loopback (as across machines), or ipc (cheaper: more CPU left to measure)",
    )
    parser.add_argument(
        "--lost-after",
        type=float,
        default=0.0,
        help="the coordinator's lost_after in s (default: its own, 2 s); a larger one keeps "
        "a machine too busy to run the simulation from losing agents",
    )
    args = parser.parse_args()
    raise_nofile()
    ctx = mp.get_context("spawn")  # never fork a process that holds a zmq context
    sizes = [int(x) for x in args.agents.split(",")]
    print(
        f"coordinator scale: {args.seconds} s per size, {len(NAMES)} request names x 3 "
        f"histograms per snapshot, {INTERVAL:g} s intervals; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    python_us, pipeline_us = reference()
    from loadctl.protocol.histogram_table import KERNEL

    print(
        f"reference, in this process: sum(range(1000)) {python_us:.1f} µs (this machine's "
        f"Python speed now); decode + merge of one snapshot, no sockets: {pipeline_us:.0f} µs; "
        f"histogram tables checked and merged by {'the compiled kernel' if KERNEL else 'numpy'}"
        + (" (LOADCTL_NO_KERNEL is set)" if os.environ.get("LOADCTL_NO_KERNEL") else "")
    )
    rows = []
    for n in sizes:
        procs = args.procs or max(1, math.ceil(n / 250))
        profile = f"{args.profile}.{n}" if args.profile and len(sizes) > 1 else args.profile
        t0 = time.time()
        spy = f"{args.py_spy}.{n}" if args.py_spy and len(sizes) > 1 else args.py_spy
        fig = run_size(n, args.seconds, procs, profile, ctx, args.lost_after, spy, args.transport)
        if fig is None:
            continue
        rows.append(fig)
        print(
            f"\n{n} agents ({procs} simulating processes, {time.time() - t0:.0f} s, "
            f"load average {os.getloadavg()[0]:.1f}):"
        )
        print(
            f"  coordinator CPU {fig.cpu_median:.1f} % median of 1-s samples "
            f"(mean {fig.cpu_mean:.1f} %, of which the event loop {fig.cpu_main:.1f} % and "
            f"ZeroMQ's I/O thread {fig.cpu_mean - fig.cpu_main:.1f} %; max {fig.cpu_max:.1f} %), "
            f"{fig.us_per_snapshot:.0f} µs CPU per snapshot at {fig.snaps_per_s:.0f} snapshots/s"
        )
        print(
            f"  merge CPU per snapshot (Timeline.add/add_many, decode-validate-merge) "
            f"{fig.add_us[0]:.0f} µs median, {fig.add_us[1]:.0f} µs p99; whole snapshot "
            f"handler (acks included) {fig.handler_us:.0f} µs median"
        )
        print(
            "  merge lag (arrival to merged) ms: median {:.1f}, p99 {:.1f}, max {:.1f}".format(
                *fig.merge_lag_ms
            )
        )
        print(
            "  end-to-end lag (interval end to merged) ms: median {:.1f}, p99 {:.1f}, "
            "max {:.1f}".format(*fig.e2e_lag_ms)
        )
        print(f"  coordinator RSS {fig.rss_mb:.0f} MiB (peak {fig.rss_peak_mb:.0f} MiB)")
        print(
            f"  agents lost {fig.lost}, snapshots resent {fig.resends}, counts "
            f"{'exact' if fig.requests_ok else 'WRONG'}; simulated agents used "
            f"{fig.sim_cpu:.0f} % CPU"
        )
        for note in fig.notes:
            print(f"  {note}")
        if profile:
            import pstats

            print(f"  profile: {profile} (top 15 by cumulative time)")
            pstats.Stats(profile).sort_stats("cumulative").print_stats(15)
    if rows:
        base = rows[0]
        print(f"\nsummary (ratios against {base.agents} agents in this run)")
        print(
            f"  {'agents':>6} {'cpu% med':>8} {'µs/snap':>8} {'add µs':>7} "
            f"{'lag p50 ms':>10} {'lag p99 ms':>10} {'e2e p99 ms':>10} {'RSS MiB':>8} "
            f"{'cpu ratio':>9} {'µs/snap ratio':>13}"
        )
        for f in rows:
            print(
                f"  {f.agents:>6} {f.cpu_median:>8.1f} {f.us_per_snapshot:>8.0f} "
                f"{f.add_us[0]:>7.0f} {f.merge_lag_ms[0]:>10.1f} {f.merge_lag_ms[1]:>10.1f} "
                f"{f.e2e_lag_ms[1]:>10.1f} {f.rss_mb:>8.0f} "
                f"{f.cpu_median / base.cpu_median:>8.1f}x "
                f"{f.us_per_snapshot / base.us_per_snapshot:>12.2f}x"
            )
        print("  target: 1,000 agents under 50 % of a core, merge lag under one interval")


if __name__ == "__main__":
    main()
