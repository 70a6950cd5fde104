"""Run the demo target (`loadctl target`) as a real subprocess for tests.

    with running_target("--latency", "20ms") as target:
        urllib.request.urlopen(target.url + "/health")
        assert target.counts()["total"] == 1
        target.configure(error_rate=0.5)
        target.reset()

The target listens on 127.0.0.1 on a free port (`--port 0`); its URL comes
from the one line it prints on start. On exit it gets SIGTERM, then SIGKILL
after 5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class TargetProcess:
    url: str  # base URL, e.g. http://127.0.0.1:40123 (no trailing slash)
    proc: subprocess.Popen[bytes]
    args: tuple[str, ...] = ()
    _stderr: Any = field(default=None, repr=False)

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

    def stderr_text(self) -> str:
        """What the target wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return bytes(self._stderr.read()).decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM, wait up to 5 s, then SIGKILL; return the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _read_listening_line(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Read stdout until the first newline (or EOF / timeout); None if none came."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


@contextlib.contextmanager
def running_target(*args: str, start_timeout: float = START_TIMEOUT) -> Iterator[TargetProcess]:
    """Start `loadctl target --host 127.0.0.1 --port 0 *args`; yield a TargetProcess."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [*TARGET_COMMAND, "--host", "127.0.0.1", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        target = TargetProcess(url="", proc=proc, args=args, _stderr=stderr)
        try:
            line = _read_listening_line(proc, start_timeout)
            if line is None or not line.startswith(LISTENING):
                target.stop()
                raise TargetStartError(
                    f"target {' '.join(args)!r} did not start (exit {proc.returncode}; "
                    f"stdout {line!r}; stderr {target.stderr_text()!r})"
                )
            target.url = line[len(LISTENING) :].rstrip("/")
            yield target
        finally:
            target.stop()
            if proc.stdout is not None:
                proc.stdout.close()
