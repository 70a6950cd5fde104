"""Clock offset between an agent and its coordinator from ping/pong rounds.

For a round sent at agent time t0, stamped by the coordinator at c and
received back at t1, the coordinator's clock read c somewhere inside
[t0, t1] of the agent's clock, so offset = c - (t0 + t1) / 2 is wrong by at
most rtt / 2. The round with the smallest RTT gives the tightest bound (the
NTP rule), which is why we keep that one and not an average.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClockSample:
    sent: float  # agent clock
    coordinator_time: float
    received: float  # agent clock

    @property
    def rtt(self) -> float:
        return self.received - self.sent

    @property
    def offset(self) -> float:
        return self.coordinator_time - (self.sent + self.received) / 2


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    offset: float  # add to the agent clock to get the coordinator clock
    rtt: float
    samples: int

    @property
    def error_bound(self) -> float:
        return self.rtt / 2

    def to_coordinator(self, agent_time: float) -> float:
        return agent_time + self.offset

    def to_agent(self, coordinator_time: float) -> float:
        return coordinator_time - self.offset


def estimate(samples: Iterable[ClockSample]) -> ClockEstimate:
    usable = [s for s in samples if s.rtt >= 0]
    if not usable:
        raise ValueError("no usable clock samples")
    best = min(usable, key=lambda s: s.rtt)
    return ClockEstimate(best.offset, best.rtt, len(usable))
