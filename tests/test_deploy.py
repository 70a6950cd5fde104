"""Deploy files (deploy/, docs/deploy.md) checked against the real CLI and tools.

Every `loadctl` command line in the deploy files is extracted and run here with
`--dry-run` (`python -m loadctl ...`) against real key files made by `loadctl
keys init/add-agent` and the real scenario file, laid out the way the deploy
mechanism would mount them:

* systemd: ExecStartPre/ExecStart with the env file's values substituted, the
  key directory of an agent machine as `loadctl keys add-agent` says to copy it;
* compose: each loadctl service's `command:` with its secrets and configs placed
  at their container paths (file secrets are bind mounts: host mode kept);
* Kubernetes: the output of `kubectl kustomize`, with Secret/ConfigMap volumes
  laid out as the kubelet does (..data symlinks, fsGroup makes files 0440), the
  init container's shell script run for real, then the container's args.

`loadctl target` has no --dry-run: its command lines are run for real on
127.0.0.1 with a free port instead, and the healthcheck command is run against it.
No Docker engine is needed: the Dockerfile is checked statically, and its
build context (after Dockerfile.dockerignore) is built into a wheel.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "loadctl-agent.service"
ENV_FILE = DEPLOY / "systemd" / "loadctl-agent.env"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "loadctl-dashboard.json"
LOADCTL = [sys.executable, "-m", "loadctl"]
SUBCOMMANDS = {"agent", "coordinator", "run", "target", "keys", "demo"}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("cwd", REPO)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def loadctl(*args: str) -> subprocess.CompletedProcess[str]:
    return run([*LOADCTL, *args])


def start_loadctl(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LOADCTL, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def loadctl_many(*arg_lists: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Several `python -m loadctl` commands at once (each spends ~1 s importing)."""
    return [finish(proc) for proc in [start_loadctl(args) for args in arg_lists]]


def assert_dry_runs_ok(cases: list[tuple[list[str], str]]) -> None:
    """Each (loadctl args, where) passes `--dry-run`; `target` lines are run for real."""
    for args, where in cases:
        assert args and args[0] in SUBCOMMANDS, f"{where}: not a loadctl command line: {args}"
    checks = [
        (args, where, start_loadctl([*args, "--dry-run"]))
        for args, where in cases
        if args[0] != "target"
    ]
    for args, _ in cases:
        if args[0] == "target":  # no --dry-run: run it for real (see run_target)
            with run_target(args):
                pass
    for args, where, proc in checks:
        res = finish(proc)
        assert res.returncode == 0, f"{where}: loadctl {shlex.join(args)} --dry-run: {res.stderr}"
        out = res.stdout.strip()
        assert out.endswith(": ok") and len(out.splitlines()) == 1, f"{where}: {res.stdout!r}"


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


