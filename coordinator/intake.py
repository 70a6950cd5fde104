"""The coordinator's intake: from its socket to its handlers, at any load.

A thousand agents send some 75 MB of snapshots in the few milliseconds after
each interval ends, and decoding and merging them costs far more than taking
them off the socket. So:

* What arrived is taken off the socket at once (up to `MAX_WAITING` messages
  and `MAX_WAITING_BYTES`): its sender counts as heard from now, and a snapshot
  is acked from its first bytes (`peek_snapshot`), so a backlog here neither
  makes live agents look lost nor makes them resend. A resend of a snapshot
  that is already waiting here, or merged, is dropped undecoded.
* Past those bounds the rest waits in ZeroMQ's queue, and then nobody's silence
  can be told from our own slowness: `drained_at` is the last moment the socket
  was read dry, and an agent is silent only for what it did not send before
  then (`silence`). An overloaded coordinator falls behind; it does not declare
  its agents lost (and move their load, and count a result twice) because of it.
* Messages are then handled `BATCH` at a time, in arrival order, except that
  consecutive snapshots merge together in one call (`Timeline.add_many`) and
  heartbeats, which depend on nothing, do not cut such a batch short.
* Such a merge takes at most `MERGE_CHUNK` snapshots, decoded just before it.
  Merging many at once spreads numpy's per-call cost thinner, but a snapshot
  decodes to ~25,000 histogram slots and the merge makes a few arrays of them:
  for 256 snapshots that is tens of MB per array, far past the caches. With
  `bench/coordinator_scale.py` at 1,000 agents (runs alternated, 32 MiB L3), the
  merge took 675–710 µs per snapshot in batches of 256 and 471–483 µs in 12s.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from loadctl.coordinator.registry import AgentRecord, Registry
from loadctl.coordinator.server import Server
from loadctl.coordinator.timeline import Timeline
from loadctl.protocol.codec import peek_snapshot
from loadctl.protocol.messages import Ack, Heartbeat, Message, Snapshot

# Messages taken off the socket and not yet handled, and their bytes: a thousand
# agents' snapshots are ~80 MiB a second. What is not taken waits in ZeroMQ's
# queue instead (the same memory), unacked, and its senders resend it.
MAX_WAITING = 65536
MAX_WAITING_BYTES = 1 << 30
BATCH = 256  # messages handled between two looks at the clock
MERGE_CHUNK = 12  # snapshots decoded and merged together (see above)

SnapshotBatch = list[tuple[AgentRecord | None, bytes, Snapshot]]
Handler = Callable[[AgentRecord | None, bytes, Any], Awaitable[None]]


class Intake:
    def __init__(
        self,
        server: Server,
        registry: Registry,
        timeline: Timeline,
        run_id: str,
        handlers: dict[type[Any], Handler],
        on_snapshots: Callable[[SnapshotBatch, Collection[int]], Awaitable[None]],
        on_unexpected: Callable[[bytes, Message], Awaitable[None]],
    ) -> None:
        self.server = server
        self.registry = registry
        self.timeline = timeline
        self.run_id = run_id
        self.handlers = handlers
        self.on_snapshots = on_snapshots
        self.on_unexpected = on_unexpected
        # taken off the socket, not yet handled: (frames, (agent id, seq) if acked)
        self.waiting: deque[tuple[list[bytes], tuple[str, int] | None]] = deque()
        self.waiting_bytes = 0
        self._acked: set[tuple[str, int]] = set()  # snapshots acked and waiting
        self.drained_at = time.monotonic()

    @property
    def backlog(self) -> int:
        return len(self.waiting)

    def silence(self, agent: AgentRecord) -> float:
        """How long `agent` has been silent, as far as what we have read can tell."""
        return max(0.0, self.drained_at - agent.last_seen)

    async def round(self) -> None:
        """Take what arrived off the socket (waiting up to 50 ms if nothing is here),
        then handle up to `BATCH` messages."""
        room = MAX_WAITING - len(self.waiting)
        room_bytes = MAX_WAITING_BYTES - self.waiting_bytes
        if room > 0 and room_bytes > 0:
            frames = await self.server.receive_frames(
                0.0 if self.waiting else 0.05, room, room_bytes
            )
            if self.server.drained:
                self.drained_at = time.monotonic()
            for raw in frames:
                await self._arrived(raw)
        if self.waiting:
            await asyncio.sleep(0)  # other tasks run even while a backlog lasts
        await self._handle(min(len(self.waiting), BATCH))

    async def _arrived(self, raw: list[bytes]) -> None:
        agent = self.registry.by_identity(raw[0])
        acked: tuple[str, int] | None = None
        if agent is not None:
            agent.saw()
            if agent.planned and len(raw) == 2:
                head = peek_snapshot(raw[1])
                if head is not None and head[1] == agent.agent_id:
                    run_id, agent_id, seq = head
                    await self.server.send(raw[0], Ack(run_id, (seq,)))
                    if run_id == self.run_id and agent.alive:
                        key = (agent_id, seq)
                        if key in self._acked or self.timeline.seen(agent_id, seq):
                            self.timeline.drop_duplicate()
                            return
                        self._acked.add(key)
                        acked = key
        self.waiting.append((raw, acked))
        self.waiting_bytes += len(raw[-1])

    async def _handle(self, count: int) -> None:
        snapshots: SnapshotBatch = []
        acked_now: set[int] = set()  # positions in `snapshots` acked on arrival
        for _ in range(count):
            raw, acked = self.waiting.popleft()
            self.waiting_bytes -= len(raw[-1])
            if acked is not None:
                self._acked.discard(acked)
            got = self.server.accept(raw)
            if got is None:
                continue
            identity, message = got
            agent = self.registry.by_identity(identity)
            if type(message) is Snapshot:
                if acked is not None:
                    acked_now.add(len(snapshots))
                snapshots.append((agent, identity, message))
                if len(snapshots) >= MERGE_CHUNK:
                    await self.on_snapshots(snapshots, acked_now)
                    snapshots, acked_now = [], set()
                continue
            if snapshots and type(message) is not Heartbeat:
                await self.on_snapshots(snapshots, acked_now)  # before what may depend on them
                snapshots, acked_now = [], set()
            handler = self.handlers.get(type(message))
            if handler is None:
                await self.on_unexpected(identity, message)
            else:
                await handler(agent, identity, message)
        if snapshots:
            await self.on_snapshots(snapshots, acked_now)
