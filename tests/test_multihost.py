"""Multi-host runs in network namespaces: faults on real links, and keys that keep strangers out.

Every process has its own namespace and address (see tests/netns.py): the
coordinator, two or three agents and the demo target. Two networks: `ctl`
carries the cluster link (coordinator <-> agents, ZeroMQ) and `data` the
HTTP load (agents -> target). Cutting an agent's `ctl` link partitions it
from its coordinator while it can still reach the target: the case the
dead-man switch and the acked snapshots exist for, and one where exact
counts are well defined (every request the agents measured reached the
target, so the target's count must equal the report's).

Times are compared on one machine (coordinator clock in result.json, the
target's `last_ts`, this test's `time.time()`). Each test prints one
`MEASURED` line (run pytest with -s to see it).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_liveness import (
    DEADMAN,
    Procs,
    agent_argv,
    constant,
    coordinator_argv,
    counts,
    describe_rows,
    events,
    full,
    load_result,
    procs,
    rows,
    summary,
    takeover_after,
    wait_for,
    wait_for_total,
    write_scenario,
)

from cluster import LOADCTL
from netns import Lab, lab, unavailable

_why_not = unavailable()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(_why_not is not None, reason=_why_not or ""),
]

RATE = 200
PORT = 5555
HOSTS = ("coord", "a1", "a2", "a3", "target")


class Cluster:
    """Processes of one run placed in a lab's namespaces."""

    def __init__(self, net: Lab, group: Procs) -> None:
        self.net = net
        self.group = group
        self.endpoint = f"tcp://{net.addr('coord', 'ctl')}:{PORT}"
        self.target_url = f"http://{net.addr('target', 'data')}:8080"
        self.out = group.directory / "out"

    def start_target(self) -> None:
        self.group.start(
            "target",
            [*LOADCTL, "target", "--host", self.net.addr("target", "data"), "--port", "8080"],
            host="target",
        )

        def up() -> bool:
            try:
                counts(self.target_url, timeout=1.0)
            except OSError:
                return False
            return True

        wait_for(up, 20, f"the target at {self.target_url}", every=0.1)

    def coordinator(self, rate: float, duration: float, agents: int, *extra: str) -> Any:
        path = write_scenario(constant(self.target_url, rate, duration), self.group.directory)
        return self.group.start(
            "coordinator",
            coordinator_argv(path, agents, self.endpoint, self.out, "--wait", "40", *extra),
            host="coord",
        )

    def agent(self, host: str, *extra: str) -> Any:
        return self.group.start(host, agent_argv(self.endpoint, "--id", host, *extra), host=host)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with lab(HOSTS, networks=("ctl", "data")) as net, procs(net.popen) as group:
        c = Cluster(net, group)
        c.start_target()
        yield c


def _boundary(result: dict[str, Any], event: dict[str, Any]) -> float | None:
    """Coordinator time at which a rebalance's new shares took effect ("from 5.43 s": run
    seconds; shares move at a run time, not only at interval boundaries)."""
    found = re.search(r"from ([0-9.]+) s", event.get("detail", ""))
    if not found:
        return None
    started: float = result["started_at"]
    return started + float(found.group(1))


