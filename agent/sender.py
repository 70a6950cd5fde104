"""Sending one request and recording what happened.

Shared by the open and closed models: it measures the send lag (actual send
minus intended start), the latency from the intended start and the service
time from the actual send, classifies the outcome, and keeps the in-flight
count the schedulers use to drop arrivals they cannot start.
"""

from __future__ import annotations

import asyncio
import time

from loadctl.agent.http import HttpClient, HttpRequest, Reply, SendError, outcome_of_status
from loadctl.agent.recorder import Recorder


class Sender:
    def __init__(self, recorder: Recorder, default_timeout: float) -> None:
        self.recorder = recorder
        self.default_timeout = default_timeout
        self.in_flight = 0
        self.tasks: set[asyncio.Task[Reply | None]] = set()

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

    async def drain(self, timeout: float) -> int:
        """Wait for in-flight requests; cancel what is left after `timeout`."""
        pending = set(self.tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
            return len(still)
        return 0

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