@contextlib.contextmanager
def run_target(args: list[str]) -> Iterator[str]:
    """`loadctl target ARGS` for real, moved to 127.0.0.1 and a free port; yields its URL."""
    args = list(args)
    for name, value in (("--host", "127.0.0.1"), ("--port", "0")):
        if name in args:
            args[args.index(name) + 1] = value
        else:
            args += [name, value]
    proc = subprocess.Popen(
        [*LOADCTL, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "loadctl target listening on URL", or EOF on error
        if "listening on" not in line:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"loadctl {shlex.join(args)} did not start: {line}{err}")
        yield line.split("listening on", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        if m.group(2) == ":-":
            return env.get(name) or m.group(3)
        if m.group(2) == "-":
            return env.get(name, m.group(3))
        return env.get(name, "")

    pattern = r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(?!\{)(\w+)"
    return re.sub(pattern, sub, text)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    """A scratch dir that other uids can traverse (the k8s init script runs as 10001)."""
    path = Path(tempfile.mkdtemp(prefix="loadctl-deploy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def compose_agent_names() -> list[str]:
    return [
        option(compose_args(s), "--name")
        for s in loadctl_services(compose()).values()
        if compose_args(s)[0] == "agent"
    ]


def k8s_agent_names() -> list[str]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = [f.split("=", 1)[-1] for g in kustomization["secretGenerator"] for f in g["files"]]
    assert files and all(f.startswith("keys/") for f in files), files
    return [Path(f).name.removesuffix(".key_secret") for f in files if f.startswith("keys/agents/")]


@pytest.fixture(scope="module")
def keys(work: Path) -> tuple[Path, dict[str, str]]:
    """One coordinator key dir made by the real CLI, with the agent names the deploy files use.

    Returns (dir, {agent name: what `loadctl keys add-agent NAME` printed}).
    """
    names = sorted(
        {parse_env_file(ENV_FILE)["LOADCTL_AGENT_NAME"], *compose_agent_names(), *k8s_agent_names()}
    )
    directory = work / "keys"
    res = loadctl("keys", "init", str(directory))
    assert res.returncode == 0, res.stderr
    added = loadctl_many(*[["keys", "add-agent", n, "--dir", str(directory)] for n in names])
    for res in added:
        assert res.returncode == 0, res.stderr
    return directory, {n: res.stdout for n, res in zip(names, added, strict=True)}


# --------------------------------------------------------------------------- all files


def test_yaml_and_json_files_parse() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json")]
    files = [p for p in files if "keys" not in p.relative_to(DEPLOY).parts]
    assert {COMPOSE, K8S / "kustomization.yaml", K8S / "scenario.yaml"} <= set(files)
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            assert isinstance(json.loads(text), dict), path
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
            assert docs and all(isinstance(d, dict) for d in docs), path


# --------------------------------------------------------------------------- systemd


def parse_unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> values (repeated keys kept), with `\\` line continuations joined."""
    out: dict[str, list[str]] = {}
    section = ""
    logical = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in logical.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """systemd ExecStart= expansion: ${VAR} inside a word, $VAR alone splits into words."""
    words: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:
            words += env.get(whole.group(1), "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def agent_machine_keys(add_agent_output: str, agent_dir: Path) -> Path:
    """Copy what `loadctl keys add-agent` says to copy to an agent machine, modes kept."""
    copies = [line.split("->") for line in add_agent_output.splitlines() if "->" in line]
    assert len(copies) == 2, add_agent_output
    agent_dir.mkdir(mode=0o700)
    for source, target in copies:
        dest = agent_dir / target.strip().replace("<agent DIR>/", "")
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.copy2(source.strip(), dest)
    return agent_dir


def test_systemd_unit_is_hardened() -> None:
    unit = parse_unit(UNIT)
    expected = {
        "Service.User": "loadctl",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.Restart": "on-failure",
        "Service.LimitNOFILE": "65536",
        "Service.RestartPreventExitStatus": "2",
        "Install.WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    (env_file,) = unit["Service.EnvironmentFile"]
    assert env_file == "/etc/loadctl/agent.env"
    (start,) = unit["Service.ExecStart"]
    assert "--reconnect" in shlex.split(start)


def test_systemd_commands_dry_run(work: Path, keys: tuple[Path, dict[str, str]]) -> None:
    unit = parse_unit(UNIT)
    env = parse_env_file(ENV_FILE)
    assert env["LOADCTL_COORDINATOR"].startswith("tcp://")
    _, outputs = keys
    agent_dir = agent_machine_keys(outputs[env["LOADCTL_AGENT_NAME"]], work / "systemd-agent")
    env["LOADCTL_KEYS"] = str(agent_dir)
    lines = unit["Service.ExecStartPre"] + unit["Service.ExecStart"]
    assert len(lines) == 2
    argvs = [expand_exec(line, env) for line in lines]
    assert all(argv[0] == "/opt/loadctl/bin/loadctl" for argv in argvs), argvs
    assert_dry_runs_ok(
        [([a for a in argv[1:] if a != "--dry-run"], f"{UNIT.name}: {argv}") for argv in argvs]
    )

    # A wrong name in the env file: ExecStartPre fails with one line and status 2,
    # which RestartPreventExitStatus=2 does not restart.
    env["LOADCTL_AGENT_NAME"] = "not-made"
    res = loadctl(*expand_exec(unit["Service.ExecStartPre"][0], env)[1:])
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "not-made" in res.stderr


def unit_for_this_machine(tmp: Path) -> Path:
    """The unit with ExecStart* on this machine's loadctl and the repo's env file."""
    binary = shutil.which("loadctl")
    if binary is None:
        pytest.skip("no `loadctl` executable on PATH for ExecStart= to point at")
    text = UNIT.read_text(encoding="utf-8")
    text = text.replace("/opt/loadctl/bin/loadctl", binary)
    text = text.replace("/etc/loadctl/agent.env", str(ENV_FILE))
    path = tmp / UNIT.name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = unit_for_this_machine(tmp_path)
    res = run(["systemd-analyze", "verify", str(unit)])
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    for problem in ("Unknown key", "Unknown section", "Failed to parse", "Invalid", "ignoring"):
        assert problem not in output, output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_security_exposure(tmp_path: Path) -> None:
    unit = unit_for_this_machine(tmp_path)
    res = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)])
    if res.returncode != 0 and "offline" in res.stderr:
        pytest.skip(f"systemd-analyze security has no --offline here: {res.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= 2.0, res.stdout  # 10 = unprotected, < 2 "OK"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers absent")
def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = DEPLOY / "systemd" / "loadctl.sysusers.conf"
    res = run(["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(conf)])
    assert res.returncode == 0, res.stderr
    assert "Creating user 'loadctl'" in res.stdout + res.stderr


# --------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def loadctl_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in data["services"].items()
        if svc.get("build", {}).get("dockerfile") == "deploy/docker/Dockerfile"
    }


def compose_args(svc: dict[str, Any]) -> list[str]:
    command = svc["command"]
    assert isinstance(command, list), "use the list form of command:"
    return [interpolate(str(a), {}) for a in command]


def mount_compose_files(data: dict[str, Any], svc: dict[str, Any], keys: Path, root: Path) -> None:
    """Place the service's secrets and configs under `root` like bind mounts (mode kept)."""
    for kind, default_dir in (("secrets", "/run/secrets"), ("configs", "")):
        for entry in svc.get(kind, []):
            if isinstance(entry, str):
                entry = {"source": entry}
            target = entry.get("target", entry["source"])
            if not target.startswith("/"):
                target = f"{default_dir}/{target}"
            source = data[kind][entry["source"]]["file"]
            assert source.startswith(("./", "../")), source
            host = (DEPLOY / source).resolve()
            if host.is_relative_to(DEPLOY / "keys"):
                host = keys / host.relative_to(DEPLOY / "keys")
            dest = root / target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, dest)


def test_compose_commands_dry_run(work: Path, keys: tuple[Path, dict[str, str]]) -> None:
    data = compose()
    services = loadctl_services(data)
    assert {"target", "coordinator", "agent"} <= set(services)
    key_dir, _ = keys
    cases = []
    for name, svc in services.items():
        root = work / "compose" / name
        root.mkdir(parents=True)
        mount_compose_files(data, svc, key_dir, root)
        args = [str(root) + a if a.startswith("/") else a for a in compose_args(svc)]
        cases.append((args, f"compose service {name}"))
    assert_dry_runs_ok(cases)


def test_compose_services_agree() -> None:
    data = compose()
    services = loadctl_services(data)
    coordinator = compose_args(services["coordinator"])
    agent = compose_args(services["agent"])
    replicas = int(interpolate(str(services["agent"]["deploy"]["replicas"]), {}))
    assert int(option(coordinator, "--agents")) == replicas * int(option(agent, "--processes"))
    assert "--reconnect" in agent
    assert option(agent, "--coordinator") == "tcp://coordinator:5555"
    assert option(coordinator, "--bind").endswith(":5555")
    assert {"5555", "9646"} <= set(map(str, services["coordinator"]["expose"]))
    # Keys come in as secrets, from the key directory the docs tell users to make.
    for svc in (services["coordinator"], services["agent"]):
        for entry in svc["secrets"]:
            assert data["secrets"][entry["source"]]["file"].startswith("./keys/")
    # Prometheus scrapes the coordinator's metrics port; Grafana gets its provisioning.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    metrics_port = option(coordinator, "--metrics-port").rsplit(":", 1)[-1]
    assert f"coordinator:{metrics_port}" in targets
    assert metrics_port in set(map(str, services["coordinator"]["expose"]))
    assert any(
        v.startswith("./prometheus/prometheus.yml:")
        for v in data["services"]["prometheus"]["volumes"]
    )
    grafana = data["services"]["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    (dashboard,) = [v for v in grafana if v.startswith("./grafana/loadctl-dashboard.json:")]
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/loadctl.yaml").read_text()
    )["providers"][0]
    assert dashboard.split(":")[1].startswith(provider["options"]["path"] + "/")
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    if DASHBOARD.exists():  # written by a colleague; a missing file would mount as a directory
        board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        # Its Prometheus queries go to the provisioned datasource (directly or via a variable).
        text = json.dumps(board)
        uids = set(re.findall(r'"type": "prometheus", "uid": "([^"]*)"', text))
        assert all(u == datasource["uid"] or u.startswith("$") for u in uids), uids
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "datasource" and var.get("current"):
                assert var["current"]["value"] in (datasource["uid"], datasource["name"])


def test_compose_target_healthcheck_passes() -> None:
    svc = compose()["services"]["target"]
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD"
    with run_target(compose_args(svc)) as url:
        port = url.rsplit(":", 1)[1]
        argv = [
            sys.executable if a == "python" else a.replace(":8080/", f":{port}/") for a in test[1:]
        ]
        res = run(argv)
        assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- kubernetes

REQUIRED_WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


@pytest.fixture(scope="module")
def rendered(work: Path, keys: tuple[Path, dict[str, str]]) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a copy of deploy/k8s with real keys in its keys/ dir."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render deploy/k8s")
    copy = work / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("keys"))
    shutil.copytree(keys[0], copy / "keys")
    res = run([kubectl, "kustomize", str(copy)])
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return match


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kustomize_objects_have_required_fields(rendered: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in rendered}
    assert {
        "Namespace",
        "Secret",
        "ConfigMap",
        "Job",
        "Service",
        "Deployment",
        "NetworkPolicy",
    } <= kinds
    for obj in rendered:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), where
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "loadctl", where
        if obj["kind"] in REQUIRED_WORKLOADS:
            template = obj["spec"]["template"]
            containers = template["spec"]["containers"]
            assert containers, where
            for c in [*containers, *template["spec"].get("initContainers", [])]:
                assert c.get("name") and c.get("image"), where
            if obj["kind"] == "Job":
                assert template["spec"]["restartPolicy"] in ("Never", "OnFailure"), where
            else:
                assert selects(
                    obj["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]
                ), where
        if obj["kind"] == "Service":
            assert obj["spec"]["ports"] and obj["spec"]["selector"], where
            assert all(isinstance(p["port"], int) for p in obj["spec"]["ports"]), where
        if obj["kind"] == "NetworkPolicy":
            assert isinstance(obj["spec"]["podSelector"], dict), where
        if obj["kind"] in ("Secret", "ConfigMap"):
            assert obj.get("data") or obj.get("stringData"), where


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]
        for o in objects
        if o["kind"] in REQUIRED_WORKLOADS
    }


