"""The compiled lane's objects (agent/_lane.c) driven byte by byte, without sockets.

tests/test_lane.py runs the lane in the agent against a server; here the same C
code is fed replies directly, so that each decision it makes is checked exactly:
what it writes next and when it is due, what it records per series, when it hands
a reply back to Python (`_lane_complete`) or leaves the bytes to llhttp
(`_data_received`), what it tells the user when Python takes over
(`lane_detached`), that it refuses what it cannot run, and that it keeps no memory
or references once a reply is done.
"""

from __future__ import annotations

import collections
import math
import time
import tracemalloc
from array import array
from typing import Any

import pytest
from table_kernel_required import lane_or_skip

from loadctl.agent import fast_conn

PLAIN = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
BUSY = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"


@pytest.fixture(autouse=True)
def _lane_built() -> None:
    lane_or_skip()


class Driver:
    """The user: what the lane tells it when Python takes a request back."""

    def __init__(self) -> None:
        self.detached: list[tuple[float, float, int]] = []

    def lane_detached(self, sent: float, deadline: float, advanced: int) -> None:
        self.detached.append((sent, deadline, advanced))


def core_type() -> type:
    assert fast_conn.LANE is not None

    class Core(fast_conn.LANE.ConnCore):  # type: ignore[misc,name-defined]
        """A connection whose Python path only notes what reached it."""

        def __init__(self) -> None:
            self.python: list[bytes] = []
            self.handed_back: list[tuple[int, int, bool]] = []
            self.written: list[bytes] = []
            self.writer = self.written.append

        def _data_received(self, data: bytes) -> None:
            self.python.append(data)

        def _lane_complete(self, status: int) -> None:
            self.handed_back.append((status, self.nbytes, self.keep))

    return Core


def setup(
    cycle: list[tuple[bytes, float, str]] | None = None,
    checks: dict[str, tuple[bytes, int, float]] | None = None,
) -> tuple[Any, Any, Driver, collections.deque[Any]]:
    """A connection with a lane whose request (the cycle's first) is in flight."""
    assert fast_conn.LANE is not None
    driver = Driver()
    waiters: collections.deque[Any] = collections.deque()
    lane = fast_conn.LANE.Lane(
        driver, cycle or [(b"GET /a", 1.0, "a"), (b"GET /b", 2.0, "b")], waiters, "p", checks
    )
    lane.sent = time.perf_counter()
    lane.until = math.inf
    lane.enabled = True
    conn = core_type()()
    conn.lane = lane
    return conn, lane, driver, waiters


def accepting(*statuses: int) -> bytes:
    """A series' accepted statuses as the lane takes them: a byte per status 0-599."""
    return bytes(status in statuses for status in range(600))


def latencies(raw: bytes) -> list[float]:
    values = array("d")
    values.frombytes(raw)
    return list(values)


def test_a_reply_is_recorded_and_the_next_request_of_the_cycle_written() -> None:
    conn, lane, driver, _ = setup()
    sent = lane.sent
    conn.data_received(PLAIN)
    now = time.perf_counter()
    assert conn.written == [b"GET /b"] and lane.pos == 1 and lane.sends == 1
    assert sent < lane.sent <= now
    assert conn.deadline == pytest.approx(lane.sent + 2.0)  # /b's timeout
    assert conn.served == 1 and conn.nbytes == 0 and conn.python == []
    conn.data_received(BUSY)
    assert conn.written == [b"GET /b", b"GET /a"] and lane.pos == 0
    taken = {name: rest for name, *rest in lane.take()}
    # a: replied (200, its bytes) and sent again; b: sent once, replied 503
    assert taken["a"][:4] == [1, (1, 0, 0, 0), len(PLAIN), 0]  # no checks: none passed
    assert taken["b"][:4] == [1, (0, 0, 0, 1), len(BUSY), 0]
    assert all(0 <= s < 1 for s in latencies(taken["a"][4]) + latencies(taken["b"][4]))
    assert lane.take() == []  # it started over
    assert driver.detached == [] and conn.lane is lane


