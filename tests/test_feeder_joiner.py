"""unique-per-user rows for agents that join mid-run (`protocol.handover`).

The first tests replay runs in memory: the coordinator's side is the real
`Payload.files_for` with the run's `ShareHistory`, each agent's side the real
`Feeder` over a real `ShareBook`, and users start and stop as `agent.users`
starts and stops them (user u runs on the owner of u under the share of the
moment while the curve wants it). Random joins, rejoins and losses; the
invariant: no row is ever taken by two users, or by one user on two agents.

The last test is a real cluster: a coordinator and two agents over TCP, a
third agent that joins mid-run, and a recording target that sees which agent
process sent which row.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import re
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from loadctl.agent.feeders import NO_ROW, Feeder, load_feeders
from loadctl.agent.shares import ShareBook
from loadctl.coordinator.feeders import Payload, ShareHistory, load_payload
from loadctl.protocol.handover import MARGIN, Blocks, Epoch, users_between
from loadctl.protocol.messages import Plan, Share
from loadctl.protocol.scenario import Scenario
from loadctl.protocol.segments import Stripe

from cluster import agent_argv, coordinator_argv, free_port
from target_process import serving

TARGET = "http://127.0.0.1:9"
NOTICE = 0.3  # the coordinator's SHARE_NOTICE
STEP = 0.05  # seconds per simulation tick (the agents' controllers run every 0.1 s)


def journey_scenario(
    directory: Path, rows: int, phases: list[dict[str, Any]], wrap: bool = False
) -> Scenario:
    path = directory / "users.csv"
    path.write_text("id\n" + "".join(f"r{i}\n" for i in range(rows)), encoding="utf-8")
    data = {"users": {"file": str(path), "mode": "unique-per-user", "wrap": wrap}}
    return Scenario.from_dict(
        {
            "target": TARGET,
            "requests": [{"name": "go", "path": "/r/${row.id}"}],
            "data": data,
            "phases": [{**p, "data": "users"} for p in phases],
        }
    )


PHASES: list[dict[str, Any]] = [
    {"name": "steady", "executor": "constant-users", "users": 9, "duration": "30s"},
    {
        "name": "ramp",
        "executor": "ramping-users",
        "start": "4s",
        "start_users": 0,
        "stages": [
            {"duration": "8s", "target": 12},
            {"duration": "4s", "target": 5},
            {"duration": "6s", "target": 12},
        ],
    },
    {"name": "late", "executor": "constant-users", "users": 6, "start": "20s", "duration": "8s"},
]


# -- the in-memory cluster ------------------------------------------------------------------
@dataclass
class SimAgent:
    """One agent incarnation: its plan's feeder and its users."""

    name: str
    position: int
    book: ShareBook
    skew: float = 0.0  # its clock minus the coordinator's
    now: float = 0.0
    feeder: Feeder | None = None
    running: set[tuple[str, int]] = field(default_factory=set)
    finished: set[tuple[str, int]] = field(default_factory=set)
    alive: bool = True  # it runs its users
    linked: bool = True  # the coordinator reaches it

    @property
    def shares(self) -> ShareBook:
        return self.book

    def run_time(self) -> float:
        return self.now


