"""Network namespaces for multi-host tests: one bridge per network, one namespace per host.

    with lab(["coord", "agent1", "target"], networks=("ctl", "data")) as net:
        proc = net.popen("coord", [sys.executable, "-m", "loadctl", ...])
        net.addr("target", "data")            # "10.231.57.12"
        net.cut("agent1", "ctl"); ...; net.restore("agent1", "ctl")

Every host is a namespace with one veth per network; the host side of each
veth is a port of that network's bridge, and the machine itself gets `.1` on
every bridge so a test can reach any host directly. Cutting a host's link is
`ip link set DEV down` on the host side of its veth (the kernel has no netem
here): packets are dropped both ways until it is set up again.

Names carry a fixed prefix and the creating process id (`lctn<pid hex>…`), so
a run cleans up what crashed runs left behind without touching a concurrent
run's lab. Addresses are private (10.231.X.0/24, X picked free per network)
and exist only inside these namespaces and bridges. Teardown kills every
process in the namespaces, deletes them and the bridges, and runs on failure
too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "lctn"
SUBNET = "10.231"
FIRST_HOST = 10  # host i gets SUBNET.X.(FIRST_HOST + i)


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "multi-host tests need root (ip netns, veth, bridge)"
    if shutil.which("ip") is None:
        return "multi-host tests need iproute2 (`ip`)"
    probe = f"{PREFIX}{os.getpid():06x}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _pid_of(name: str) -> int | None:
    try:
        return int(name[len(PREFIX) : len(PREFIX) + 6], 16)
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(netns: str) -> None:
    for _ in range(20):
        pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def cleanup_stale() -> list[str]:
    """Delete namespaces and links with our prefix whose creating process is gone."""
    removed = []
    for name in _netns_names():
        if name.startswith(PREFIX):
            pid = _pid_of(name)
            if pid is None or not _alive(pid) or name.endswith("probe"):
                if pid == os.getpid() and not name.endswith("probe"):
                    continue
                _kill_namespace_processes(name)
                _ip("netns", "del", name, check=False)
                removed.append(name)
    for name in _link_names():
        if name.startswith(PREFIX):
            pid = _pid_of(name)
            if pid is None or not _alive(pid):
                _ip("link", "del", name, check=False)
                removed.append(name)
    return removed


def _used_subnets() -> set[int]:
    out = _ip("-4", "-o", "addr", "show", check=False).stdout
    out += _ip("-4", "route", "show", check=False).stdout
    used = set()
    for word in out.split():
        if word.startswith(SUBNET + "."):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(word.split(".")[2]))
    return used


@dataclass
class Host:
    name: str  # the test's name for it: "coord", "agent1", ...
    netns: str
    index: int
    addrs: dict[str, str] = field(default_factory=dict)  # network -> address
    devs: dict[str, str] = field(default_factory=dict)  # network -> host-side veth


class Lab:
    """Namespaces on bridges. Use `lab(...)`, which always tears down."""

    def __init__(self, hosts: Sequence[str], networks: Sequence[str] = ("net",)) -> None:
        if not hosts or not networks or len(hosts) > 200 or len(networks) > 8:
            raise ValueError("1..200 hosts on 1..8 networks")
        self.tag = f"{PREFIX}{os.getpid():06x}"
        self.networks = list(networks)
        self.hosts = {name: Host(name, f"{self.tag}{name}", i) for i, name in enumerate(hosts)}
        self.bridges: dict[str, str] = {}
        self.subnets: dict[str, str] = {}  # network -> "10.231.X"
        self.procs: list[subprocess.Popen[Any]] = []

    # -- building ------------------------------------------------------------------------
    def create(self) -> Lab:
        used = _used_subnets()
        start = 20 + os.getpid() % 200
        free = [x for x in [*range(start, 250), *range(20, start)] if x not in used]
        if len(free) < len(self.networks):
            raise RuntimeError(f"no free {SUBNET}.X.0/24 left for {len(self.networks)} networks")
        for n, network in enumerate(self.networks):
            bridge = f"{self.tag}b{n}"
            subnet = f"{SUBNET}.{free[n]}"
            _ip("link", "add", bridge, "type", "bridge")
            self.bridges[network] = bridge
            self.subnets[network] = subnet
            _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            for n, network in enumerate(self.networks):
                outside = f"{self.tag}{n}h{host.index:x}"
                inside = f"{self.tag}{n}n{host.index:x}"
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", host.netns)
                _ip("-n", host.netns, "link", "set", inside, "name", f"eth{n}")
                address = f"{self.subnets[network]}.{FIRST_HOST + host.index}"
                _ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", f"eth{n}")
                _ip("-n", host.netns, "link", "set", f"eth{n}", "up")
                _ip("link", "set", outside, "master", self.bridges[network])
                _ip("link", "set", outside, "up")
                host.addrs[network] = address
                host.devs[network] = outside
        return self

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for host in self.hosts.values():
            if host.netns in _netns_names():
                _kill_namespace_processes(host.netns)
                _ip("netns", "del", host.netns, check=False)
        for name in _link_names():
            if name.startswith(self.tag):
                _ip("link", "del", name, check=False)

    # -- using ---------------------------------------------------------------------------
    def addr(self, host: str, network: str | None = None) -> str:
        return self.hosts[host].addrs[network or self.networks[0]]

    def gateway(self, network: str | None = None) -> str:
        """The machine's own address on a network's bridge."""
        return f"{self.subnets[network or self.networks[0]]}.1"

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside the host's namespace (`ip netns exec` execs it: the
        Popen's pid is the command's own pid, so signals reach it directly)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(host, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(
        self, host: str, argv: Sequence[str], timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            self.command(host, argv), capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def cut(self, host: str, network: str | None = None) -> None:
        """Drop everything on the host's link to a network (host side of its veth down)."""
        _ip("link", "set", self.hosts[host].devs[network or self.networks[0]], "down")

    def restore(self, host: str, network: str | None = None) -> None:
        _ip("link", "set", self.hosts[host].devs[network or self.networks[0]], "up")


@contextlib.contextmanager
def lab(hosts: Sequence[str], networks: Sequence[str] = ("net",)) -> Iterator[Lab]:
    cleanup_stale()
    net = Lab(hosts, networks)
    try:
        yield net.create()
    finally:
        net.teardown()
