"""The agents the coordinator knows, and what it knows about each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loadctl.coordinator.seqs import SeqSet
from loadctl.protocol.messages import Hello


@dataclass
class AgentRecord:
    agent_id: str
    identity: bytes  # the ZeroMQ routing id
    hello: Hello
    admitted_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    ready: bool = False
    clock_offset: float = 0.0
    clock_rtt: float = 0.0
    planned: bool = False  # has a plan for the current run
    started_at: float | None = None  # its reported start, coordinator clock
    done_seq: int | None = None  # last seq it announced with Done
    seqs: SeqSet = field(default_factory=SeqSet)  # snapshot seqs received this run
    lost_at: float | None = None
    joined_at: float | None = None  # joined mid-run
    cpu_percent: float = 0.0
    max_cpu_percent: float = 0.0
    rss_bytes: int = 0
    max_rss_bytes: int = 0
    in_flight: int = 0
    state: str = "idle"
    rejoin_asked: float = 0.0  # monotonic time we last asked this lost agent to rejoin
    arrivals: int = 0  # this run's arrivals and completed requests, from its snapshots
    requests: int = 0

    @property
    def alive(self) -> bool:
        return self.lost_at is None

    def silence(self) -> float:
        return time.monotonic() - self.last_seen

    def saw(self) -> None:
        self.last_seen = time.monotonic()

    def note_resources(self, cpu: float, rss: int) -> None:
        self.cpu_percent = cpu
        self.max_cpu_percent = max(self.max_cpu_percent, cpu)
        self.rss_bytes = rss
        self.max_rss_bytes = max(self.max_rss_bytes, rss)

    def missing_seqs(self) -> list[int]:
        if self.done_seq is None:
            return []
        return self.seqs.missing_up_to(self.done_seq)

    def complete(self) -> bool:
        """It said Done and every snapshot up to that point has arrived."""
        return self.done_seq is not None and self.seqs.has_all_up_to(self.done_seq)


class Registry:
    def __init__(self) -> None:
        self.by_id: dict[str, AgentRecord] = {}

    def get(self, agent_id: str) -> AgentRecord | None:
        return self.by_id.get(agent_id)

    def by_identity(self, identity: bytes) -> AgentRecord | None:
        record = self.by_id.get(identity.decode("utf-8", "replace"))
        return record if record is not None and record.identity == identity else None

    def add(self, record: AgentRecord) -> None:
        self.by_id[record.agent_id] = record

    def alive(self) -> list[AgentRecord]:
        return [a for a in self.by_id.values() if a.alive]

    def ready(self) -> list[AgentRecord]:
        return [a for a in self.by_id.values() if a.alive and a.ready]

    def planned(self) -> list[AgentRecord]:
        return [a for a in self.by_id.values() if a.planned]

    def __len__(self) -> int:
        return len(self.by_id)
