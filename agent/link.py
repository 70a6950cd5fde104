"""The agent's end of the cluster link: one DEALER socket to the coordinator.

Everything the agent sends goes through here; snapshots are kept in an
outbox until the coordinator acks them, and resent after a silence or a
reconnect, so a short network cut loses no results (a ROUTER drops messages
for a peer whose queue is full; acks make that visible and recoverable). The
outbox is bounded — at least ten minutes of intervals — so memory stays flat.
`last_heard` feeds the dead-man switch.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import zmq
import zmq.asyncio

from loadctl.protocol.codec import MAX_FRAME_BYTES, ProtocolError, decode, encode
from loadctl.protocol.messages import Message, Snapshot

log = logging.getLogger("loadctl.agent")

OUTBOX_LIMIT = 1200  # snapshots kept unacked: 20 minutes at 1 s intervals
# Seconds an unacked snapshot waits before it is sent again, doubling up to
# RESEND_MAX. ZeroMQ loses nothing while a connection lives, so a missing ack
# mostly means a coordinator busy merging (which acks what it has read, and
# has not read this yet): copies would only add to its load. A reconnect, a
# coordinator back from silence and the run's end resend sooner (`resend_due`).
RESEND_AFTER = 2.0
RESEND_MAX = 16.0


class CoordinatorLink:
    def __init__(
        self, ctx: zmq.asyncio.Context, endpoint: str, agent_id: str, configure: object = None
    ) -> None:
        self.endpoint = endpoint
        self.agent_id = agent_id
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, agent_id.encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.socket.setsockopt(zmq.SNDHWM, 10000)
        self.socket.setsockopt(zmq.RCVHWM, 10000)
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 200)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        apply = getattr(configure, "apply", None)
        if callable(apply):
            apply(self.socket)
        self.socket.connect(endpoint)
        self.last_heard = time.monotonic()
        self.last_sent = 0.0  # when a frame was last queued (heartbeats skip busy links)
        # seq -> (when to resend it, the wait after that, the encoded snapshot)
        self.outbox: OrderedDict[int, tuple[float, float, bytes]] = OrderedDict()
        self.next_seq = 1
        self.outbox_dropped = 0
        self.bad_frames = 0
        self.send_failures = 0

    async def send(self, message: Message) -> bool:
        return await self._send(encode(message))

    async def _send(self, data: bytes) -> bool:
        """Queue a frame without ever waiting: a DEALER whose connection libzmq gave up
        on (a refused key, an oversize frame) blocks senders forever, and the agent's
        loop — with its dead-man check — must never block. False if not queued."""
        try:
            await self.socket.send(data, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_failures += 1
            return False
        self.last_sent = time.monotonic()
        return True

    async def send_snapshot(self, snapshot: Snapshot) -> None:
        data = encode(snapshot)
        self.outbox[snapshot.seq] = (time.monotonic() + RESEND_AFTER, RESEND_AFTER, data)
        while len(self.outbox) > OUTBOX_LIMIT:
            self.outbox.popitem(last=False)
            self.outbox_dropped += 1
        await self._send(data)  # kept in the outbox either way: resent until acked

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def acked(self, seqs: tuple[int, ...]) -> None:
        for seq in seqs:
            self.outbox.pop(seq, None)

    async def resend_due(self, force: bool = False, sent_before: float | None = None) -> int:
        """Resend what is due; with `force`, everything unacked; with `sent_before`
        (a monotonic time), also what was last sent before then."""
        now = time.monotonic()
        sent = 0
        for seq, (due, wait, data) in list(self.outbox.items()):
            if force or now >= due or (sent_before is not None and due - wait < sent_before):
                wait = RESEND_AFTER if force else min(2 * wait, RESEND_MAX)
                self.outbox[seq] = (now + wait, wait, data)
                if not await self._send(data):
                    break
                sent += 1
        return sent

    async def receive(self, timeout: float) -> Message | None:
        """The next valid message, or None after `timeout` seconds of nothing valid."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not await self.socket.poll(remaining * 1000):
                return None
            data = await self.socket.recv()
            try:
                message = decode(data)
            except ProtocolError as error:
                self.bad_frames += 1
                if self.bad_frames <= 5 or self.bad_frames % 1000 == 0:
                    log.warning("dropped a bad frame from the coordinator (%s)", error)
                if _is_version_error(error):
                    raise
                continue
            self.last_heard = time.monotonic()
            return message

    def silence(self) -> float:
        return time.monotonic() - self.last_heard

    def close(self) -> None:
        self.socket.close(linger=0)


def _is_version_error(error: ProtocolError) -> bool:
    from loadctl.protocol.codec import VersionMismatch

    return isinstance(error, VersionMismatch)
