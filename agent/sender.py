"""Sending one request and recording what happened.

Shared by the open and closed models: it measures the send lag (actual send
minus intended start), the latency from the intended start and the service
time from the actual send, classifies the outcome, and keeps the in-flight
count the schedulers use to drop arrivals they cannot start.

The open model's arrivals go through `start`: on the fast engine a request
without a body to keep runs as an `Exchange` (`_Arrival`), recorded from the
connection's parser callback, with no task and no coroutine per request (see
`agent/driven_users.py` for why that matters); otherwise it runs as a task
(`spawn`). `drain` and `cancel_all` cover both kinds.
"""

from __future__ import annotations

import asyncio
import time

from loadctl.agent.engine_fast import Exchange, FastClient
from loadctl.agent.http import (
    HttpClient,
    HttpRequest,
    Reply,
    SendError,
    outcome_of_class,
    outcome_of_status,
)
from loadctl.agent.recorder import Recorder

_DRAIN_POLL = 0.01  # seconds between two looks at the arrivals still in flight


class _Arrival(Exchange):
    """One open-model request in flight on the fast engine (see `Sender.start`)."""

    __slots__ = ("intended", "name", "phase", "sender", "sent")

    def __init__(self, sender: Sender, phase: str, name: str, intended: float) -> None:
        super().__init__()
        self.sender = sender
        self.phase = phase
        self.name = name
        self.intended = intended
        self.sent = 0.0

    def replied(self, status: int, nbytes: int, outcome: str = "") -> None:
        end = time.perf_counter()
        sender = self.sender
        arrivals = sender.arrivals
        if self not in arrivals:
            return  # cancelled (and recorded) meanwhile
        arrivals.discard(self)
        sender.in_flight -= 1
        sender.recorder.series(self.phase, self.name).completed(
            outcome or outcome_of_class(status), self.intended, self.sent, end, nbytes
        )

    def failed(self, error: SendError) -> None:
        self.replied(0, 0, error.outcome)

    def drop(self) -> None:
        """Cancel it and record it as cancelled."""
        sender = self.sender
        if self in sender.arrivals:
            sender.arrivals.discard(self)
            self.cancel()
            sender.in_flight -= 1
            sender.recorder.series(self.phase, self.name).completed(
                "cancelled", self.intended, self.sent, time.perf_counter(), 0
            )


class Sender:
    def __init__(self, recorder: Recorder, default_timeout: float) -> None:
        self.recorder = recorder
        self.default_timeout = default_timeout
        self.in_flight = 0
        self.tasks: set[asyncio.Task[Reply | None]] = set()
        self.arrivals: set[_Arrival] = set()  # `start`ed on the fast engine, in flight

    async def send(
        self,
        client: HttpClient,
        phase: str,
        name: str,
        request: HttpRequest,
        intended: float,
        timeout: float | None = None,
    ) -> Reply | None:
        self.in_flight += 1
        sent = time.perf_counter()
        reply: Reply | None = None
        nbytes = 0
        try:
            reply = await client.send(request, timeout or self.default_timeout)
            outcome = outcome_of_status(reply.status)
            nbytes = reply.bytes_in
        except SendError as error:
            outcome = error.outcome
        except asyncio.CancelledError:
            self.in_flight -= 1
            self.recorder.series(phase, name).completed(
                "cancelled", intended, sent, time.perf_counter(), 0
            )
            raise
        except Exception:
            outcome = "error"
        done = time.perf_counter()
        self.in_flight -= 1
        # Look the buffer up now, not before the send: the interval may have been cut.
        self.recorder.series(phase, name).completed(outcome, intended, sent, done, nbytes)
        return reply

    def spawn(
        self,
        client: HttpClient,
        phase: str,
        name: str,
        request: HttpRequest,
        intended: float,
        timeout: float | None = None,
    ) -> asyncio.Task[Reply | None]:
        """Send in its own task: a stop can then let it finish instead of cutting it off."""
        task = asyncio.get_running_loop().create_task(
            self.send(client, phase, name, request, intended, timeout)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def start(
        self,
        client: HttpClient,
        phase: str,
        name: str,
        request: HttpRequest,
        intended: float,
        timeout: float | None = None,
    ) -> None:
        """Send and record, without waiting: as `spawn`, without a task where it can."""
        if type(client) is not FastClient or request.want_body:
            self.spawn(client, phase, name, request, intended, timeout)
            return
        arrival = _Arrival(self, phase, name, intended)
        self.arrivals.add(arrival)
        self.in_flight += 1
        arrival.sent = time.perf_counter()
        try:
            prepared = client.prepare(request)
        except SendError as error:
            arrival.failed(error)
            return
        client.send_soon(prepared, timeout or self.default_timeout, arrival)

    async def drain(self, timeout: float) -> int:
        """Wait for in-flight requests; cancel what is left after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        left = 0
        pending = set(self.tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
            left = len(still)
        while self.arrivals and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL)
        left += len(self.arrivals)
        for arrival in list(self.arrivals):
            arrival.drop()
        return left

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for arrival in list(self.arrivals):
            arrival.drop()