class SimRun:
    def __init__(
        self,
        scenario: Scenario,
        agents: int,
        payload: Payload,
        skew: float = 0.0,
        late: float = 0.0,
        monotone: bool = False,
    ) -> None:
        self.rng = random.Random(len(scenario.phases) + agents)
        self.skew = skew
        self.late = late  # a share may reach an agent up to this long after its since
        # Shares only go forward in time (a join's comes after a pending loss's); without
        # this, as in `coordinator.run` today, a join's share may replace a loss's.
        self.monotone = monotone
        self.pending: list[tuple[float, SimAgent, Share]] = []
        self.stops: list[tuple[float, SimAgent]] = []
        self.scenario = scenario
        self.payload = payload
        self.history = ShareHistory()
        self.weights = [1] * agents
        self.history.add(0.0, self.weights)
        self.agents: list[SimAgent] = []
        self.by_position: dict[int, SimAgent] = {}
        self.used: dict[int, set[tuple[str, str, int]]] = defaultdict(set)
        self.now = 0.0
        for position in range(agents):
            self._plan(position, Share(0.0, tuple(self.weights), position))

    def _plan(self, position: int, share: Share) -> SimAgent:
        files = self.payload.files_for(self.scenario, share, self.history)
        plan = Plan("run", self.scenario.wire(), share, 0.0, 1.0, files)
        skew = self.rng.uniform(-self.skew, self.skew)
        agent = SimAgent(f"{position}@{share.since:.2f}", position, ShareBook(share, 1.0), skew)
        agent.now = self.now + skew
        agent.feeder = load_feeders(self.scenario, plan, agent)["users"]
        self.agents.append(agent)
        self.by_position[position] = agent
        return agent

    def _reshare(self, since: float) -> float:
        since = max(since, self.now + NOTICE)
        if self.monotone:
            since = max(since, self.history.epochs[-1].since + 0.001)
        self.history.add(since, self.weights)
        for agent in self.agents:
            if agent.linked:
                share = Share(since, tuple(self.weights), agent.position)
                at = self.rng.uniform(self.now, since + self.late) if self.late else self.now
                at = max([at] + [p[0] for p in self.pending if p[1] is agent])  # in order
                self.pending.append((at, agent, share))
        self._deliver()
        return since

    def _deliver(self) -> None:
        due = [p for p in self.pending if p[0] <= self.now]
        self.pending = [p for p in self.pending if p[0] > self.now]
        for _, agent, share in sorted(due, key=lambda p: p[0]):  # stable: in sending order
            agent.book.add(share)

    def join(self, position: int | None = None) -> SimAgent:
        """A new agent (or a lost one back): a weight, a reshare, then its plan."""
        if position is None:
            position = len(self.weights)
            self.weights.append(1)
        else:
            assert not self.by_position[position].linked
            self.weights[position] = 1
        since = self._reshare(self.now)
        return self._plan(position, Share(since, tuple(self.weights), position))

    def lose(self, position: int) -> None:
        """The coordinator has just declared the agent lost (2 s of silence): cut off from
        it, the agent runs on until its dead-man switch stops it 0.5 s from now, and its
        share moves 0.2 s after that (as `coordinator.run` computes it)."""
        agent = self.by_position[position]
        agent.linked = False
        self.stops.append((self.now + 0.5, agent))
        self.weights[position] = 0
        if any(self.weights):
            self._reshare(self.now + 0.7)

    def advance(self, until: float) -> None:
        while self.now < until:
            self.now += STEP
            self._deliver()
            for at, agent in self.stops:
                if at <= self.now:
                    agent.alive = False
            for agent in self.agents:
                agent.now = self.now + agent.skew
                if agent.alive:
                    self._tick(agent)

    def _tick(self, agent: SimAgent) -> None:
        """What `users.run_user_phase` does for each phase, once, on the agent's clock."""
        now = agent.now
        share = agent.book.current(now)
        wanted: set[tuple[str, int]] = set()
        if share is not None:
            stripe = Stripe.from_weights(share.weights)
            for phase in self.scenario.phases:
                t = now - phase.start
                if phase.users is None or t < 0 or t >= phase.duration:
                    continue
                wanted |= {
                    (phase.name, u)
                    for u in range(phase.users.users_at(t))
                    if stripe.owner(u) == share.index
                }
        agent.running &= wanted
        assert agent.feeder is not None
        for key in sorted(wanted - agent.running - agent.finished):
            row = agent.feeder.for_user(*key)
            if row is NO_ROW:
                agent.finished.add(key)
                continue
            agent.running.add(key)
            self.used[int(row["id"][1:])].add((agent.name, *key))

    def rows_of(self, agent: SimAgent) -> set[int]:
        return {i for i, keys in self.used.items() if any(k[0] == agent.name for k in keys)}


