"""Applying a scenario's fault windows on the run's clock, and always undoing them.

    timeline = ChaosTimeline(chaos_of(scenario.source, scenario.duration), run.start_at)
    timeline.start()
    try:
        ...  # the run
    finally:
        await timeline.close()  # every fault it added is gone, whatever happened

Each window gets its own task: sleep until start_at + at (wall clock, the
coordinator's `time.time()`, the clock `Plan.start_at` is on), apply the
fault through the proxy's Toxiproxy API (add the toxic, or disable the proxy
for `down`), sleep until its end, remove it. Overlapping windows simply
overlap. Every fault is recorded as *maybe applied* from the moment its
request is sent — a request cut short by a cancel or a timeout may still have
reached the proxy — and `close()` removes every fault still recorded so
(removing a toxic that is not there is not an error; an outage is undone by
enabling the proxy). A fault the proxy refused outright (4xx: no such proxy,
a toxic of that name exists) was not added, and is not removed: it is not
ours.

`close()` cancels the windows still waiting, then removes what is left; if
the caller is cancelled meanwhile, the removal still completes (it runs
shielded) before the cancel goes on. Each API call is bounded by the
client's timeout, so `close()` ends.

`records` keeps, per window, when it was applied and removed (wall clock)
and any error, for the report's per-fault impact and recovery figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from loadctl.chaos.client import ToxiproxyClient, ToxiproxyError
from loadctl.protocol.chaos import FaultWindow

log = logging.getLogger("loadctl.coordinator.chaos")

API_TIMEOUT: Final = 5.0
_MAX_SLEEP: Final = 1.0  # re-read the wall clock at least this often


@dataclass
class FaultRecord:
    window: FaultWindow
    applied_at: float | None = None  # wall clock, when the API confirmed it
    removed_at: float | None = None
    error: str | None = None  # the last problem applying or removing it

    @property
    def active(self) -> bool:
        return self.applied_at is not None and self.removed_at is None


EventHook = Callable[[str, FaultRecord], None]  # ("applied" | "removed" | "error", record)


class ChaosTimeline:
    def __init__(
        self,
        windows: Sequence[FaultWindow],
        start_at: float,
        *,
        clock: Callable[[], float] = time.time,
        on_event: EventHook | None = None,
        api_timeout: float = API_TIMEOUT,
    ) -> None:
        self.start_at = start_at
        self.records = [FaultRecord(w) for w in windows]
        self._clock = clock
        self._on_event = on_event
        self._api_timeout = api_timeout
        self._clients: dict[str, ToxiproxyClient] = {}
        self._maybe_applied: list[FaultRecord] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None

    # -- running --

    def start(self) -> None:
        """Schedule every window (call from the running loop)."""
        if self._tasks or self._closing is not None:
            raise RuntimeError("a ChaosTimeline starts once")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._window(r)) for r in self.records]

    async def wait(self) -> None:
        """Until every window has been applied and removed (or failed)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def preflight(self) -> list[str]:
        """Problems found before the run: an API that does not answer, or a
        proxy it does not know. Empty when all is well."""
        problems = []
        for api in sorted({r.window.api for r in self.records}):
            try:
                proxies = await self._client(api).proxies()
            except ToxiproxyError as exc:
                problems.append(f"chaos API {api}: {exc.message}")
                continue
            for name in sorted({r.window.proxy for r in self.records if r.window.api == api}):
                if name not in proxies:
                    known = ", ".join(sorted(proxies)) or "none"
                    problems.append(f"chaos API {api} has no proxy '{name}' (it has: {known})")
        return problems

    def result_records(self, start_at: float) -> list[dict[str, Any]]:
        """Each fault window as the run's result records it (times in run seconds)."""

        def run_seconds(t: float | None) -> float | None:
            return None if t is None else t - start_at

        return [
            {
                "label": r.window.label,
                "proxy": r.window.proxy,
                "at": r.window.at,
                "duration": r.window.duration,
                "toxic": "down" if r.window.toxic is None else r.window.toxic.type,
                "applied_at": run_seconds(r.applied_at),
                "removed_at": run_seconds(r.removed_at),
                "error": r.error,
            }
            for r in self.records
        ]

    async def __aenter__(self) -> ChaosTimeline:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def active(self) -> list[FaultRecord]:
        return [r for r in self.records if r.active]

    def _client(self, api: str) -> ToxiproxyClient:
        client = self._clients.get(api)
        if client is None:
            client = self._clients[api] = ToxiproxyClient(api, timeout=self._api_timeout)
        return client

    def _event(self, kind: str, record: FaultRecord) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, record)
            except Exception:
                log.exception("chaos: the event hook failed")

    async def _sleep_until(self, deadline: float) -> None:
        while (delay := deadline - self._clock()) > 0:
            await asyncio.sleep(min(delay, _MAX_SLEEP))

    async def _window(self, record: FaultRecord) -> None:
        w = record.window
        await self._sleep_until(self.start_at + w.at)
        if not await self._apply(record):
            return
        await self._sleep_until(self.start_at + w.end)
        await self._remove(record)

    async def _apply(self, record: FaultRecord) -> bool:
        w = record.window
        client = self._client(w.api)
        self._maybe_applied.append(record)
        try:
            if w.toxic is None:
                await client.set_enabled(w.proxy, False)
            else:
                t = w.toxic
                await client.add_toxic(
                    w.proxy,
                    t.type,
                    stream=t.stream,
                    toxicity=t.toxicity,
                    attributes=t.attributes,
                    name=t.name,
                )
        except ToxiproxyError as exc:
            if exc.status:  # refused: nothing was added
                self._maybe_applied.remove(record)
            record.error = f"could not apply {w.label}: {exc}"
            log.warning("chaos: %s", record.error)
            self._event("error", record)
            return False
        record.applied_at = self._clock()
        log.info("chaos: applied %s", w.label)
        self._event("applied", record)
        return True

    async def _remove(self, record: FaultRecord) -> bool:
        w = record.window
        client = self._client(w.api)
        try:
            if w.toxic is None:
                await client.set_enabled(w.proxy, True)
            else:
                await client.remove_toxic(w.proxy, w.toxic.name, missing_ok=True)
        except ToxiproxyError as exc:
            if exc.status == 404 and w.toxic is None:  # the proxy itself is gone
                pass
            else:
                record.error = f"could not remove {w.label}: {exc}"
                log.warning("chaos: %s", record.error)
                self._event("error", record)
                return False
        if record in self._maybe_applied:
            self._maybe_applied.remove(record)
        if record.applied_at is not None:
            record.removed_at = self._clock()
            log.info("chaos: removed %s", w.label)
            self._event("removed", record)
        return True

    # -- the end --

    async def close(self) -> None:
        """Cancel what has not started, remove every fault that may be in place,
        close the API clients. Safe to call more than once, and when cancelled."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        cancelled = False
        while not self._closing.done():
            try:
                await asyncio.shield(self._closing)
            except asyncio.CancelledError:
                cancelled = True  # finish removing the faults first
        if cancelled:
            raise asyncio.CancelledError
        self._closing.result()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            for record in list(self._maybe_applied):
                if not await self._remove(record):
                    await asyncio.sleep(0.2)
                    await self._remove(record)  # once more: a blip of the API
        finally:
            for client in self._clients.values():
                await client.close()
            self._clients.clear()
        left = [r.window.label for r in self._maybe_applied]
        if left:
            log.error("chaos: could not remove %s: remove them by hand", ", ".join(left))


async def preflight(windows: Sequence[FaultWindow]) -> str | None:
    """Before a run: one line naming every fault proxy that does not answer (and how
    to start one), or None when there is no chaos or all is well."""
    if not windows:
        return None
    problems = await ChaosTimeline(windows, 0.0).preflight()
    if not problems:
        return None
    return (
        "; ".join(problems) + ": start it with `loadctl chaos proxy --listen ... "
        "--upstream ...` or fix the scenario's chaos section"
    )