def test_a_body_over_several_reads_completes_once() -> None:
    conn, lane, _, _ = setup()
    for part in (PLAIN[:40], PLAIN[40:42], PLAIN[42:]):
        conn.data_received(part)
    assert conn.written == [b"GET /b"] and lane.sends == 1
    assert conn.nbytes == 0
    taken = {name: rest for name, *rest in lane.take()}
    # a: its reply, over three reads; b: sent by the lane, no reply yet
    assert taken["a"][:3] == [0, (1, 0, 0, 0), len(PLAIN)] and len(latencies(taken["a"][4])) == 1
    assert taken["b"] == [1, (0, 0, 0, 0), 0, 0, b""]


def test_bytes_past_the_reply_hand_it_back_and_close() -> None:
    conn, lane, driver, _ = setup()
    conn.data_received(PLAIN + b"HTTP/1.1 200")
    assert conn.written == [] and conn.lane is None
    assert conn.handed_back == [(200, len(PLAIN) + 12, False)]
    assert driver.detached == [(lane.sent, conn.deadline, 0)]


def test_a_head_outside_the_subset_goes_to_llhttp_untouched() -> None:
    conn, lane, driver, _ = setup()
    conn.data_received(PLAIN)  # the lane moves on by one
    conn.data_received(CHUNKED)
    assert conn.python == [CHUNKED] and conn.lane is None and conn.nbytes == 0
    assert driver.detached == [(lane.sent, conn.deadline, 1)]
    conn.data_received(b"more")  # no lane: all of it goes the Python way
    assert conn.python == [CHUNKED, b"more"]


@pytest.mark.parametrize("why", ["disabled", "past until", "waiters", "close"])
def test_the_lane_hands_the_reply_back_when_it_may_not_go_on(why: str) -> None:
    conn, lane, driver, waiters = setup()
    reply = PLAIN
    if why == "disabled":
        lane.enabled = False
    elif why == "past until":
        lane.until = time.perf_counter()
    elif why == "waiters":
        waiters.append(object())
    else:
        reply = PLAIN.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n")
    conn.data_received(reply)
    assert conn.written == [] and conn.lane is None and lane.sends == 0
    assert conn.handed_back == [(200, len(reply), why != "close")]
    assert driver.detached == [(lane.sent, conn.deadline, 0)]
    assert lane.take() == []  # the user records the reply it was handed


def test_a_status_its_checks_accept_passes_them_and_the_lane_goes_on() -> None:
    """`a` has two status checks that a 200 passes: each 200 counts both as passed;
    `b` has none, and any status goes on."""
    conn, lane, driver, _ = setup(checks={"a": (accepting(200, 201), 2, math.inf)})
    conn.data_received(PLAIN)  # a's reply
    conn.data_received(BUSY)  # b's
    conn.data_received(PLAIN)  # a's again
    assert conn.written == [b"GET /b", b"GET /a", b"GET /b"] and conn.handed_back == []
    taken = {name: rest for name, *rest in lane.take()}
    assert taken["a"][:4] == [1, (2, 0, 0, 0), 2 * len(PLAIN), 4]
    assert taken["b"][:4] == [2, (0, 0, 0, 1), len(BUSY), 0]
    assert driver.detached == []


def test_a_status_its_checks_refuse_is_handed_back_for_the_user_to_judge() -> None:
    """A 503 where the checks want a 200: the lane neither records nor counts it; the
    user gets it (`_lane_complete`), as it gets every reply the lane does not take."""
    conn, lane, driver, _ = setup(checks={"a": (accepting(200), 1, math.inf)})
    conn.data_received(BUSY)
    assert conn.written == [] and conn.lane is None and lane.sends == 0
    assert conn.handed_back == [(503, len(BUSY), True)]
    assert driver.detached == [(lane.sent, conn.deadline, 0)]
    assert lane.take() == []


