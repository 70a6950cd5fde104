"""The coordinator's socket: one ROUTER, and a wall against hostile input.

Every frame is decoded inside one `try`; anything that is not a valid
message of our protocol version is counted by kind, logged at a limited rate,
and dropped. A frame of the wrong version gets an Error reply so the agent
can say why it was refused. ZeroMQ's own MAXMSGSIZE drops oversize frames
before they are even read into memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import zmq
import zmq.asyncio

from loadctl.protocol.codec import MAX_FRAME_BYTES, ProtocolError, VersionMismatch, decode, encode
from loadctl.protocol.messages import PROTOCOL_VERSION, Error, Message

log = logging.getLogger("loadctl.coordinator")

# pyzmq's send_multipart/recv_multipart combine enum flags on every call, which
# costs more than the call into ZeroMQ for a small message (5.8 against 3.0 µs per
# two-part heartbeat received, 3.3 against 1.2 µs per Ack sent); a thousand agents
# send ~3,000 messages a second. So the flags are plain ints, combined once.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_SENT_AT_LIMIT = 100_000  # identities whose last send is remembered (see `quiet`)


class RateLimitedLog:
    """At most `burst` lines per kind, then one line every `every` seconds with a count."""

    def __init__(self, burst: int = 5, every: float = 10.0) -> None:
        self.burst = burst
        self.every = every
        self._count: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        self._count[kind] += 1
        n = self._count[kind]
        now = time.monotonic()
        if n <= self.burst or now - self._last.get(kind, 0.0) >= self.every:
            self._last[kind] = now
            suffix = f" ({n} so far)" if n > self.burst else ""
            log.warning(message + suffix, *args)


class Server:
    def __init__(self, ctx: zmq.asyncio.Context, bind: str, security: object = None) -> None:
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.socket.setsockopt(zmq.SNDHWM, 100000)
        self.socket.setsockopt(zmq.RCVHWM, 100000)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        apply = getattr(security, "apply", None)
        if callable(apply):
            apply(self.socket)
        self.socket.bind(bind)
        # The same socket without asyncio futures, for the calls that never wait
        # (non-blocking receive and send): per message, a future costs more than the call.
        self.now: zmq.Socket[bytes] = zmq.Socket.shadow(self.socket.underlying)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.rejected: Counter[str] = Counter()
        self.drained = False  # the last receive_frames read the socket dry
        self.limited = RateLimitedLog()
        self.sent_at: dict[bytes, float] = {}  # identity -> when we last sent it anything

    async def receive(self, timeout: float) -> tuple[bytes, Message] | None:
        """The next valid (identity, message), or None when `timeout` passes."""
        got = await self.receive_many(timeout, limit=1)
        return got[0] if got else None

    async def receive_many(self, timeout: float, limit: int = 256) -> list[tuple[bytes, Message]]:
        """The valid (identity, message) pairs ready now, at most `limit`, in arrival
        order; waits up to `timeout` for the first one (an empty list if none came)."""
        out: list[tuple[bytes, Message]] = []
        deadline = time.monotonic() + timeout
        while not out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            frames = await self.receive_frames(remaining, limit)
            out = [got for got in map(self.accept, frames) if got is not None]
        return out

    async def receive_frames(
        self, timeout: float, limit: int = 4096, max_bytes: int = 1 << 62
    ) -> list[list[bytes]]:
        """The raw messages ready now (at most `limit` of them, or just past `max_bytes`),
        undecoded, in arrival order; waits up to `timeout` for the first (0: does not
        wait). Taking them off the socket is cheap and tells who is alive now; decoding
        them (`accept`) is what costs."""
        self.drained = False
        if timeout > 0 and not await self._readable(timeout):
            self.drained = True
            return []
        out: list[list[bytes]] = []
        recv, more = self.now.recv, self.now.get
        size = 0
        while len(out) < limit and size < max_bytes:
            try:
                frames = [recv(_NOBLOCK)]
            except zmq.Again:
                self.drained = True  # everything sent to us so far has been read
                break
            while more(_RCVMORE):  # the rest of a message is there with its first part
                frames.append(recv(_NOBLOCK))
            out.append(frames)
            size += sum(map(len, frames))
        return out

    async def _readable(self, timeout: float) -> bool:
        """Wait until a message is ready, at most `timeout` s. The event loop watches the
        socket's file descriptor, which only says that ZeroMQ's state may have changed:
        ZMQ_EVENTS says whether a message is there (and re-arms the descriptor). Cheaper
        per wake-up than zmq.asyncio's poll, which builds a poller and futures each time."""
        if self._ready():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fd = self.now.fileno()
        while (remaining := deadline - loop.time()) > 0:
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(waiter: asyncio.Future[None] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            loop.add_reader(fd, wake)
            timer = loop.call_later(remaining, wake)
            try:
                await waiter
            finally:
                loop.remove_reader(fd)
                timer.cancel()
            if self._ready():
                return True
        return False

    def _ready(self) -> bool:
        events = self.now.getsockopt(zmq.EVENTS)
        return isinstance(events, int) and bool(events & zmq.POLLIN)

    def accept(self, frames: list[bytes]) -> tuple[bytes, Message] | None:
        """Decode one raw message (from `receive_frames`), or count, log and drop it."""
        if len(frames) != 2:
            self.reject(
                "frames", frames[0] if frames else b"?", f"{len(frames)} frames instead of 2"
            )
            return None
        identity, data = frames
        try:
            return identity, decode(data)
        except VersionMismatch as error:
            self.reject("version", identity, str(error))
            self._send_now(
                identity,
                Error(
                    "version",
                    (
                        f"this coordinator speaks protocol {PROTOCOL_VERSION}, the agent "
                        f"{error.version!r}: install the same loadctl version everywhere"
                    ),
                ),
            )
        except ProtocolError as error:
            self.reject(type(error).__name__, identity, str(error))
        return None

    def reject(self, kind: str, identity: bytes, detail: str) -> None:
        self.rejected[kind] += 1
        self.limited.warn(
            kind, "dropped a frame from %r: %s: %s", identity[:40], kind, detail[:200]
        )

    async def send(self, identity: bytes, message: Message) -> None:
        self._send_now(identity, message)

    def broadcast(self, identities: list[bytes], message: Message) -> None:
        """The same message to many agents, encoded once (heartbeats to a thousand)."""
        data = encode(message)
        for identity in identities:
            self._send_encoded(identity, data, message)

    def quiet(self, identities: list[bytes], for_at_least: float) -> list[bytes]:
        """Those of `identities` sent nothing in the last `for_at_least` seconds."""
        since = time.monotonic() - for_at_least
        sent_at = self.sent_at.get
        return [i for i in identities if sent_at(i, 0.0) <= since]

    def _send_now(self, identity: bytes, message: Message) -> None:
        self._send_encoded(identity, encode(message), message)

    def _send_encoded(self, identity: bytes, data: bytes, message: Message) -> None:
        try:
            self.now.send(identity, _MORE_NOBLOCK)  # a ROUTER sends or drops a whole message
            self.now.send(data, _NOBLOCK)
            if len(self.sent_at) > _SENT_AT_LIMIT:  # strangers' identities: forget them all
                self.sent_at.clear()
            self.sent_at[identity] = time.monotonic()
        except zmq.Again:
            self.limited.warn(
                "send",
                "could not send %s to %r (queue full)",
                type(message).__name__,
                identity[:40],
            )

    def close(self) -> None:
        self.socket.close(linger=0)  # the shadow `now` goes with it
