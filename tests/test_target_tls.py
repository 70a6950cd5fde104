"""https targets with a certificate no system trusts, or that ask for a client
certificate: `defaults.tls` in real runs.

The target is the engine tests' aiohttp server over TLS (tests/http_servers.py),
with a self-signed certificate for 127.0.0.1, in this process (and the same
server requiring a client certificate, for mutual TLS); `loadctl run`, its
coordinator and agents are real processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from http_servers import Servers

from cluster import LOADCTL, agent_argv, free_port, loadctl, run_scenario, write_scenario

pytestmark = pytest.mark.slow

RATE, SECONDS = 20, 1  # the open phase: 20 requests


def https_scenario(
    servers: Servers, engine: str = "auto", mtls: bool = False, **tls: Any
) -> dict[str, Any]:
    target = servers.mtls if mtls else servers.https
    if target is None:
        pytest.skip("the openssl command is not installed: no self-signed certificate")
    defaults: dict[str, Any] = {"timeout": "5s", "engine": engine}
    if tls:
        defaults["tls"] = tls
    return {
        "target": target.base_url,
        "defaults": defaults,
        "requests": [{"name": "bytes", "path": "/bytes/100"}],
        "phases": [
            {"name": "open", "executor": "constant-rate", "rate": RATE, "duration": SECONDS},
            # static, no think time: on the fast engine its users run on the compiled lane
            {"name": "users", "executor": "constant-users", "users": 2, "duration": 1},
        ],
    }


def test_an_untrusted_certificate_fails_every_request_by_default(servers: Servers) -> None:
    run = run_scenario(https_scenario(servers), agents=1)
    assert run.code == 0, run.stderr
    totals = run.data["totals"]
    assert set(totals["outcomes"]) == {"connect_error"} and totals["requests"] >= RATE
    (warning,) = [w for w in run.data["warnings"] if "no request got a reply" in w]
    assert "trust its certificate (defaults.tls: ca)" in warning


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_the_scenarios_ca_is_trusted(servers: Servers, engine: str, tmp_path: Path) -> None:
    assert servers.https_ca is not None
    shutil.copy(servers.https_ca, tmp_path / "staging-ca.pem")
    scenario = https_scenario(servers, engine, ca="staging-ca.pem")  # relative to the file
    path, out = write_scenario(scenario, tmp_path), tmp_path / "out"
    proc = loadctl("run", str(path), "--agents", "1", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "result.json").read_text())
    open_phase, users_phase = data["phases"]
    assert open_phase["totals"]["outcomes"] == {"2xx": RATE * SECONDS}
    assert users_phase["totals"]["outcomes"] == {"2xx": users_phase["totals"]["requests"]}
    assert users_phase["totals"]["requests"] > 20
    (note,) = [n for n in data["engine_notes"] if "https certificates" in n]
    assert str(tmp_path / "staging-ca.pem") in note


def test_verify_false_accepts_any_certificate(servers: Servers) -> None:
    run = run_scenario(https_scenario(servers, verify=False), agents=1)
    assert run.code == 0, run.stderr
    assert set(run.data["totals"]["outcomes"]) == {"2xx"}
    assert "note: https certificates are not checked" in run.stdout


def test_the_ca_travels_in_the_plan_not_on_the_agents_disk(servers: Servers) -> None:
    """The CA file is deleted once the coordinator has read it, before the agent starts."""
    assert servers.https_ca is not None
    with tempfile.TemporaryDirectory() as tmp:
        ca = Path(tmp) / "ca.pem"
        shutil.copy(servers.https_ca, ca)
        path = write_scenario(https_scenario(servers, "fast", ca=str(ca)), Path(tmp))
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out, log = Path(tmp) / "out", Path(tmp) / "coordinator.log"
        argv = [*LOADCTL, "coordinator", str(path), "--agents", "1", "--bind", endpoint]
        with log.open("w") as log_file:
            coordinator = subprocess.Popen(
                [*argv, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=log_file
            )
        agent = None
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log.read_text() and time.monotonic() < deadline:
                assert coordinator.poll() is None, log.read_text()
                time.sleep(0.05)
            ca.unlink()
            agent = subprocess.Popen(agent_argv(endpoint), stdout=subprocess.DEVNULL)
            assert coordinator.wait(60) == 0, log.read_text()
            assert agent.wait(20) == 0
        finally:
            for proc in (coordinator, agent):
                if proc is not None and proc.poll() is None:
                    proc.kill()
        data = json.loads((out / "result.json").read_text())
        assert set(data["totals"]["outcomes"]) == {"2xx"}


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "no such file"), (b"not a certificate\n", "holds no PEM certificate")],
)
def test_a_missing_or_wrong_ca_file_is_one_line_and_exit_2(
    servers: Servers, tmp_path: Path, content: bytes | None, words: str
) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_bytes(content)
    path = write_scenario(https_scenario(servers, ca="ca.pem"), tmp_path)
    proc = loadctl("run", str(path), "--agents", "1")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "scenario.yaml:" in line and "defaults.tls.ca" in line and words in line
    assert str(tmp_path / "ca.pem") in line


@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_a_client_certificate_for_a_server_that_asks(servers: Servers, engine: str) -> None:
    """Mutual TLS: with the certificate and its key every request is answered."""
    assert servers.client is not None and servers.https_ca is not None
    cert, key = servers.client
    with_cert = https_scenario(servers, engine, mtls=True, ca=servers.https_ca, cert=cert, key=key)
    run = run_scenario(with_cert, agents=1)
    assert run.code == 0, run.stderr
    assert set(run.data["totals"]["outcomes"]) == {"2xx"}
    assert any(f"client certificate {cert}" in n for n in run.data["engine_notes"])


def test_without_a_client_certificate_the_server_answers_nothing(servers: Servers) -> None:
    """The other side of the test above: the server really asks for one."""
    assert servers.https_ca is not None
    run = run_scenario(https_scenario(servers, mtls=True, ca=servers.https_ca), agents=1)
    assert run.code == 0, run.stderr
    assert "2xx" not in run.data["totals"]["outcomes"] and run.data["totals"]["requests"]


def test_a_key_that_is_not_the_certificates_is_one_line_and_exit_2(
    servers: Servers, tmp_path: Path
) -> None:
    assert servers.client is not None and servers.https_ca is not None
    wrong_key = Path(servers.https_ca).with_name("key.pem")  # the server's key
    scenario = https_scenario(servers, mtls=True, cert=servers.client[0], key=str(wrong_key))
    proc = loadctl("run", str(write_scenario(scenario, tmp_path)), "--agents", "1")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "defaults.tls.cert" in line and "not a PEM certificate with its private key" in line


def test_a_client_key_is_not_shipped_over_a_link_without_keys(
    servers: Servers, tmp_path: Path
) -> None:
    """--dry-run: the coordinator refuses before it binds anything."""
    assert servers.client is not None
    scenario = https_scenario(servers, mtls=True, cert=servers.client[0], key=servers.client[1])
    path = write_scenario(scenario, tmp_path)
    remote = ("--bind", "tcp://192.0.2.1:5555", "--insecure", "--dry-run")
    proc = loadctl("coordinator", str(path), "--agents", "1", *remote)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "private key" in line and "--keys" in line
    local = ("--bind", "tcp://127.0.0.1:5555", "--dry-run")  # loopback: nothing travels
    local_proc = loadctl("coordinator", str(path), "--agents", "1", *local)
    assert local_proc.returncode == 0, local_proc.stderr