def assert_each_row_once(run: SimRun, wrap: bool = False) -> None:
    """Each row taken by one user on one agent; with wrap, users of one agent may share
    rows (that is what wrap does), agents still never do."""
    if wrap:
        shared = {i: keys for i, keys in run.used.items() if len({k[0] for k in keys}) > 1}
    else:
        shared = {i: keys for i, keys in run.used.items() if len(keys) > 1}
    assert not shared, f"rows taken by more than one user or agent: {shared}"


# -- arithmetic ------------------------------------------------------------------------------
def test_users_between_bounds_the_curve_from_above(tmp_path: Path) -> None:
    sc = journey_scenario(tmp_path, 40, PHASES)
    rng = random.Random(7)
    for phase in sc.phases:
        assert phase.users is not None
        for _ in range(300):
            lo = rng.uniform(-5, 35)
            hi = lo + rng.uniform(0, 6)
            bound = users_between(phase, lo, hi)
            for k in range(41):
                t = lo + (hi - lo) * k / 40
                assert phase.users.users_at(t - phase.start) <= bound, (phase.name, lo, hi, t)
            assert bound <= phase.users.peak
    ramp = sc.phases[1]
    assert users_between(ramp, 0, 4) == 0  # the ramp starts at 4 s
    assert users_between(ramp, 0, 8) == 6
    assert users_between(ramp, 13, 15) == 11  # going down from 12: 10.25 at 13 s, rounded up


def test_rows_of_users_not_started_follow_them_to_a_joiner(tmp_path: Path) -> None:
    sc = journey_scenario(tmp_path, 27, PHASES)  # exactly the blocks: 9 + 12 + 6, no spares
    blocks = Blocks("users", sc.phases)
    assert blocks.end == 27
    since = 2.0  # the ramp (from 4 s) and the late phase (20 s) have not started
    epochs = [Epoch(0.0, (1, 1)), Epoch(since, (1, 1, 1))]
    moved = blocks.moving("ramp", since, (1, 1, 1), 2)
    assert moved.tolist() == [u % 3 == 2 for u in range(12)]
    assert not blocks.moving("steady", since, (1, 1, 1), 2).any()  # all started at 0 s
    for u in range(12):
        assert blocks.holder("ramp", u, epochs) == u % 3
        assert blocks.holder("steady", u if u < 9 else 0, epochs) is None
    # By 6.5 s (5.5 s + MARGIN) the ramp wants 3.75 users: the rows of users 0-3 stay.
    later = blocks.moving("ramp", 5.5, (1, 1, 1), 2)
    started = blocks.started_by("ramp", 5.5 + MARGIN)
    assert started == 4 and not later[:started].any() and later[started:].any()


# -- replayed runs -----------------------------------------------------------------------------
def test_a_joiner_gets_rows_and_no_row_is_taken_twice(tmp_path: Path) -> None:
    sc = journey_scenario(tmp_path, 60, PHASES)  # 27 rows in blocks, 33 spares
    run = SimRun(sc, 2, load_payload(sc))
    run.advance(2.0)
    joiner = run.join()
    run.advance(30.0)
    assert_each_row_once(run)
    mine = run.rows_of(joiner)
    keys = {k[1:] for i in mine for k in run.used[i]}
    # It runs the steady users that moved to it (with spares), and ramp and late users
    # (with their own rows, which followed them).
    assert {p for p, _ in keys} == {"steady", "ramp", "late"}, keys
    assert any(i >= 27 for i in mine) and any(9 <= i < 21 for i in mine), mine
    own_ramp = {i for i in mine if 9 <= i < 21}
    assert own_ramp == {9 + u for u in range(12) if u % 3 == 2}, own_ramp
    # Nobody was left without a row: 33 spares are enough for the users that moved.
    assert not any(a.finished for a in run.agents), [a.finished for a in run.agents]


def test_without_the_history_a_joiner_gets_no_unique_rows(tmp_path: Path) -> None:
    sc = journey_scenario(tmp_path, 60, PHASES)
    files = load_payload(sc).files_for(sc, Share(2.3, (1, 1, 1), 2))
    assert files["data/users"] == b""


