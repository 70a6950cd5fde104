"""Liveness on loopback: lost agents, a lost coordinator, Ctrl-C, an agent joining mid-run.

Real processes over TCP on 127.0.0.1: `loadctl coordinator` plus separate
`loadctl agent` processes and the demo target. Times are compared on one
machine, so the coordinator's clock (result.json), the target's `last_ts`
and this test's `time.time()` agree.

The helpers at the top are shared with test_multihost.py (namespaces) and
test_hostile.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import agent_argv, constant, coordinator_argv, free_port
from target_process import running_target

pytestmark = pytest.mark.slow

DEADMAN = 3.0  # seconds of coordinator silence after which agents must have stopped


# -- processes --------------------------------------------------------------------------------
@dataclass
class Proc:
    """A process whose output goes to files (no pipe can fill up and stall it)."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def code_within(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after `timeout` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: int) -> float:
        """Send a signal; return the time.time() just before it left."""
        at = time.time()
        self.popen.send_signal(sig)
        return at

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def describe(self) -> str:
        return f"--- {self.name} (exit {self.poll()}) stderr:\n{self.stderr()[-3000:]}"


Launcher = Callable[..., subprocess.Popen[bytes]]


class Procs:
    """Starts processes with output in `directory`; kills whatever is left on exit."""

    def __init__(self, directory: Path, launcher: Launcher | None = None) -> None:
        self.directory = directory
        self.launcher = launcher
        self.all: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], host: str | None = None) -> Proc:
        out = self.directory / f"{name}.out"
        err = self.directory / f"{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            if host is None or self.launcher is None:
                popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=o, stderr=e)
            else:
                popen = self.launcher(host, list(argv), stdout=o, stderr=e)
        proc = Proc(name, popen, out, err)
        self.all.append(proc)
        return proc

    def cluster(
        self, scenario: dict[str, Any], agents: int, prefix: str, started: int | None = None
    ) -> tuple[Proc, list[Proc], str, Path]:
        """A coordinator for `agents` agents over TCP and `started` (default: all) of them,
        ids `{prefix}-0`...: (coordinator, agents, endpoint, out directory)."""
        path = write_scenario(scenario, self.directory)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out = self.directory / "out"
        coordinator = self.start(
            "coordinator", coordinator_argv(path, agents, endpoint, out, "--wait", "30")
        )
        running = [
            self.start(f"agent-{i}", agent_argv(endpoint, "--id", f"{prefix}-{i}"))
            for i in range(agents if started is None else started)
        ]
        return coordinator, running, endpoint, out

    def kill_all(self) -> None:
        for p in self.all:
            p.kill()

    def report(self) -> str:
        return "\n".join(p.describe() for p in self.all)


@contextlib.contextmanager
def procs(launcher: Launcher | None = None) -> Iterator[Procs]:
    with tempfile.TemporaryDirectory(prefix="loadctl-live-") as tmp:
        group = Procs(Path(tmp), launcher)
        try:
            yield group
        finally:
            group.kill_all()


# -- scenario, target, result -----------------------------------------------------------------


def write_scenario(scenario: dict[str, Any], directory: Path) -> Path:
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return path


