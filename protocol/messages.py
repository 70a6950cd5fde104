"""Every message that crosses the coordinator–agent link, as typed classes.

Each message is a frozen dataclass with a small integer `TYPE`; the codec
(`loadctl.protocol.codec`) turns it into a msgpack frame
`[PROTOCOL_VERSION, TYPE, [field, ...]]` and back, validating every field
against the class's annotations. Adding a message is adding a class here and
registering it in `MESSAGE_TYPES`; no string matching anywhere.

Plans change mid-run (an agent lost or joined, the next step of a capacity
search, an abort). So a `Plan` is only the start: a `PlanUpdate` carries a new
share of the work and/or a new set of phases that take effect at an interval
boundary, which both sides can name exactly because intervals are aligned to
the run start on the coordinator's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

# 2: histograms' wire forms are lists of their nine fields, not maps (histogram_wire)
# 3: a snapshot's histograms travel as one columnar table (histogram_table)
PROTOCOL_VERSION = 3

# All of a snapshot's histograms in their table form (see histogram_table.to_table).
# The codec checks only that it is a list: decode_tables validates it completely.
OPAQUE = "opaque"
WireTable = Annotated[list[Any], OPAQUE]


@dataclass(frozen=True, slots=True)
class Share:
    """An agent's part of the work: its position among weighted agents.

    `weights[index]` is this agent's weight; the striping maths in
    `loadctl.protocol.segments` turns the weights into exact, interleaved
    subsets of arrivals and users. `since` is the run time (seconds from the
    run start) from which this share holds: not tied to interval boundaries,
    so a lost agent's work moves as soon as it has surely stopped.
    """

    since: float
    weights: tuple[int, ...]
    index: int

    def __post_init__(self) -> None:  # the codec turns a ValueError into InvalidMessage
        if not self.since >= 0 or not 0 <= self.index < len(self.weights):
            raise ValueError("share index out of range")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0 or len(self.weights) > 65536:
            raise ValueError("share weights must be non-negative with a positive sum")


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[int] = 1
    protocol: int
    agent_id: str
    host: str
    cores: int
    processes: int
    pid: int
    software: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """The coordinator's answer to Hello: the agent is admitted."""

    TYPE: ClassVar[int] = 2
    coordinator: str
    heartbeat: float  # seconds between heartbeats each way
    deadman: float  # the agent stops its load after this much silence


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = 3
    seq: int
    sent: float  # agent clock


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[int] = 4
    seq: int
    sent: float  # echoed agent clock
    coordinator_time: float


@dataclass(frozen=True, slots=True)
class Plan:
    TYPE: ClassVar[int] = 5
    run_id: str
    scenario: dict[str, Any]  # the validated scenario, as plain data
    share: Share
    start_at: float  # coordinator clock
    interval: float  # seconds per snapshot interval
    files: dict[str, bytes] = field(default_factory=dict)  # shipped data and code


@dataclass(frozen=True, slots=True)
class PlanUpdate:
    """Takes effect at the start of interval `at_interval`.

    `share`, when set, replaces the agent's share from then on. `phases`, when
    set, replaces every phase that has not ended by then (running phases stop
    at the boundary); their `start` offsets are relative to the run start.
    `end_interval`, when set, ends the run at that boundary.
    """

    TYPE: ClassVar[int] = 6
    run_id: str
    at_interval: int
    share: Share | None = None
    phases: tuple[dict[str, Any], ...] | None = None
    end_interval: int | None = None


@dataclass(frozen=True, slots=True)
class Series:
    """One interval's counters for one (phase, request name). Its three histograms
    are in the snapshot's table: latency (from the intended start: coordinated
    omission corrected), service (from the actual send) and send_lag (actual send
    minus intended start), series after series."""

    phase: str
    name: str
    arrivals: int  # arrivals whose intended time fell in this interval
    outcomes: dict[str, int]  # outcome class -> completed count (see protocol.outcomes)
    bytes_in: int = 0
    checks_passed: int = 0
    checks_failed: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    TYPE: ClassVar[int] = 7
    run_id: str
    agent_id: str
    seq: int
    interval: int
    start: float  # coordinator clock
    end: float
    series: tuple[Series, ...]
    histograms: WireTable  # 3 per series: latency, service, send_lag
    active_users: int
    in_flight: int
    cpu_percent: float
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[int] = 8
    run_id: str
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TYPE: ClassVar[int] = 9
    state: str  # "idle" | "ready" | "running" | "draining"
    cpu_percent: float
    rss_bytes: int
    in_flight: int
    sent: float


@dataclass(frozen=True, slots=True)
class Done:
    """The agent finished its plan; `last_seq` is its final snapshot's seq."""

    TYPE: ClassVar[int] = 10
    run_id: str
    last_seq: int
    send_lag_note: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    TYPE: ClassVar[int] = 11
    run_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    TYPE: ClassVar[int] = 12
    reason: str


@dataclass(frozen=True, slots=True)
class Error:
    TYPE: ClassVar[int] = 13
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The agent measured its clock and waits for a plan."""

    TYPE: ClassVar[int] = 14
    clock_offset: float
    clock_rtt: float


@dataclass(frozen=True, slots=True)
class Started:
    """When the agent's first phase really began, on the coordinator's clock."""

    TYPE: ClassVar[int] = 15
    run_id: str
    started_at: float
    clock_error: float


Message = (
    Hello
    | Welcome
    | Ping
    | Pong
    | Plan
    | PlanUpdate
    | Snapshot
    | Ack
    | Heartbeat
    | Done
    | Stop
    | Bye
    | Error
    | Ready
    | Started
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Ping,
    Pong,
    Plan,
    PlanUpdate,
    Snapshot,
    Ack,
    Heartbeat,
    Done,
    Stop,
    Bye,
    Error,
    Ready,
    Started,
)