def test_unique_per_iteration_rows_never_move(tmp_path: Path) -> None:
    sc = journey_scenario(tmp_path, 60, PHASES)
    source = dict(sc.source)
    source["data"] = {"users": {**source["data"]["users"], "mode": "unique-per-iteration"}}
    sc = Scenario.from_dict(source)
    history = ShareHistory()
    history.add(0.0, (1, 1))
    history.add(2.3, (1, 1, 1))
    assert load_payload(sc).files_for(sc, Share(2.3, (1, 1, 1), 2), history)["data/users"] == b""


# 82 and 136 (odd: shares may come late) fail with MARGIN = 0: they keep the margin honest.
@pytest.mark.parametrize("seed", [*range(16), 82, 136])
def test_random_joins_and_losses_never_reuse_a_row(tmp_path: Path, seed: int) -> None:
    """Clocks up to 0.3 s apart; events as little as 0.1 s apart, so a join's share
    sometimes replaces a pending loss's. Shares reach the agents on time (the run's
    assumption, as for arrivals); with shares that never go back in time, they may also
    arrive up to 0.25 s after they took effect (MARGIN covers that)."""
    rng = random.Random(seed)
    wrap = seed % 4 == 3
    rows = rng.choice([10, 20]) if wrap else 27 + rng.choice([0, 5, 20, 60])
    sc = journey_scenario(tmp_path, rows, PHASES, wrap=wrap)
    monotone = seed % 2 == 1
    run = SimRun(
        sc,
        rng.choice([1, 2, 3]),
        load_payload(sc),
        skew=0.3,
        late=0.25 if monotone else 0.0,
        monotone=monotone,
    )
    t = 0.0
    joiners = []
    while t < 26:
        t += rng.uniform(0.1, 4.0)
        run.advance(t)
        alive = [a for a in run.agents if a.linked]
        lost = sorted(
            {a.position for a in run.agents if not a.linked} - {a.position for a in alive}
        )
        choice = rng.random()
        if choice < 0.5 or len(alive) == 1:
            joiners.append(run.join())
        elif choice < 0.75 and lost:
            joiners.append(run.join(rng.choice(lost)))
        else:
            run.lose(rng.choice(alive).position)
    run.advance(30.0)
    assert_each_row_once(run, wrap)
    if not wrap:
        assert any(run.rows_of(j) for j in joiners), "no joiner ever got a row"


def test_a_wrapping_feeder_reuses_only_rows_that_cannot_move(tmp_path: Path) -> None:
    """With wrap, users beyond the rows reuse rows; after a join, the rows that followed
    the ramp's users to the joiner are not among them on the agents that gave them up."""
    phases = [PHASES[0], PHASES[1]]
    sc = journey_scenario(tmp_path, 15, phases, wrap=True)  # 9 steady + 6 of the 12 ramp
    run = SimRun(sc, 2, load_payload(sc))
    run.advance(2.0)
    joiner = run.join()
    run.advance(22.0)
    assert_each_row_once(run, wrap=True)
    mine = run.rows_of(joiner)
    assert {9 + u for u in range(6) if u % 3 == 2} <= mine, mine
    for agent in run.agents:
        if agent is not joiner:
            assert not (run.rows_of(agent) & {9 + u for u in range(6) if u % 3 == 2})


# -- a real cluster ----------------------------------------------------------------------------