def test_kustomize_objects_agree(rendered: list[dict[str, Any]]) -> None:
    pods = pod_templates(rendered)
    job = find(rendered, "Job", "loadctl-coordinator")
    agents = find(rendered, "Deployment", "loadctl-agent")
    (coordinator,) = job["spec"]["template"]["spec"]["containers"]
    (agent,) = agents["spec"]["template"]["spec"]["containers"]
    processes = int(option(agent["args"], "--processes"))
    assert int(option(coordinator["args"], "--agents")) == agents["spec"]["replicas"] * processes
    assert "--reconnect" in agent["args"]
    assert agent["resources"]["requests"]["cpu"] in (str(processes), processes)
    # The agents reach the coordinator pod through its Service, on the cluster port.
    host, port = option(agent["args"], "--coordinator").removeprefix("tcp://").split(":")
    service = find(rendered, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert {p["port"] for p in service["spec"]["ports"]} >= {5555, 9646}
    assert option(coordinator["args"], "--bind").endswith(":5555")
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert [
        n for n, t in pods.items() if selects(service["spec"]["selector"], t["metadata"]["labels"])
    ] == [job["metadata"]["name"]]
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    metrics_port = int(option(coordinator["args"], "--metrics-port").rsplit(":", 1)[-1])
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert metrics_port in {p["containerPort"] for p in coordinator["ports"]}
    # Only agent pods may reach 5555 on the coordinator.
    (policy,) = by_kind(rendered, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], job_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if 5555 in ports:
            (source,) = rule["from"]
            allowed = [
                n
                for n, t in pods.items()
                if selects(source["podSelector"]["matchLabels"], t["metadata"]["labels"])
            ]
            assert allowed == [agents["metadata"]["name"]]
    # Every volume refers to an object the kustomization renders.
    for template in pods.values():
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:
                find(rendered, "Secret", volume["secret"]["secretName"])
            if "configMap" in volume:
                find(rendered, "ConfigMap", volume["configMap"]["name"])


def write_volume(path: Path, files: dict[str, bytes], mode: int, gid: int | None) -> None:
    """A Secret/ConfigMap volume as the kubelet writes it: ..data symlinks, fsGroup modes."""
    data_dir = path / "..2024_01_01_00_00_00.000000000"
    for rel, content in files.items():
        dest = data_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
    for p in [data_dir, *data_dir.rglob("*")]:
        p.chmod(
            (0o2755 | (0o550 if gid is not None else 0))
            if p.is_dir()
            else mode | (0o440 if gid is not None else 0)
        )
        if gid is not None and IS_ROOT:
            os.chown(p, 0, gid)
    (path / "..data").symlink_to(data_dir.name)
    for top in {rel.split("/")[0] for rel in files}:
        (path / top).symlink_to(f"..data/{top}")


def materialize_volumes(
    template: dict[str, Any], objects: list[dict[str, Any]], root: Path
) -> dict[str, Path]:
    spec = template["spec"]
    gid = spec.get("securityContext", {}).get("fsGroup")
    out: dict[str, Path] = {}
    for volume in spec.get("volumes", []):
        path = root / volume["name"]
        path.mkdir(parents=True)
        out[volume["name"]] = path
        if "emptyDir" in volume:
            path.chmod(0o2777 if gid is not None else 0o777)
            if gid is not None and IS_ROOT:
                os.chown(path, 0, gid)
            continue
        if "secret" in volume:
            source = volume["secret"]
            obj = find(objects, "Secret", source["secretName"])
            data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
            default_mode = source.get("defaultMode", 0o644)
        else:
            source = volume["configMap"]
            obj = find(objects, "ConfigMap", source["name"])
            data = {k: v.encode() for k, v in obj.get("data", {}).items()}
            default_mode = source.get("defaultMode", 0o644)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        write_volume(path, {i["path"]: data[i["key"]] for i in items}, default_mode, gid)
    return out


def in_volumes(text: str, container: dict[str, Any], volumes: dict[str, Path]) -> str:
    """Rewrite the container's mount paths in `text` to the volume directories here."""
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for mount in mounts:
        assert "subPath" not in mount
        pattern = rf"(?<![\w./-]){re.escape(mount['mountPath'])}(?![\w.-])"
        text = re.sub(pattern, str(volumes[mount["name"]]), text)
    return text


def test_k8s_container_commands_dry_run(rendered: list[dict[str, Any]], work: Path) -> None:
    cases: list[tuple[list[str], str]] = []
    for name, template in pod_templates(rendered).items():
        spec = template["spec"]
        volumes = materialize_volumes(template, rendered, work / "pods" / name)
        security = spec.get("securityContext", {})
        uid, gid = security.get("runAsUser"), security.get("runAsGroup")
        for init in spec.get("initContainers", []):
            argv = [in_volumes(a, init, volumes) for a in [*init["command"], *init["args"]]]
            as_user: dict[str, Any] = {}
            if IS_ROOT and uid is not None:  # run the script as the pod's user, as it would
                as_user = {"user": uid, "group": gid, "extra_groups": [security["fsGroup"]]}
            res = run(argv, cwd="/", env={"PATH": "/usr/bin:/bin"}, **as_user)
            assert res.returncode == 0, f"{name}/{init['name']}: {res.stderr}"
            written = [volumes[m["name"]] for m in init["volumeMounts"] if not m.get("readOnly")]
            for path in (p for d in written for p in d.rglob("*.key_secret")):
                assert path.stat().st_mode & 0o077 == 0, path
                if IS_ROOT and uid is not None:
                    assert path.stat().st_uid == uid, path
        for container in spec["containers"]:
            assert container["image"].split(":")[0].endswith("loadctl")
            assert "command" not in container  # the image's ENTRYPOINT is `loadctl`
            args = [in_volumes(a, container, volumes) for a in container["args"]]
            cases.append((args, f"{name}/{container['name']}"))
    assert len(cases) >= 3
    assert_dry_runs_ok(cases)


# --------------------------------------------------------------------------- docker


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_image() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert stages and all(s.split()[0] == "python:3.11-slim" for s in stages)
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"] == [["loadctl"]]
    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    command = json.loads(health.split(" CMD ", 1)[1])
    assert command[0] == "loadctl"
    res = loadctl(*command[1:])  # the healthcheck command works on an installed loadctl
    assert res.returncode == 0, res.stderr


def pip_install_targets(instructions: list[tuple[str, str]]) -> list[Path]:
    """Repo paths that the Dockerfile's `pip install` lines install, via COPY and WORKDIR."""
    workdir = Path("/")
    copies: dict[Path, Path] = {}  # container dir -> build context dir
    targets = []
    for word, rest in instructions:
        if word == "FROM":
            workdir, copies = Path("/"), {}
        elif word == "WORKDIR":
            workdir = workdir / rest
        elif word == "COPY" and not rest.startswith("--from"):
            *sources, dest = shlex.split(rest)
            if sources == ["."]:
                copies[workdir / dest] = REPO
        elif word == "RUN" and re.search(r"\bpip install\b", rest):
            args = shlex.split(rest.split("pip install", 1)[1])
            for arg in (a for a in args if not a.startswith("-")):
                container = workdir / arg
                assert container in copies, f"pip install {arg}: not the copied source"
                targets.append(copies[container])
    return targets


def test_dockerfile_installs_the_package_from_copied_source() -> None:
    targets = pip_install_targets(dockerfile_instructions())
    assert targets == [REPO]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "loadctl"
    assert project["scripts"]["loadctl"] == "loadctl.cli:main"


def test_readme_installs_the_same_way() -> None:
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet: nothing to compare the Dockerfile with")
    installs = re.findall(r"pip install ([^\n`]+)", readme.read_text(encoding="utf-8"))
    assert any(shlex.split(i)[:1] == ["."] for i in installs), installs


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches parents."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_docker_build_context_builds_the_package(work: Path) -> None:
    """The context BuildKit sends (after Dockerfile.dockerignore) builds a complete wheel."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = work / "docker-context"
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not rel.startswith(".git/") and not dockerignored(rel, patterns):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / rel)
    names = {p.relative_to(context).parts[0] for p in context.rglob("*")}
    assert "pyproject.toml" in names and not names & {"tests", "deploy", ".git", "bench"}
    res = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "wheel"),
            ".",
        ],
        cwd=context,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = (work / "wheel").glob("loadctl-*.whl")
    members = set(zipfile.ZipFile(wheel).namelist())
    for module in ("cli", "protocol/__init__", "agent/__init__", "coordinator/__init__"):
        assert f"loadctl/{module}.py" in members, module
    entry_points = next(m for m in members if m.endswith("entry_points.txt"))
    assert "loadctl = loadctl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --------------------------------------------------------------------------- docs


def test_docs_walkthrough_names_the_files() -> None:
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for path in (UNIT, ENV_FILE, COMPOSE, DOCKERFILE, K8S / "kustomization.yaml"):
        assert str(path.relative_to(REPO)) in text, path
    for needle in (
        "loadctl keys init",
        "loadctl keys add-agent",
        "systemctl enable",
        "5555",
        "nft",
        "ufw",
        "--agents 8",
        "pip install .",
    ):
        assert needle in text, needle