def test_a_reply_slower_than_its_latency_check_is_handed_back() -> None:
    """`latency_under`: a reply within the time passes; one past it goes to the user."""
    conn, lane, driver, _ = setup(checks={"a": (accepting(*range(200, 600)), 1, 0.05)})
    conn.data_received(PLAIN)  # a, at once
    conn.data_received(BUSY)  # b: no checks
    lane.sent = time.perf_counter() - 0.06  # a's next reply comes 60 ms after its send
    conn.data_received(PLAIN)
    assert conn.written == [b"GET /b", b"GET /a"] and lane.sends == 2
    assert conn.handed_back == [(200, len(PLAIN), True)] and conn.lane is None
    taken = {name: rest for name, *rest in lane.take()}
    assert taken["a"][:4] == [1, (1, 0, 0, 0), len(PLAIN), 1]
    assert driver.detached == [(lane.sent, conn.deadline, 2)]


def test_detach_lane_tells_the_user_and_is_idempotent() -> None:
    conn, lane, driver, _ = setup()
    conn.data_received(PLAIN)
    conn.data_received(PLAIN[:40])  # the next reply's head and part of its body
    conn.detach_lane()
    conn.detach_lane()
    assert conn.lane is None and driver.detached == [(lane.sent, conn.deadline, 1)]
    conn.data_received(PLAIN[40:])
    assert conn.python == [PLAIN[40:]]  # the rest goes the Python way (which fails it)


def test_what_it_refuses() -> None:
    assert fast_conn.LANE is not None
    Lane = fast_conn.LANE.Lane
    with pytest.raises(ValueError, match="at least one"):
        Lane(Driver(), [], collections.deque(), "p")
    with pytest.raises(TypeError):
        Lane(Driver(), [(b"GET /", "soon", "a")], collections.deque(), "p")
    with pytest.raises(TypeError):
        Lane(Driver(), [("GET /", 1.0, "a")], collections.deque(), "p")  # str, not bytes
    conn, lane, _, _ = setup()
    with pytest.raises(ValueError, match="outside the cycle"):
        lane.pos = 2
    with pytest.raises(TypeError, match="initialised Lane"):
        conn.lane = Lane.__new__(Lane)
    with pytest.raises(TypeError, match="initialised Lane"):
        conn.lane = "lane"
    with pytest.raises(TypeError, match="once"):
        lane.__init__(Driver(), [(b"GET /", 1.0, "a")], collections.deque(), "p")
    cycle = [(b"GET /", 1.0, "a")]
    with pytest.raises(TypeError, match="dict"):
        Lane(Driver(), cycle, collections.deque(), "p", [("a", (accepting(200), 1, math.inf))])
    with pytest.raises(ValueError, match="600 bytes"):
        Lane(Driver(), cycle, collections.deque(), "p", {"a": (accepting(200)[:599], 1, math.inf)})
    with pytest.raises(ValueError, match="600 bytes"):
        Lane(Driver(), cycle, collections.deque(), "p", {"a": (accepting(200), 0, math.inf)})
    with pytest.raises(TypeError):
        Lane(Driver(), cycle, collections.deque(), "p", {"a": "200"})
    with pytest.raises(ValueError, match="seconds > 0"):
        Lane(Driver(), cycle, collections.deque(), "p", {"a": (accepting(200), 1, 0.0)})
    with pytest.raises(TypeError):
        Lane(Driver(), cycle, collections.deque(), "p", {"a": (accepting(200), 1)})


def test_a_writer_that_raises_propagates() -> None:
    conn, _, _, _ = setup()

    def broken(data: bytes) -> None:
        raise ConnectionError("gone")

    conn.writer = broken
    with pytest.raises(ConnectionError, match="gone"):
        conn.data_received(PLAIN)


def test_it_keeps_no_memory_from_reply_to_reply() -> None:
    """20,000 replies, taken every 1,000, and lanes made, attached and dropped: the
    traced memory must not grow with the count (it grows by ~190 KB if a taken
    record's bytes keep an extra reference)."""
    conn, lane, driver, _ = setup()

    def round_trip(n: int) -> None:
        for i in range(n):
            conn.data_received(PLAIN if i % 3 else BUSY)
            if i % 1000 == 999:
                lane.take()
                conn.written.clear()
        other, other_lane, _, _ = setup(checks={"a": (accepting(200), 1, math.inf)})  # freed too
        other.data_received(PLAIN)
        other.detach_lane()
        other_lane.take()

    round_trip(2000)  # warm: the record's array reaches its size
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            round_trip(2000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert lane.sends == 22_000 and driver.detached == []  # a reply, a send