class Recorder(http.server.ThreadingHTTPServer):
    """A keep-alive HTTP/1.1 server that records, per request, its path and the pid of
    the agent process on the other end of the connection."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.seen: list[tuple[str, int | None]] = []
        self.pids: list[int] = []
        self.lock = threading.Lock()

    def pid_of(self, port: int) -> int | None:
        for pid in list(self.pids):
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections(kind="tcp"):
                    if conn.laddr and conn.laddr.port == port:
                        return pid
        return None


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder
    pid: int | None = None

    def do_GET(self) -> None:
        if self.pid is None:
            self.pid = self.server.pid_of(self.client_address[1])
        with self.server.lock:
            self.server.seen.append((self.path, self.pid))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def recording_target() -> contextlib.AbstractContextManager[Recorder]:
    return serving(Recorder())


@pytest.mark.slow
def test_an_agent_joining_mid_run_gets_rows_nobody_used() -> None:
    """Two agents, then a third joins at about 2 s. The steady phase's users all run from
    the start; the ramp's start at 9 s. The joiner runs its steady users on spares the
    others gave up and its ramp users on their own rows; every row reaches the target
    from one agent process and one user."""
    with recording_target() as server, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "users.csv").write_text(
            "id\n" + "".join(f"r{i}\n" for i in range(40)), encoding="utf-8"
        )
        port = server.server_address[1]
        scenario = {
            "target": f"http://127.0.0.1:{port}",
            "defaults": {"timeout": "5s"},
            "data": {"users": {"file": "users.csv", "mode": "unique-per-user"}},
            "requests": [
                {"name": "steady", "path": "/steady/${row.id}/${user_id}"},
                {"name": "ramp", "path": "/ramp/${row.id}/${user_id}"},
            ],
            "phases": [
                {
                    "name": "steady",
                    "executor": "constant-users",
                    "users": 6,
                    "duration": "16s",
                    "think": "200ms",
                    "requests": ["steady"],
                    "data": "users",
                },
                {
                    "name": "ramp",
                    "executor": "ramping-users",
                    "start": "9s",
                    "start_users": 0,
                    "stages": [{"duration": "3s", "target": 6}, {"duration": "4s", "target": 6}],
                    "think": "200ms",
                    "requests": ["ramp"],
                    "data": "users",
                },
            ],
        }
        path = directory / "scenario.yaml"
        path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out = directory / "out"
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[Path] = []

        def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
            log = directory / f"{name}.err"
            with log.open("wb") as err:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            procs.append(proc)
            logs.append(log)
            return proc

        def report() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

        try:
            coordinator = start(
                "coordinator", coordinator_argv(path, 2, endpoint, out, "--wait", "30")
            )
            first = [start(f"agent-{n}", agent_argv(endpoint, "--id", n)) for n in "ab"]
            server.pids.extend(p.pid for p in first)
            deadline = time.monotonic() + 40
            while len(server.seen) < 5:  # the run is on
                assert time.monotonic() < deadline, report()
                time.sleep(0.05)
            joiner = start("agent-c", agent_argv(endpoint, "--id", "c"))
            server.pids.append(joiner.pid)
            assert coordinator.wait(60) == 0, report()
            for p in procs:
                assert p.wait(15) == 0, report()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        result = json.loads((out / "result.json").read_text())

        by_id = {a["id"]: a for a in result["agents"]}
        assert [e["agent"] for e in result["events"] if e["kind"] == "joined"] == ["c"], report()
        assert by_id["c"]["planned"] and by_id["c"]["requests"] > 0, by_id
        assert result["totals"]["requests"] == len(server.seen)
        users_of: dict[str, set[tuple[str, str]]] = defaultdict(set)
        pids_of: dict[str, set[int | None]] = defaultdict(set)
        for request_path, pid in server.seen:
            found = re.fullmatch(r"/(steady|ramp)/(r\d+)/(\d+)", request_path)
            assert found, request_path
            phase, row, user = found.groups()
            users_of[row].add((phase, user))
            pids_of[row].add(pid)
        assert all(len(u) == 1 for u in users_of.values()), dict(users_of)
        assert all(len(p) == 1 and None not in p for p in pids_of.values()), dict(pids_of)
        joiner_rows = {row for row, p in pids_of.items() if p == {joiner.pid}}
        joiner_phases = {phase for row in joiner_rows for phase, _ in users_of[row]}
        assert joiner_phases == {"steady", "ramp"}, (joiner_rows, dict(users_of))
        ramp_rows = {row for row in joiner_rows if all(p == "ramp" for p, _ in users_of[row])}
        # The ramp's users 2 and 5 run on the joiner (position 2 of three) with their own rows.
        assert {f"r{6 + u}" for u in (2, 5)} <= ramp_rows, ramp_rows