def test_cut_agent_link_for_5_s_loses_nothing_and_the_others_keep_the_rate(
    cluster: Cluster,
) -> None:
    """200 RPS for 20 s on three agents; a2's cluster link is cut for 5 s. It is detected
    lost within 3 s, the others carry the full rate from the rebalance boundary until it
    returns, no arrival is sent twice, a2 hands over what it measured and rejoins, and the
    target's count equals the report's."""
    duration = 16
    coordinator = cluster.coordinator(RATE, duration, 3, "--insecure")
    agents = [cluster.agent(h, "--insecure") for h in ("a1", "a2", "a3")]
    group = cluster.group
    try:
        wait_for_total(cluster.target_url, RATE * 3, 60)
        cut_at = time.time()
        cluster.net.cut("a2", "ctl")
        time.sleep(5.0)
        cluster.net.restore("a2", "ctl")
        restored_at = time.time()
        code = coordinator.code_within(90)
        agent_codes = [a.code_within(8) for a in agents]
    except BaseException:
        print(group.report())
        raise
    seen = counts(cluster.target_url)
    result = load_result(cluster.out, cluster.group.report())
    timeline = rows(result)
    lost = events(result, "lost")
    rebalanced = events(result, "rebalanced")
    joined = events(result, "joined")
    boundary = _boundary(result, rebalanced[0]) if rebalanced else None
    during = [
        r for r in timeline if boundary is not None and r.start >= boundary and r.end <= restored_at
    ]
    doubled = [r for r in timeline if r.target is not None and r.arrivals > r.target + 2]
    totals = result["totals"]
    summary(
        "netns cut a2 link 5 s",
        detection_s=lost[0]["at"] - cut_at if lost else None,
        rebalance_event_s=rebalanced[0]["at"] - cut_at if rebalanced else None,
        rebalance_boundary_s=boundary - cut_at if boundary else None,
        rejoin_after_restore_s=joined[0]["at"] - restored_at if joined else None,
        requests_lost=seen["total"] - totals["requests"],
        arrivals_never_sent=RATE * duration - totals["arrivals"],
        arrivals_doubled=sum(r.arrivals - r.target for r in doubled if r.target),
        target_minus_schedule=seen["total"] - RATE * duration,
        rate_during_cut=[r.arrivals for r in during],
        events=[(e["kind"], e["agent"]) for e in result["events"]],
    )
    context = f"{describe_rows(timeline, cut_at)}\n{result['events']}\n{group.report()}"
    assert code == 0, context
    assert [e["agent"] for e in lost][:1] == ["a2"], context
    assert lost[0]["at"] - cut_at <= DEADMAN, context
    assert during and all(full(r) for r in during), f"the rate was not kept: {context}"
    assert not doubled, f"arrivals sent twice: {describe_rows(doubled, cut_at)}\n{context}"
    assert seen["total"] <= RATE * duration, f"the target got more than scheduled: {context}"
    assert totals["requests"] == seen["total"], f"results were lost: {context}"
    assert [e["agent"] for e in joined] == ["a2"], f"a2 did not rejoin: {context}"
    back = [r for r in timeline if r.target and r.start >= joined[0]["at"] + 2.0]
    assert all(full(r) for r in back), f"the rate was not kept after the rejoin: {context}"
    assert agent_codes == [0, 0, 0], context
    assert sum(a["requests"] for a in result["agents"]) == totals["requests"], result["agents"]


def test_kill_9_agent_others_take_over_within_3_s(cluster: Cluster) -> None:
    """kill -9 a2 of three: the result names it lost and is degraded; from the kill to the
    first interval carrying the full rate again takes at most 3 s."""
    duration = 12
    coordinator = cluster.coordinator(RATE, duration, 3, "--insecure")
    agents = [cluster.agent(h, "--insecure") for h in ("a1", "a2", "a3")]
    group = cluster.group
    try:
        wait_for_total(cluster.target_url, int(RATE * 3.5), 60)  # mid-interval
        killed_at = agents[1].signal(signal.SIGKILL)
        code = coordinator.code_within(60)
        agent_codes = [agents[0].code_within(20), agents[2].code_within(20)]
    except BaseException:
        print(group.report())
        raise
    seen = counts(cluster.target_url)["total"]
    result = load_result(cluster.out, cluster.group.report())
    lost = events(result, "lost")
    rebalanced = events(result, "rebalanced")
    takeover, timeline = takeover_after(result, killed_at)
    boundary = _boundary(result, rebalanced[0]) if rebalanced else None
    summary(
        "netns kill -9 agent",
        detection_s=lost[0]["at"] - killed_at if lost else None,
        rebalance_event_s=rebalanced[0]["at"] - killed_at if rebalanced else None,
        rebalance_boundary_s=boundary - killed_at if boundary else None,
        takeover_s=takeover,
        arrivals_never_sent=RATE * duration - result["totals"]["arrivals"],
        requests_unreported=seen - result["totals"]["requests"],
    )
    context = f"{describe_rows(timeline, killed_at)}\n{group.report()}"
    assert code == 0, context
    assert agent_codes == [0, 0], context
    assert [e["agent"] for e in lost] == ["a2"], result["events"]
    assert result["degraded"] is True
    assert lost[0]["at"] - killed_at <= DEADMAN, context
    assert takeover is not None, f"the rate never came back: {context}"
    assert takeover <= 3.0, f"the others took {takeover:.2f} s to take over: {context}"


def test_kill_9_coordinator_agents_stop_within_3_s(cluster: Cluster) -> None:
    """kill -9 the coordinator: the target sees no request later than 3 s after the kill."""
    coordinator = cluster.coordinator(RATE, 30, 2, "--insecure")
    agents = [cluster.agent(h, "--insecure") for h in ("a1", "a2")]
    group = cluster.group
    try:
        wait_for_total(cluster.target_url, int(RATE * 2.5), 60)
        killed_at = coordinator.signal(signal.SIGKILL)
        time.sleep(DEADMAN + 1.5)
        first = counts(cluster.target_url)
        time.sleep(1.0)
        later = counts(cluster.target_url)
    except BaseException:
        print(group.report())
        raise
    stopped_after = first["last_ts"] - killed_at
    summary(
        "netns kill -9 coordinator",
        last_request_after_kill_s=stopped_after,
        target_count=first["total"],
    )
    context = group.report()
    assert later["total"] == first["total"], f"load went on: {first} -> {later}\n{context}"
    assert stopped_after <= DEADMAN, (
        f"the last request reached the target {stopped_after:.2f} s after the kill\n{context}"
    )
    for agent in agents:
        assert "no word from the coordinator" in agent.stderr(), context


