"""What each toxic does to the bytes of one direction of one connection.

Toxiproxy's vocabulary and semantics (attributes in its units):

    latency     {latency ms, jitter ms}  each chunk is delivered `latency` ± `jitter`
                                         after it arrived (chunks keep their order)
    bandwidth   {rate KB/s}              at most rate × 1000 bytes per second
    slow_close  {delay ms}               the end of the stream (FIN) is held for `delay`
    timeout     {timeout ms}             a black hole: data is dropped; the connection
                                         is closed after `timeout`, never if 0
    reset_peer  {timeout ms}             at the first data (or end of stream), wait
                                         `timeout`, then reset both sides (TCP RST)
    slicer      {average_size bytes,     each chunk is cut into slices of average_size
                 size_variation bytes,   ± size_variation bytes, `delay` µs apart
                 delay µs}
    limit_data  {bytes}                  after `bytes` bytes, the connection is closed

`toxicity` is the probability that a toxic acts on a given connection: it is
drawn once per connection when the toxic meets it (when the connection opens,
or when the toxic is added or updated), as Toxiproxy does.

`loss` {percent, mode} is loadctl's, not Toxiproxy's. Packet loss does not
exist above TCP: the kernel retransmits lost segments, so what an application
sees of a lossy network is some connections that stall and some that break.
`loss` approximates exactly that, per connection: when it meets a connection
it picks it with probability percent / 100 (times `toxicity`), and a picked
connection is either black-holed (mode `stall`: its data in this direction is
dropped from then on and the connection is left open until a side closes
it, so the client waits for its own timeout) or reset (mode `reset`: at its next data in this
direction both sides get a TCP RST). Mode `mixed` (the default) makes half of
the picked connections stall and half reset. It does not model
retransmission delays on connections that survive: those see no change.

A toxic that is removed or updated while it holds data (a latency toxic
sleeping, a bandwidth toxic pacing) lets that data go at once: nothing is
dropped, as in Toxiproxy.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from loadctl.chaos.errors import (
    INVALID_STREAM,
    INVALID_TYPE,
    ApiError,
    bad_body,
)
from loadctl.protocol.chaos import STREAMS, TOXICS, ToxicSpec, check_attributes

if TYPE_CHECKING:
    from loadctl.chaos.link import Stage


class Chunk:
    """Bytes read from one side, with the loop time they arrived."""

    __slots__ = ("data", "t")

    def __init__(self, data: bytes, t: float) -> None:
        self.data = data
        self.t = t


Emit = Callable[[Chunk], Awaitable[None]]
EmitEof = Callable[[], Awaitable[None]]


class Toxic:
    """A toxic's behaviour; settings are in `stage.spec.attributes`, per-connection
    state in `stage.state` (kept across updates of the toxic)."""

    def on_attach(self, stage: Stage) -> None:
        """The toxic meets a connection (and its toxicity roll said yes)."""

    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def on_eof(self, stage: Stage, emit_eof: EmitEof) -> None:
        await emit_eof()


def _ms(stage: Stage, key: str) -> float:
    return float(stage.spec.attributes[key]) / 1000.0


class Latency(Toxic):
    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        delay = _ms(stage, "latency")
        jitter = _ms(stage, "jitter")
        if jitter > 0:
            delay += random.uniform(-jitter, jitter)
        wait = chunk.t + delay - stage.now()
        if wait > 0:
            await stage.sleep(wait)
        await emit(chunk)


class Bandwidth(Toxic):
    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        rate = float(stage.spec.attributes["rate"]) * 1000.0  # bytes per second
        if rate <= 0:
            await emit(chunk)
            return
        piece = max(1, int(rate / 10))  # a tenth of a second's worth at most
        data = memoryview(chunk.data)
        due = max(float(stage.state.get("due", 0.0)), stage.now())
        while data:
            part, data = data[:piece], data[piece:]
            due += len(part) / rate
            stage.state["due"] = due
            wait = due - stage.now()
            if wait > 0 and not await stage.sleep(wait):
                await emit(Chunk(bytes(part) + bytes(data), chunk.t))
                return
            await emit(Chunk(bytes(part), chunk.t))


class SlowClose(Toxic):
    async def on_eof(self, stage: Stage, emit_eof: EmitEof) -> None:
        await stage.sleep(_ms(stage, "delay"))
        await emit_eof()


class Timeout(Toxic):
    def on_attach(self, stage: Stage) -> None:
        timeout = _ms(stage, "timeout")
        if timeout > 0:
            stage.call_later(timeout, stage.close_connection)

    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        return  # dropped on the floor


class ResetPeer(Toxic):
    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        if await stage.sleep(_ms(stage, "timeout")):
            stage.reset_connection()
        else:
            await emit(chunk)

    async def on_eof(self, stage: Stage, emit_eof: EmitEof) -> None:
        if await stage.sleep(_ms(stage, "timeout")):
            stage.reset_connection()
        else:
            await emit_eof()


class Slicer(Toxic):
    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        attrs = stage.spec.attributes
        average, variation = int(attrs["average_size"]), int(attrs["size_variation"])
        delay = float(attrs["delay"]) / 1e6
        data = chunk.data
        if average <= 0 or len(data) <= average:
            await emit(chunk)
            return
        variation = min(variation, average - 1)
        pos = 0
        while pos < len(data):
            size = average + (random.randint(-variation, variation) if variation > 0 else 0)
            await emit(Chunk(data[pos : pos + size], chunk.t))
            pos += size
            if delay > 0 and pos < len(data) and not await stage.sleep(delay):
                await emit(Chunk(data[pos:], chunk.t))
                return


class LimitData(Toxic):
    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        limit = int(stage.spec.attributes["bytes"])
        sent = int(stage.state.get("sent", 0))
        part = chunk.data[: max(0, limit - sent)]
        if part:
            stage.state["sent"] = sent + len(part)
            await emit(Chunk(part, chunk.t) if len(part) < len(chunk.data) else chunk)
        if sent + len(part) >= limit:
            stage.close_connection()


class Loss(Toxic):
    """See the module docstring: a share of connections stalled or reset."""

    def on_attach(self, stage: Stage) -> None:
        attrs = stage.spec.attributes
        fate = None
        if random.random() * 100.0 < float(attrs["percent"]):
            mode = str(attrs["mode"])
            if mode == "mixed":
                mode = random.choice(("stall", "reset"))
            fate = mode
        stage.fate = fate

    async def on_data(self, stage: Stage, chunk: Chunk, emit: Emit) -> None:
        if stage.fate is None:
            await emit(chunk)
        elif stage.fate == "reset":
            stage.reset_connection()

    async def on_eof(self, stage: Stage, emit_eof: EmitEof) -> None:
        if stage.fate == "reset":
            stage.reset_connection()
        else:  # a stalled connection still closes when a side closes (as timeout does)
            await emit_eof()


BEHAVIOURS: Mapping[str, Toxic] = {
    "latency": Latency(),
    "bandwidth": Bandwidth(),
    "slow_close": SlowClose(),
    "timeout": Timeout(),
    "reset_peer": ResetPeer(),
    "slicer": Slicer(),
    "limit_data": LimitData(),
    "loss": Loss(),
}
assert set(BEHAVIOURS) == set(TOXICS)


# -- the API's JSON ------------------------------------------------------------


def toxic_from_json(body: Any) -> ToxicSpec:
    """A new toxic from a POST /proxies/{proxy}/toxics body, with Toxiproxy's
    defaults (stream downstream, toxicity 1, name `<type>_<stream>`, attributes
    not given are 0) and its error statuses."""
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    stream = body.get("stream") or "downstream"  # absent, null or "": the default
    if not isinstance(stream, str) or stream.lower() not in STREAMS:
        raise ApiError(*INVALID_STREAM)
    stream = stream.lower()
    kind = body.get("type")
    name = body.get("name") or f"{kind}_{stream}"
    if not isinstance(name, str):
        raise bad_body("name must be a string")
    if not isinstance(kind, str) or kind not in TOXICS:
        raise ApiError(*INVALID_TYPE)
    if "/" in name:
        raise bad_body("a toxic name cannot contain '/'")
    toxicity = _toxicity(1.0 if body.get("toxicity") is None else body["toxicity"])
    return ToxicSpec(name, kind, stream, toxicity, _attributes(kind, body.get("attributes"), {}))


def toxic_update_from_json(spec: ToxicSpec, body: Any) -> ToxicSpec:
    """`spec` with the attributes and toxicity a POST/PATCH to the toxic sets;
    attributes not given keep their values (name, type and stream do not change)."""
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    raw = body.get("toxicity")
    toxicity = _toxicity(spec.toxicity if raw is None else raw)
    attrs = _attributes(spec.type, body.get("attributes"), spec.attributes)
    return ToxicSpec(spec.name, spec.type, spec.stream, toxicity, attrs)


def _toxicity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise bad_body(f"toxicity must be a number from 0 to 1, got {value!r}")
    return float(value)


def _attributes(kind: str, raw: Any, base: Mapping[str, Any]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_body("attributes must be a JSON object")
    try:
        return check_attributes(kind, raw, base, strict=False)
    except ValueError as exc:
        raise bad_body(str(exc)) from None