def counts(base_url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(base_url + "/_loadctl/counts", timeout=timeout) as reply:
        data: dict[str, Any] = json.loads(reply.read())
        return data


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def wait_for_total(base_url: str, at_least: int, timeout: float) -> int:
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen = counts(base_url)["total"]
        return seen >= at_least

    wait_for(reached, timeout, f"the target to count {at_least} requests", every=0.02)
    return seen


def load_result(out: Path, report: str = "") -> dict[str, Any]:
    path = out / "result.json"
    assert path.exists(), f"no result.json in {out}\n{report}"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@dataclass
class Row:
    index: int
    start: float  # coordinator clock (time.time() on this machine)
    end: float
    arrivals: int
    requests: int
    target: int | None  # arrivals due in this interval by the schedule
    agents: list[str]


def rows(result: dict[str, Any]) -> list[Row]:
    out = []
    for row in result["timeline"]:
        arrivals = sum(s["arrivals"] for s in row["series"])
        requests = sum(s["requests"] for s in row["series"])
        out.append(
            Row(
                row["interval"],
                row["start"],
                row["end"],
                arrivals,
                requests,
                row.get("target_arrivals"),
                list(row.get("agents", [])),
            )
        )
    return out


def events(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in result["events"] if e["kind"] == kind]


def full(row: Row, tolerance: float = 0.03) -> bool:
    """The interval carried its scheduled arrivals (within a few percent)."""
    return row.target is not None and row.arrivals >= row.target * (1 - tolerance)


def share_moved_at(result: dict[str, Any]) -> float | None:
    """Coordinator time at which the first rebalance's new shares took effect: the
    coordinator moves a lost agent's share at a run time ("new shares from 5.43 s"), not
    only at interval boundaries."""
    for event in result["events"]:
        found = re.search(r"new shares from ([0-9.]+) s", event.get("detail", ""))
        if event["kind"] == "rebalanced" and found:
            return float(result["started_at"]) + float(found.group(1))
    return None


def takeover_after(result: dict[str, Any], at: float) -> tuple[float | None, list[Row]]:
    """Seconds from `at` until the others carried the full rate: the moment the shares
    moved, provided every interval from that moment on carried its schedule (None if the
    rate never came back). Without a rebalance: the first full interval after the gap."""
    timeline = rows(result)
    moved = share_moved_at(result)
    if moved is not None and moved >= at:
        after = [r for r in timeline if r.start >= moved and r.target]
        return (moved - at if after and all(full(r) for r in after) else None), timeline
    short = [r for r in timeline if r.end > at and r.target and not full(r)]
    if not short:
        return 0.0, timeline
    first_short = short[0].index
    for r in timeline:
        if r.index > first_short and full(r) and r.start >= at:
            return r.start - at, timeline
    return None, timeline


def describe_rows(timeline: list[Row], at: float) -> str:
    return " ".join(
        f"[{r.index}@{r.start - at:+.1f}s {r.arrivals}/{r.target} a{len(r.agents)}]"
        for r in timeline
    )


def summary(test: str, **figures: Any) -> None:
    """One line per test with what it measured (visible with -s or in -rA reports)."""
    text = ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\nMEASURED {test}: {text}", flush=True)


# -- the tests --------------------------------------------------------------------------------
RATE = 200
DURATION = 10


def test_kill_9_agent_others_take_over_and_the_result_is_degraded() -> None:
    """kill -9 one of three agents mid-run: it is named lost, the others carry the full
    rate again within 3 s of the kill, the run still ends (exit 0) and says degraded."""
    with running_target() as target, procs() as group:
        coordinator, agents, _, out = group.cluster(constant(target.url, RATE, DURATION), 3, "live")
        try:
            wait_for_total(target.url, int(RATE * 3.5), 40)  # mid-interval, 3.5 s in
            killed_at = agents[1].signal(signal.SIGKILL)
            code = coordinator.wait(60)
            agent_codes = [agents[0].wait(20), agents[2].wait(20)]
        except BaseException:
            print(group.report())
            raise
        seen = counts(target.url)["total"]
        result = load_result(out, group.report())
        takeover, timeline = takeover_after(result, killed_at)
        lost = events(result, "lost")
        rebalanced = events(result, "rebalanced")
        detected = lost[0]["at"] - killed_at if lost else None
        rebalance = rebalanced[0]["at"] - killed_at if rebalanced else None
        totals = result["totals"]
        summary(
            "loopback kill -9 agent",
            detection_s=detected,
            rebalance_event_s=rebalance,
            takeover_s=takeover,
            arrivals_never_sent=RATE * DURATION - totals["arrivals"],
            requests_unreported=seen - totals["requests"],
            target_count=seen,
        )
        context = f"{describe_rows(timeline, killed_at)}\n{group.report()}"
        assert code == 0, context
        assert agent_codes == [0, 0], context
        assert [e["agent"] for e in lost] == ["live-1"], result["events"]
        assert result["degraded"] is True
        assert detected is not None and detected <= DEADMAN, context
        assert takeover is not None, f"the rate never came back: {context}"
        assert takeover <= 3.0, f"the others took {takeover:.2f} s to take over: {context}"
        # What the killed agent sent in its last, unreported interval is the only gap.
        assert 0 <= seen - totals["requests"] <= RATE / 3 * 1.5, context


def test_kill_9_coordinator_agents_stop_within_the_deadman_time() -> None:
    """kill -9 the coordinator mid-run: no request reaches the target later than 3 s after
    the kill (the dead-man switch), and the agents say so on stderr."""
    with running_target() as target, procs() as group:
        coordinator, agents, _, _ = group.cluster(constant(target.url, RATE, 30), 2, "orphan")
        try:
            wait_for_total(target.url, int(RATE * 2.5), 40)
            killed_at = coordinator.signal(signal.SIGKILL)
            time.sleep(DEADMAN + 1.5)
            first = counts(target.url)
            time.sleep(1.0)
            later = counts(target.url)
            alive = [a.poll() is None for a in agents]
        except BaseException:
            print(group.report())
            raise
        group.kill_all()
        stopped_after = first["last_ts"] - killed_at
        summary(
            "loopback kill -9 coordinator",
            last_request_after_kill_s=stopped_after,
            requests_after_kill=first["total"] - int(RATE * 2.5),
        )
        context = group.report()
        assert later["total"] == first["total"], f"load went on: {first} -> {later}\n{context}"
        assert stopped_after <= DEADMAN, (
            f"the last request reached the target {stopped_after:.2f} s after the coordinator "
            f"died\n{context}"
        )
        for agent in agents:
            assert "no word from the coordinator" in agent.stderr(), context
        assert alive == [True, True], "agents wait for their coordinator to return"


def test_ctrl_c_on_the_coordinator_stops_agents_and_saves_a_partial_result() -> None:
    """SIGINT to `loadctl coordinator` with two `loadctl agent` processes over TCP: the
    agents stop, the result is written marked interrupted with exact counts, exit 130."""
    with running_target() as target, procs() as group:
        coordinator, agents, _, out = group.cluster(constant(target.url, 100, 30), 2, "int")
        try:
            wait_for_total(target.url, 200, 40)
            interrupted_at = coordinator.signal(signal.SIGINT)
            code = coordinator.wait(30)
            stopped = time.time()
            agent_codes = [a.wait(15) for a in agents]
        except BaseException:
            print(group.report())
            raise
        seen = counts(target.url)
        time.sleep(1.0)
        after = counts(target.url)["total"]
        context = group.report()
        summary(
            "loopback ctrl-c",
            coordinator_exit_s=stopped - interrupted_at,
            last_request_after_sigint_s=seen["last_ts"] - interrupted_at,
            target_count=seen["total"],
        )
        assert code == 130, context
        result = load_result(out, group.report())
        assert result["status"] == "interrupted", context
        assert events(result, "interrupted"), result["events"]
        assert result["totals"]["requests"] == seen["total"], context
        assert after == seen["total"], "load went on after the interrupt"
        assert agent_codes == [0, 0], context
        assert seen["last_ts"] - interrupted_at <= 3.0, context


def test_agent_joining_mid_run_gets_a_share_and_counts_stay_exact() -> None:
    """--agents 1 with one agent; a second agent starts during the run. It gets a share
    from a coming interval boundary, sends load from then on, and the totals stay exact:
    rate × duration == result arrivals == result requests == the target's count."""
    rate, duration = RATE, 14  # the joiner needs a few seconds to start on a busy machine
    with running_target() as target, procs() as group:
        coordinator, (first,), endpoint, out = group.cluster(
            constant(target.url, rate, duration), 1, "join"
        )
        try:
            wait_for_total(target.url, rate, 40)  # one second into the run
            launched_at = time.time()
            second = group.start("agent-second", agent_argv(endpoint, "--id", "join-b"))
            code = coordinator.wait(60)
            agent_codes = [first.code_within(10), second.code_within(10)]
        except BaseException:
            print(group.report())
            raise
        seen = counts(target.url)["total"]
        result = load_result(out, group.report())
        context = f"{describe_rows(rows(result), launched_at)}\n{group.report()}"
        joined = events(result, "joined")
        by_id = {a["id"]: a for a in result["agents"]}
        share_from = [r for r in rows(result) if "join-b" in r.agents]
        summary(
            "loopback join mid-run",
            join_event_after_launch_s=joined[0]["at"] - launched_at if joined else None,
            first_interval_with_joiner_s=(
                share_from[0].start - launched_at if share_from else None
            ),
            joiner_requests=by_id.get("join-b", {}).get("requests"),
            target_count=seen,
            expected=rate * duration,
        )
        assert code == 0, context
        assert agent_codes == [0, 0], context
        assert [e["agent"] for e in joined] == ["join-b"], f"{result['events']}\n{context}"
        assert by_id["join-b"]["planned"] and by_id["join-b"]["requests"] > 0, by_id
        assert result["totals"]["arrivals"] == rate * duration, context
        assert result["totals"]["requests"] == seen == rate * duration, context
        # From the boundary the joiner got on, both agents carry the load.
        assert share_from and all(full(r) for r in rows(result) if r.target), context


def test_frozen_agent_is_lost_then_returns_and_nothing_is_lost() -> None:
    """SIGSTOP one of three agents for 5 s (on loopback the closest thing to a cut link:
    it neither sends load nor talks). It is declared lost (result degraded), the others
    keep the rate; after SIGCONT its dead-man switch stops its stale plan, it hands over
    its unacked snapshots and rejoins, and the counts are exact: every result the agents
    measured reached the report (target count == result requests) and the schedule was
    kept (result arrivals == rate × duration − the arrivals due on the frozen agent
    between the freeze and the rebalance boundary, which nobody could send)."""
    rate, duration = RATE, 14
    with running_target() as target, procs() as group:
        coordinator, agents, _, out = group.cluster(
            constant(target.url, rate, duration), 3, "frozen"
        )
        try:
            wait_for_total(target.url, int(rate * 2.5), 40)
            frozen_at = agents[1].signal(signal.SIGSTOP)
            time.sleep(5.0)
            thawed_at = agents[1].signal(signal.SIGCONT)
            code = coordinator.wait(60)
            agent_codes = [a.code_within(8) for a in agents]
        except BaseException:
            print(group.report())
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                agents[1].popen.send_signal(signal.SIGCONT)
        seen = counts(target.url)["total"]
        result = load_result(out, group.report())
        timeline = rows(result)
        context = f"{describe_rows(timeline, frozen_at)}\n{group.report()}"
        lost = events(result, "lost")
        joined = events(result, "joined")
        takeover, _ = takeover_after(result, frozen_at)
        summary(
            "loopback freeze agent 5 s",
            detection_s=lost[0]["at"] - frozen_at if lost else None,
            takeover_s=takeover,
            rejoined_after_thaw_s=joined[0]["at"] - thawed_at if joined else None,
            requests_lost=seen - result["totals"]["requests"],
            arrivals_short=rate * duration - result["totals"]["arrivals"],
            target_minus_schedule=seen - rate * duration,
            events=[(e["kind"], e["agent"]) for e in result["events"]],
        )
        assert code == 0, context
        assert result["degraded"] is True
        assert [e["agent"] for e in lost][:1] == ["frozen-1"], result["events"]
        doubled = [r for r in timeline if r.target is not None and r.arrivals > r.target + 2]
        assert not doubled, (
            f"arrivals sent twice (the frozen agent kept its old share after the others took "
            f"it over): {describe_rows(doubled, frozen_at)}\n{context}"
        )
        assert result["totals"]["arrivals"] <= rate * duration, context
        assert seen <= rate * duration, f"the target got more than scheduled: {context}"
        assert result["totals"]["requests"] == seen, f"results were lost: {context}"
        assert [e["agent"] for e in joined] == ["frozen-1"], result["events"]
        assert agent_codes == [0, 0, 0], context
        after = [r for r in timeline if r.start >= thawed_at + 4.0 and r.target]
        assert after and all(full(r) for r in after), f"the rate was not kept: {context}"
        per_agent = sum(a["requests"] for a in result["agents"])
        assert per_agent == result["totals"]["requests"], result["agents"]