def _keys(*args: str) -> None:
    proc = subprocess.run(
        [*LOADCTL, "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr


def test_keyed_cluster_runs_across_namespaces(cluster: Cluster) -> None:
    """With `loadctl keys`: two agents with admitted keys run 200 RPS × 3 s over CURVE;
    the counts are exact (so the refusals in the next test are not a broken key setup)."""
    keys = cluster.group.directory / "keys"
    _keys("init", str(keys))
    for name in ("a1", "a2"):
        _keys("add-agent", name, "--dir", str(keys))
    coordinator = cluster.coordinator(RATE, 3, 2, "--keys", str(keys))
    agents = [cluster.agent(h, "--keys", str(keys), "--name", h) for h in ("a1", "a2")]
    try:
        code = coordinator.code_within(60)
        agent_codes = [a.code_within(20) for a in agents]
    except BaseException:
        print(cluster.group.report())
        raise
    seen = counts(cluster.target_url)["total"]
    context = cluster.group.report()
    summary("netns keyed run", target_count=seen, expected=RATE * 3)
    assert code == 0, context
    assert agent_codes == [0, 0], context
    result = load_result(cluster.out, context)
    assert result["totals"]["requests"] == seen == RATE * 3, context


def test_agents_with_wrong_keys_are_refused_and_send_nothing(cluster: Cluster) -> None:
    """Two rogue agents against a keyed coordinator waiting for one agent: one with keys
    from a different `keys init` (it pins the wrong coordinator key), one with the real
    coordinator key but an agent key that is not allow-listed. Both exit non-zero with one
    clear line, the target sees nothing, and the coordinator fails (exit 3) with 0 ready."""
    base = cluster.group.directory
    keys, rogue = base / "keys", base / "rogue-keys"
    _keys("init", str(keys))
    _keys("add-agent", "a1", "--dir", str(keys))
    _keys("init", str(rogue))
    _keys("add-agent", "a2", "--dir", str(rogue))
    _keys("add-agent", "a3", "--dir", str(rogue))
    pinned = base / "pinned-keys"  # the rogue's a3 key, but the real coordinator.key
    shutil.copytree(rogue, pinned)
    (pinned / "coordinator.key").unlink()
    (pinned / "coordinator.key_secret").unlink()
    shutil.copy(keys / "coordinator.key", pinned / "coordinator.key")
    path = write_scenario(constant(cluster.target_url, RATE, 3), base)
    started = time.monotonic()
    coordinator = cluster.group.start(
        "coordinator",
        coordinator_argv(
            path, 1, cluster.endpoint, cluster.out, "--keys", str(keys), "--wait", "8"
        ),
        host="coord",
    )
    rogues = [
        cluster.agent("a2", "--keys", str(rogue), "--name", "a2", "--connect-timeout", "6"),
        cluster.agent("a3", "--keys", str(pinned), "--name", "a3", "--connect-timeout", "6"),
    ]
    try:
        code = coordinator.code_within(40)
        rogue_codes = [r.code_within(5) for r in rogues]
    except BaseException:
        print(cluster.group.report())
        raise
    seen = counts(cluster.target_url)["total"]
    context = cluster.group.report()
    summary(
        "netns rogue agents",
        coordinator_exit=code,
        rogue_exits=rogue_codes,
        target_count=seen,
        seconds=time.monotonic() - started,
    )
    assert seen == 0, f"a rogue agent sent load: {context}"
    assert code == 3, context
    assert "0 ready" in coordinator.stderr(), context
    assert not (cluster.out / "result.json").exists()
    # The refusal of the allow-list check names where the rogue came from.
    assert cluster.net.addr("a3", "ctl") in coordinator.stderr(), context
    for r in rogues:
        lines = [line for line in r.stderr().splitlines() if "error" in line.lower()]
        assert r.poll() not in (0, None), (
            f"rogue {r.name}: exit {r.poll()} (None: still running well after its "
            f"--connect-timeout of 6 s)\n{context}"
        )
        assert len(lines) == 1 and cluster.endpoint in lines[0], context
        assert "Traceback" not in r.stderr(), context


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s", "-q"]))
