"""This test's ROUTER playing the coordinator for one real agent, over real ZeroMQ.

It answers what every coordinator answers (Hello with Welcome, Ping with Pong, a
snapshot with its Ack) and says something to the agent every half second, so the
agent's dead-man switch stays off; everything else (Ready, what to ask and when)
is the test's: `next` hands it each message the agent sent, answered or not.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from loadctl.protocol.codec import ProtocolError, decode, encode
from loadctl.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Message,
    Ping,
    Pong,
    Snapshot,
    Welcome,
)


class FakeCoordinator:
    def __init__(
        self, ctx: zmq.Context[Any], run_id: str, heartbeat: float = 0.5, deadman: float = 3.0
    ) -> None:
        self.run_id = run_id
        self.welcome = Welcome(run_id, heartbeat, deadman)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.identity = b""
        self.before_welcome: list[Message] = []  # sent ahead of the next Welcome only
        self._beat = 0.0

    def send(self, message: Message) -> None:
        self.router.send_multipart([self.identity, encode(message)])

    def next(self, timeout: float = 0.05) -> tuple[float, Message] | None:
        """The agent's next message (when it came, and what), answered if it is one
        every coordinator answers; None if nothing came within `timeout` s."""
        now = time.monotonic()
        if self.identity and now - self._beat >= 0.5:
            self._beat = now
            self.send(Heartbeat("running", 0.0, 0, 0, time.time()))
        if not self.router.poll(timeout * 1000):
            return None
        self.identity, data = self.router.recv_multipart()
        try:
            message = decode(data)
        except ProtocolError:
            return None
        if isinstance(message, Hello):
            for ahead in self.before_welcome:
                self.send(ahead)
            self.before_welcome = []
            self.send(self.welcome)
        elif isinstance(message, Ping):
            self.send(Pong(message.seq, message.sent, time.time()))
        elif isinstance(message, Snapshot):
            self.send(Ack(self.run_id, (message.seq,)))
        return time.monotonic(), message

    def close(self) -> None:
        self.router.close(0)
