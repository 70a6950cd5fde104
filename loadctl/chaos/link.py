"""One direction of one proxied connection: bytes from a source transport to a
destination transport, through the toxics of that direction.

Design. The no-toxic case is the hot path and must cost next to nothing: a
link with no active toxic, nothing queued and no pump running is `direct`,
and the source side's protocol writes each read straight into the
destination transport from `data_received` (no task, no copy, no timestamp,
no call into the link). Flow control is the transports' own: when the
destination's buffer passes its high-water mark (`pause_writing`), reading
from the source pauses until it drains (`resume_writing`).

With toxics, each read becomes a timestamped `Chunk` in a queue, and one
pump task per link feeds chunks in order through a chain of stages (one per
toxic whose toxicity roll said yes). The chain is continuation-passing: each
stage gets the chunk and an `emit` that runs the rest of the chain, so a
stage may hold a chunk (latency), split it (slicer, bandwidth), drop it
(timeout) or end the connection (reset_peer, limit_data). Chunks go one at a
time, in order; latency waits until arrival + delay, so back-to-back chunks
are not delayed cumulatively. The queue is bounded: past `QUEUE_LIMIT`
bytes, reading from the source pauses.

Toxics change under live connections (added, updated, removed). A stage's
sleeps are interruptible: when its toxic goes away or changes, a held chunk
moves on at once, and chunks still queued take the new chain. When the chain
is empty and the queue drains, the link returns to the hot path. Either way
bytes keep their order: a read goes out directly only while nothing is queued
or held, and everything goes into the one destination transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from loadctl.chaos.toxics import BEHAVIOURS, Chunk, Emit, EmitEof
from loadctl.protocol.chaos import ToxicSpec

if TYPE_CHECKING:
    from loadctl.chaos.proxy import Connection

log = logging.getLogger("loadctl.chaos")

QUEUE_LIMIT: Final = 4 * 1024 * 1024  # bytes held by toxics before reading pauses


class Stage:
    """One toxic on one link: its toxicity roll, its per-connection state and
    its interruptible sleeps and timers."""

    __slots__ = (
        "_sleepers",
        "_timers",
        "behaviour",
        "detached",
        "enabled",
        "fate",
        "link",
        "spec",
        "state",
    )

    def __init__(self, spec: ToxicSpec, link: Link, state: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.link = link
        self.behaviour = BEHAVIOURS[spec.type]
        self.state: dict[str, Any] = state if state is not None else {}
        self.enabled = random.random() < spec.toxicity
        self.detached = False
        self.fate: str | None = None  # the loss toxic's draw
        self._sleepers: list[asyncio.Future[bool]] = []
        self._timers: list[asyncio.TimerHandle] = []

    def attach(self) -> None:
        if self.enabled:
            self.behaviour.on_attach(self)

    def detach(self) -> None:
        """The toxic left this link (removed, updated, or the connection closed)."""
        self.detached = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for fut in self._sleepers:
            if not fut.done():
                fut.set_result(False)
        self._sleepers.clear()

    def now(self) -> float:
        return self.link.loop.time()

    async def sleep(self, seconds: float) -> bool:
        """Sleep; False if the toxic was detached meanwhile (let data go at once)."""
        if self.detached:
            return False
        if seconds <= 0:
            return True
        fut: asyncio.Future[bool] = self.link.loop.create_future()
        timer = self.link.loop.call_later(seconds, _resolve, fut)
        self._sleepers.append(fut)
        try:
            return await fut
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._sleepers.remove(fut)

    def call_later(self, seconds: float, callback: Any) -> None:
        self._timers.append(self.link.loop.call_later(seconds, callback))

    def close_connection(self) -> None:
        self.link.conn.close()

    def reset_connection(self) -> None:
        self.link.conn.reset()

    def bind(self, emit: Emit, emit_eof: EmitEof) -> tuple[Emit, EmitEof]:
        behaviour = self.behaviour

        async def data(chunk: Chunk) -> None:
            if self.detached:
                await emit(chunk)
            else:
                await behaviour.on_data(self, chunk, emit)

        async def eof() -> None:
            if self.detached:
                await emit_eof()
            else:
                await behaviour.on_eof(self, emit_eof)

        return data, eof


def _resolve(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(True)


class Link:
    """Source → destination for one stream ("upstream": client → server,
    "downstream": server → client) of one connection."""

    def __init__(
        self,
        conn: Connection,
        stream: str,
        src: asyncio.Transport,
        dst: asyncio.Transport,
        toxics: list[ToxicSpec],
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.src = src
        self.dst = dst
        self.loop = asyncio.get_running_loop()
        self.stages: list[Stage] = []
        self.queue: deque[Chunk | None] = deque()  # None: end of stream
        self.queued = 0
        self.pump: asyncio.Task[None] | None = None
        self.dst_paused = False
        self.finished = False  # end of stream delivered, or the destination is gone
        # No active toxic, nothing queued, no pump, not finished: reads may be
        # written straight into `dst` (see _Side.data_received). Kept by _refresh.
        self.direct = False
        self._drained: asyncio.Future[None] | None = None
        self._pause_reasons: set[str] = set()
        self._toxic = False
        self._head: Emit = self._sink
        self._head_eof: EmitEof = self._sink_eof
        for spec in toxics:
            if spec.stream == stream:
                stage = Stage(spec, self)
                stage.attach()
                self.stages.append(stage)
        self._build()

    # -- toxics come and go --

    def add(self, spec: ToxicSpec) -> None:
        stage = Stage(spec, self)
        stage.attach()
        self.stages.append(stage)
        self._build()

    def remove(self, name: str) -> None:
        for stage in self.stages:
            if stage.spec.name == name:
                stage.detach()
                self.stages.remove(stage)
                self._build()
                return

    def replace(self, spec: ToxicSpec) -> None:
        for i, old in enumerate(self.stages):
            if old.spec.name == spec.name:
                old.detach()
                stage = Stage(spec, self, old.state)
                stage.attach()
                self.stages[i] = stage
                self._build()
                return

    def clear(self) -> None:
        for stage in self.stages:
            stage.detach()
        self.stages.clear()
        self._build()

    def _build(self) -> None:
        emit: Emit = self._sink
        emit_eof: EmitEof = self._sink_eof
        active = [s for s in self.stages if s.enabled]
        for stage in reversed(active):
            emit, emit_eof = stage.bind(emit, emit_eof)
        self._head, self._head_eof = emit, emit_eof
        self._toxic = bool(active)
        self._refresh()

    def _refresh(self) -> None:
        self.direct = not (self.finished or self._toxic or self.pump is not None or self.queue)

    # -- bytes in (from the source side's protocol) --

    def feed(self, data: bytes) -> None:
        if self.direct:
            if not self.dst.is_closing():
                self.dst.write(data)
            return
        if self.finished:
            return
        self.queue.append(Chunk(data, self.loop.time()))
        self.queued += len(data)
        if self.queued > QUEUE_LIMIT:
            self._pause("queue")
        self._kick()

    def feed_eof(self) -> None:
        if self.direct:
            self._deliver_eof()
            return
        if self.finished:
            return
        self.queue.append(None)
        self._kick()

    def _kick(self) -> None:
        if self.pump is None:
            self.pump = self.loop.create_task(self._run())
            self.direct = False

    async def _run(self) -> None:
        try:
            while self.queue and not self.finished:
                chunk = self.queue.popleft()
                if chunk is None:
                    await self._head_eof()
                    break
                self.queued -= len(chunk.data)
                if self.queued <= QUEUE_LIMIT // 2:
                    self._resume("queue")
                await self._head(chunk)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in a toxic must not take the proxy down
            log.exception("chaos proxy: a %s link failed", self.stream)
            self.conn.close()
        finally:
            self.pump = None
            self._refresh()

    # -- bytes out (the end of the chain) --

    async def _sink(self, chunk: Chunk) -> None:
        if self.finished or self.dst.is_closing():
            return
        self.dst.write(chunk.data)
        if self.dst_paused:
            self._drained = self.loop.create_future()
            await self._drained

    async def _sink_eof(self) -> None:
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.direct = False
        dst = self.dst
        if not dst.is_closing():
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
        self.conn.link_finished()

    # -- flow control --

    def dst_pause(self, paused: bool) -> None:
        """The destination's write buffer passed its high (True) or low (False) mark."""
        self.dst_paused = paused
        if paused:
            self._pause("dst")
        else:
            self._resume("dst")
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def _pause(self, reason: str) -> None:
        if not self._pause_reasons and not self.src.is_closing():
            self.src.pause_reading()
        self._pause_reasons.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._pause_reasons:
            self._pause_reasons.discard(reason)
            self.resume_source()

    def resume_source(self) -> None:
        """Read from the source again, unless this link holds it paused."""
        if not self._pause_reasons and not self.src.is_closing():
            self.src.resume_reading()

    # -- the end --

    def drop(self) -> None:
        """The destination is gone (or the connection closes): nothing more goes out."""
        self.finished = True
        self.direct = False
        self.queue.clear()
        self.queued = 0
        for stage in self.stages:
            stage.detach()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        pump = self.pump
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
