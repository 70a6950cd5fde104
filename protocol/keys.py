"""CURVE key files for the cluster link: layout, creation, loading, checks.

Pure code: files and key maths only, no sockets.

A key directory looks like this (``loadctl keys init DIR`` /
``loadctl keys add-agent NAME``)::

    DIR/                          0700
      coordinator.key_secret      0600  coordinator pair (stays on the coordinator)
      coordinator.key             0644  coordinator public key (copy to every agent)
      agents/                     0700
        NAME.key_secret           0600  agent pair (move to that agent's machine)
        NAME.key                  0644  agent public key
      allowed/                    0700
        NAME.key                  0644  public keys the coordinator admits

An agent machine holds the same layout with only ``coordinator.key`` and
``agents/NAME.key_secret``, so ``load_agent_keys(DIR, NAME)`` works there too.
Revoking an agent is deleting ``allowed/NAME.key`` (and restarting, or
reloading the coordinator's allow-list).

Files use pyzmq's certificate format (``zmq.auth.create_certificates``), so
``zmq.auth.load_certificate`` and czmq tools read them. We write them
ourselves only to create secret files with mode 0600 atomically and never
overwrite one (``O_CREAT | O_EXCL``).

Keys are handled as Z85 text in ``bytes`` (40 characters), which is what
pyzmq's ``curve_*key`` socket options accept and what logs show.

Every user mistake raises :class:`KeyFileError` with a one-line message that
names the file and the fix.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zmq

__all__ = [
    "DEFAULT_KEYS_DIR",
    "KEYS_DIR_ENV",
    "AgentKeyFiles",
    "AgentKeys",
    "KeyFileError",
    "KeyPair",
    "KeyPaths",
    "add_agent",
    "check_agent_name",
    "default_keys_dir",
    "fresh_keypair",
    "init_keys",
    "list_agents",
    "load_agent_key_files",
    "load_agent_keys",
    "load_allowed",
    "load_coordinator_keys",
    "load_keypair",
    "load_public_key",
]

KEYS_DIR_ENV = "LOADCTL_KEYS"
DEFAULT_KEYS_DIR = "loadctl-keys"

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
COORDINATOR = "coordinator"

_Z85_ALPHABET = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_Z85_KEY_LEN = 40  # a 32-byte Curve25519 key in Z85
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEY_LINE_RE = re.compile(rb"^\s*(public-key|secret-key)\s*=\s*(.*?)\s*$")

# pyzmq's certificate banners (zmq/auth/certs.py), so our files look like its own.
_SECRET_BANNER = """#   ****  Generated on {0} by loadctl  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER = """#   ****  Generated on {0} by loadctl  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange.

