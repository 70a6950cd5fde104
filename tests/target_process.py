"""Run the demo target (`loadctl target`) as a real subprocess for tests.

    with running_target("--latency", "20ms") as target:
        urllib.request.urlopen(target.url + "/health")
        assert target.counts()["total"] == 1
        target.configure(error_rate=0.5)
        target.reset()

The target listens on 127.0.0.1 on a free port (`--port 0`); its URL comes
from the one line it prints on start. On exit it gets SIGTERM, then SIGKILL
after 5 s.

`spawned`, `read_lines` and `Spawned` (stderr_text, stop) serve every server
the tests run as a subprocess: the target here, the chaos proxy in
test_chaos_proxy.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from socketserver import BaseServer
from typing import IO, Any, TypeVar

LISTENING = "loadctl target listening on "
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# Launch through the module rather than the console script, so this works
# whether or not `loadctl target` is registered in the CLI group yet.
TARGET_COMMAND = [
    sys.executable,
    "-c",
    "from loadctl.target import target_command; target_command(prog_name='loadctl target')",
]


class TargetStartError(RuntimeError):
    pass


# -- any server run as a subprocess ----------------------------------------------


class Spawned:
    """What a test keeps of a server process: `proc`, and `_stderr`, the file
    its stderr goes to (set by the dataclasses that use this)."""

    proc: subprocess.Popen[bytes]
    _stderr: IO[bytes] | None

    def stderr_text(self) -> str:
        """What the process wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return bytes(self._stderr.read()).decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM, wait up to 5 s, then SIGKILL; return the exit code."""
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait up to 5 s, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def spawned(command: Sequence[str]) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    """Run `command` (stdin closed, stdout piped, stderr to a temporary file);
    yield (process, stderr file). On exit: SIGTERM, then SIGKILL after 5 s."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            yield proc, stderr
        finally:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def read_lines(proc: subprocess.Popen[bytes], until: str, timeout: float) -> list[str]:
    """stdout lines (stripped) until one starts with `until` ("": the first
    line), or until EOF or `timeout`."""
    assert proc.stdout is not None
    fd, buf, lines = proc.stdout.fileno(), b"", []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(line.decode(errors="replace").strip())
                if lines[-1].startswith(until):
                    return lines
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return lines
            chunk = os.read(fd, 4096)
            if not chunk:
                return lines
            buf += chunk


# -- the target ------------------------------------------------------------------


@dataclass
class TargetProcess(Spawned):
    url: str  # base URL, e.g. http://127.0.0.1:40123 (no trailing slash)
    proc: subprocess.Popen[bytes]
    args: tuple[str, ...] = ()
    _stderr: IO[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON body or text). Never raises on 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, reply = self.request(method, path, body)
        if status != 200:
            raise AssertionError(f"{method} {path} answered {status}: {reply}")
        assert isinstance(reply, dict)
        return reply

    def counts(self) -> dict[str, Any]:
        """GET /_loadctl/counts."""
        return self._control("GET", "/_loadctl/counts")

    def reset(self) -> dict[str, Any]:
        """POST /_loadctl/reset (zero all counts)."""
        return self._control("POST", "/_loadctl/reset", {})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """POST /_loadctl/config; keys: latency, error_rate, stall_seconds, workers,
        service_time, queue_limit. Returns the resulting config."""
        return self._control("POST", "/_loadctl/config", settings)

    def config(self) -> dict[str, Any]:
        """GET /_loadctl/config."""
        return self._control("GET", "/_loadctl/config")


@contextlib.contextmanager
def running_target(*args: str, start_timeout: float = START_TIMEOUT) -> Iterator[TargetProcess]:
    """Start `loadctl target --host 127.0.0.1 --port 0 *args`; yield a TargetProcess."""
    with spawned([*TARGET_COMMAND, "--host", "127.0.0.1", "--port", "0", *args]) as (
        proc,
        stderr,
    ):
        target = TargetProcess(url="", proc=proc, args=args, _stderr=stderr)
        line = next(iter(read_lines(proc, "", start_timeout)), None)  # the first line
        if line is None or not line.startswith(LISTENING):
            target.stop()
            raise TargetStartError(
                f"target {' '.join(args)!r} did not start (exit {proc.returncode}; "
                f"stdout {line!r}; stderr {target.stderr_text()!r})"
            )
        target.url = line[len(LISTENING) :].rstrip("/")
        yield target


ServerT = TypeVar("ServerT", bound=BaseServer)


@contextlib.contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """A small in-test HTTP server (say, one that records what it is sent), served
    from a thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