"""


class KeyFileError(Exception):
    """A key file or directory is missing, unreadable, malformed or too open.

    ``str(error)`` is one line naming the file and the fix, fit to print as is.
    """


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves as 40-character Z85 ``bytes``."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print a secret key by accident
        return f"KeyPair(public={self.public.decode('ascii')!r}, secret=<hidden>)"


@dataclass(frozen=True)
class AgentKeys:
    """What an agent needs: its own pair and the pinned coordinator public key."""

    own: KeyPair
    coordinator_public: bytes


@dataclass(frozen=True)
class KeyPaths:
    """The file layout of one key directory (see the module docstring)."""

    root: Path

    @property
    def coordinator_secret(self) -> Path:
        return self.root / f"{COORDINATOR}{SECRET_SUFFIX}"

    @property
    def coordinator_public(self) -> Path:
        return self.root / f"{COORDINATOR}{PUBLIC_SUFFIX}"

    @property
    def agents_dir(self) -> Path:
        return self.root / "agents"

    @property
    def allowed_dir(self) -> Path:
        return self.root / "allowed"

    def agent_secret(self, name: str) -> Path:
        return self.agents_dir / f"{check_agent_name(name)}{SECRET_SUFFIX}"

    def agent_public(self, name: str) -> Path:
        return self.agents_dir / f"{check_agent_name(name)}{PUBLIC_SUFFIX}"

    def allowed_public(self, name: str) -> Path:
        return self.allowed_dir / f"{check_agent_name(name)}{PUBLIC_SUFFIX}"


@dataclass(frozen=True)
class AgentKeyFiles:
    """The files ``add_agent`` wrote."""

    name: str
    secret: Path
    public: Path
    allowed: Path


# --------------------------------------------------------------------------- helpers


def default_keys_dir() -> Path:
    """``$LOADCTL_KEYS`` if set, else ``./loadctl-keys``."""
    return Path(os.environ.get(KEYS_DIR_ENV) or DEFAULT_KEYS_DIR)


def check_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid agent name (it becomes a file name)."""
    if not _NAME_RE.match(name):
        raise KeyFileError(
            f"invalid agent name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def fresh_keypair() -> KeyPair:
    """A new in-memory key pair (for local runs that never touch disk)."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public, secret=secret)


def _valid_z85_key(value: bytes) -> bool:
    return len(value) == _Z85_KEY_LEN and all(c in _Z85_ALPHABET for c in value)


def _fix_for(path: Path) -> str:
    """What to do about a missing or broken key file, for error messages."""
    if path.parent.name in ("agents", "allowed"):
        root = path.parent.parent
        name = path.name.split(".key")[0]
        return (
            f"run `loadctl keys add-agent {name} --dir {root}` on the coordinator "
            f"and copy agents/{name}{SECRET_SUFFIX} to this agent"
        )
    if path.name == f"{COORDINATOR}{PUBLIC_SUFFIX}":
        return (
            f"copy {COORDINATOR}{PUBLIC_SUFFIX} from the coordinator's key directory "
            "(made by `loadctl keys init DIR`)"
        )
    return f"run `loadctl keys init {path.parent}`"


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(64 * 1024)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file; {_fix_for(path)}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, expected a key file") from None
    except PermissionError:
        raise KeyFileError(
            f"{path}: permission denied; run loadctl as the user that owns the key file"
        ) from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror or e}") from None


def _check_secret_mode(path: Path) -> None:
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:  # pragma: no cover - raced away after reading
        raise KeyFileError(f"{path}: cannot stat key file: {e.strerror or e}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: secret key file is accessible by group/other (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )


def _parse(path: Path, data: bytes) -> tuple[bytes, bytes | None]:
    """Parse a pyzmq certificate; return (public, secret or None)."""
    public: bytes | None = None
    secret: bytes | None = None
    for raw in data.splitlines():
        m = _KEY_LINE_RE.match(raw)
        if m is None:
            continue
        value = m.group(2).strip(b"'\"")
        which = m.group(1)
        if which == b"public-key":
            if public is not None:
                raise KeyFileError(f"{path}: malformed key file (two public-key lines)")
            public = value
        else:
            if secret is not None:
                raise KeyFileError(f"{path}: malformed key file (two secret-key lines)")
            secret = value
    if public is None:
        raise KeyFileError(
            f"{path}: malformed key file (no public-key line); "
            "copy the file again from where it was created"
        )
    if not _valid_z85_key(public):
        raise KeyFileError(
            f"{path}: malformed public key (want 40 Z85 characters); copy the file again"
        )
    if secret is not None:
        if not _valid_z85_key(secret):
            raise KeyFileError(
                f"{path}: malformed secret key (want 40 Z85 characters); copy the file again"
            )
        if zmq.curve_public(secret) != public:
            raise KeyFileError(
                f"{path}: public and secret keys do not belong together; "
                "the file was edited or mixed up, copy it again"
            )
    return public, secret


# --------------------------------------------------------------------------- loading


def load_keypair(secret_file: str | os.PathLike[str]) -> KeyPair:
    """Load a key pair from a ``*.key_secret`` file (mode must be 0600 or stricter)."""
    path = Path(secret_file)
    data = _read(path)
    _check_secret_mode(path)
    public, secret = _parse(path, data)
    if secret is None:
        raise KeyFileError(
            f"{path}: has no secret-key line; give the .key_secret file, not the public .key"
        )
    return KeyPair(public=public, secret=secret)


def load_public_key(public_file: str | os.PathLike[str]) -> bytes:
    """Load a public key (Z85 bytes) from a ``*.key`` file.

    A file that also holds a secret key is refused: it means a secret file was
    copied where only public keys belong.
    """
    path = Path(public_file)
    public, secret = _parse(path, _read(path))
    if secret is not None:
        raise KeyFileError(
            f"{path}: contains a secret key where a public key belongs; "
            "replace it with the matching .key file and delete this copy"
        )
    return public


def _require_dir(path: Path, fix: str) -> None:
    if not path.exists():
        raise KeyFileError(f"{path}: no such key directory; {fix}")
    if not path.is_dir():
        raise KeyFileError(f"{path}: not a directory; {fix}")


def load_coordinator_keys(directory: str | os.PathLike[str]) -> KeyPair:
    """The coordinator's key pair from ``DIR/coordinator.key_secret``."""
    paths = KeyPaths(Path(directory))
    _require_dir(paths.root, f"run `loadctl keys init {paths.root}`")
    return load_keypair(paths.coordinator_secret)


def load_agent_keys(directory: str | os.PathLike[str], name: str) -> AgentKeys:
    """An agent's pair (``DIR/agents/NAME.key_secret``) + ``DIR/coordinator.key``."""
    paths = KeyPaths(Path(directory))
    _require_dir(
        paths.root,
        f"copy agents/{check_agent_name(name)}{SECRET_SUFFIX} and {COORDINATOR}{PUBLIC_SUFFIX} "
        "from the coordinator's key directory into it",
    )
    return AgentKeys(
        own=load_keypair(paths.agent_secret(name)),
        coordinator_public=load_public_key(paths.coordinator_public),
    )


def load_agent_key_files(
    secret_file: str | os.PathLike[str], coordinator_public_file: str | os.PathLike[str]
) -> AgentKeys:
    """An agent's keys from explicit files (for agents that keep no key directory)."""
    return AgentKeys(
        own=load_keypair(secret_file),
        coordinator_public=load_public_key(coordinator_public_file),
    )


def load_allowed(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Public keys the coordinator admits: ``{name: z85 public key}`` from ``DIR/allowed/``.

    An empty allow-list is returned as ``{}`` (the coordinator then admits no one).
    """
    paths = KeyPaths(Path(directory))
    _require_dir(paths.root, f"run `loadctl keys init {paths.root}`")
    _require_dir(paths.allowed_dir, f"run `loadctl keys init {paths.root}`")
    allowed: dict[str, bytes] = {}
    for path in _key_files(paths.allowed_dir, PUBLIC_SUFFIX):
        allowed[path.name[: -len(PUBLIC_SUFFIX)]] = load_public_key(path)
    return allowed


def list_agents(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Agent key pairs created here: ``{name: z85 public key}`` from ``DIR/agents/*.key``."""
    paths = KeyPaths(Path(directory))
    _require_dir(paths.root, f"run `loadctl keys init {paths.root}`")
    if not paths.agents_dir.is_dir():
        return {}
    return {
        path.name[: -len(PUBLIC_SUFFIX)]: load_public_key(path)
        for path in _key_files(paths.agents_dir, PUBLIC_SUFFIX)
    }


def _key_files(directory: Path, suffix: str) -> Iterator[Path]:
    try:
        entries = sorted(directory.iterdir())
    except PermissionError:
        raise KeyFileError(
            f"{directory}: permission denied; run loadctl as the user that owns the keys"
        ) from None
    for path in entries:
        if path.name.endswith(suffix) and not path.name.startswith("."):
            yield path


# --------------------------------------------------------------------------- creating


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` exactly; never overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(
            f"{path}: already exists; refusing to overwrite a key "
            "(delete it first if you really mean to replace it)"
        ) from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create key file: {e.strerror or e}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have cleared bits of `mode`
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
    finally:
        if fd >= 0:
            os.close(fd)


def _certificate(banner: str, pair: KeyPair | None, public: bytes, meta: dict[str, str]) -> str:
    now = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    lines = [banner.format(now), "metadata\n"]
    lines += [f"    {k} = {v}\n" for k, v in meta.items()]
    lines.append("curve\n")
    lines.append(f'    public-key = "{public.decode("ascii")}"\n')
    if pair is not None:
        lines.append(f'    secret-key = "{pair.secret.decode("ascii")}"\n')
    return "".join(lines)


def _write_pair(secret: Path, public: Path, pair: KeyPair, meta: dict[str, str]) -> None:
    _write_new(secret, _certificate(_SECRET_BANNER, pair, pair.public, meta), 0o600)
    _write_new(public, _certificate(_PUBLIC_BANNER, None, pair.public, meta), 0o644)


def _make_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 (left alone if it already exists)."""
    if path.is_dir():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists and is not a directory") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create directory: {e.strerror or e}") from None
    os.chmod(path, 0o700)


def init_keys(directory: str | os.PathLike[str]) -> KeyPaths:
    """Create a key directory and the coordinator key pair.

    Creates ``DIR`` (mode 0700, and missing parents), ``agents/``,
    ``allowed/`` and ``coordinator.key_secret`` (0600) + ``coordinator.key``.
    Refuses with :class:`KeyFileError` if a coordinator key already exists:
    every agent pins the coordinator's public key, so replacing it silently
    would lock all of them out.
    """
    paths = KeyPaths(Path(directory))
    for existing in (paths.coordinator_secret, paths.coordinator_public):
        if existing.exists():
            raise KeyFileError(
                f"{existing}: already exists; refusing to overwrite the coordinator key "
                "that agents pin (use another directory, or delete it to start over)"
            )
    _make_dir(paths.root)
    _make_dir(paths.agents_dir)
    _make_dir(paths.allowed_dir)
    _write_pair(
        paths.coordinator_secret,
        paths.coordinator_public,
        fresh_keypair(),
        {"role": "coordinator"},
    )
    return paths


def add_agent(directory: str | os.PathLike[str], name: str) -> AgentKeyFiles:
    """Create an agent key pair and admit its public key.

    Writes ``agents/NAME.key_secret`` (0600), ``agents/NAME.key`` and
    ``allowed/NAME.key``. Refuses to overwrite an existing agent.
    """
    check_agent_name(name)
    paths = KeyPaths(Path(directory))
    fix = f"run `loadctl keys init {paths.root}` first"
    _require_dir(paths.root, fix)
    if not paths.coordinator_public.exists():
        raise KeyFileError(f"{paths.coordinator_public}: no coordinator key here; {fix}")
    files = AgentKeyFiles(
        name=name,
        secret=paths.agent_secret(name),
        public=paths.agent_public(name),
        allowed=paths.allowed_public(name),
    )
    for existing in (files.secret, files.public, files.allowed):
        if existing.exists():
            raise KeyFileError(
                f"{existing}: agent {name!r} already exists; refusing to overwrite its key "
                "(pick another name, or delete its files to replace it)"
            )
    _make_dir(paths.agents_dir)
    _make_dir(paths.allowed_dir)
    pair = fresh_keypair()
    meta = {"role": "agent", "name": name}
    _write_pair(files.secret, files.public, pair, meta)
    _write_new(files.allowed, _certificate(_PUBLIC_BANNER, None, pair.public, meta), 0o644)
    return files
