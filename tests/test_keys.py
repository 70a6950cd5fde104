"""Key directory: the real `loadctl keys` CLI in a subprocess, and the loaders."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from loadctl.protocol.keys import (
    KeyFileError,
    KeyPair,
    KeyPaths,
    add_agent,
    fresh_keypair,
    init_keys,
    load_agent_key_files,
    load_agent_keys,
    load_allowed,
    load_coordinator_keys,
    load_keypair,
    load_public_key,
)

CLI = [sys.executable, "-c", "from loadctl.keys_cmd import keys_group; keys_group()"]


def run_cli(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "LOADCTL_KEYS"}
    full_env.update(env or {})
    return subprocess.run(
        [*CLI, *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_user_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------- CLI


def test_init_creates_layout_with_strict_modes(tmp_path: Path) -> None:
    res = run_cli("init", "keys", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    root = tmp_path / "keys"
    paths = KeyPaths(root)
    assert mode(root) == 0o700
    assert mode(paths.agents_dir) == 0o700
    assert mode(paths.allowed_dir) == 0o700
    assert mode(paths.coordinator_secret) == 0o600
    assert mode(paths.coordinator_public) & 0o077 != 0o077  # public, readable
    # The output says what was written and where the public key goes.
    assert str(paths.coordinator_secret.relative_to(tmp_path)) in res.stdout
    assert str(paths.coordinator_public.relative_to(tmp_path)) in res.stdout
    assert "every agent" in res.stdout
    # pyzmq's certificate format: its own loader reads our files.
    pub, sec = zmq.auth.load_certificate(paths.coordinator_secret)
    assert sec is not None and zmq.curve_public(sec) == pub
    pub_only, no_secret = zmq.auth.load_certificate(paths.coordinator_public)
    assert pub_only == pub and no_secret is None
    assert load_coordinator_keys(root).public == pub


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run_cli("init", "keys", cwd=tmp_path).returncode == 0
    secret = KeyPaths(tmp_path / "keys").coordinator_secret
    before = secret.read_bytes()
    res = run_cli("init", "keys", cwd=tmp_path)
    assert_user_error(res, "coordinator.key_secret", "already exists", "refusing to overwrite")
    assert secret.read_bytes() == before


def test_init_with_missing_parents_and_default_dir(tmp_path: Path) -> None:
    assert run_cli("init", "a/b/keys", cwd=tmp_path).returncode == 0
    assert mode(tmp_path / "a/b/keys") == 0o700
    # No DIR: ./loadctl-keys, or $LOADCTL_KEYS.
    assert run_cli("init", cwd=tmp_path).returncode == 0
    assert (tmp_path / "loadctl-keys" / "coordinator.key").is_file()
    env_dir = tmp_path / "from-env"
    assert run_cli("init", cwd=tmp_path, env={"LOADCTL_KEYS": str(env_dir)}).returncode == 0
    assert (env_dir / "coordinator.key").is_file()


def test_add_agent_writes_pair_and_allow_list(tmp_path: Path) -> None:
    assert run_cli("init", cwd=tmp_path).returncode == 0  # ./loadctl-keys
    res = run_cli("add-agent", "edge-1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    paths = KeyPaths(tmp_path / "loadctl-keys")
    secret, public = paths.agent_secret("edge-1"), paths.agent_public("edge-1")
    allowed = paths.allowed_public("edge-1")
    assert mode(secret) == 0o600
    assert public.is_file() and allowed.is_file()
    # What to copy to the agent machine.
    for path in (secret, public, allowed, paths.coordinator_public):
        assert str(path.relative_to(tmp_path)) in res.stdout
    assert "agent machine" in res.stdout

    keys = load_agent_keys(paths.root, "edge-1")
    assert keys.coordinator_public == load_coordinator_keys(paths.root).public
    assert load_allowed(paths.root) == {"edge-1": keys.own.public}
    assert load_public_key(public) == keys.own.public
    assert load_agent_key_files(secret, paths.coordinator_public) == keys

    # --dir and $LOADCTL_KEYS both work; an existing agent is never overwritten.
    assert run_cli("add-agent", "edge-2", "--dir", paths.root, cwd=tmp_path).returncode == 0
    env = {"LOADCTL_KEYS": str(paths.root)}
    assert run_cli("add-agent", "edge-3", cwd=tmp_path / "..", env=env).returncode == 0
    assert sorted(load_allowed(paths.root)) == ["edge-1", "edge-2", "edge-3"]
    before = secret.read_bytes()
    res = run_cli("add-agent", "edge-1", cwd=tmp_path)
    assert_user_error(res, "edge-1.key_secret", "already exists")
    assert secret.read_bytes() == before


def test_add_agent_user_errors(tmp_path: Path) -> None:
    res = run_cli("add-agent", "edge-1", "--dir", "nowhere", cwd=tmp_path)
    assert_user_error(res, "nowhere", "loadctl keys init nowhere")
    assert run_cli("init", "k", cwd=tmp_path).returncode == 0
    res = run_cli("add-agent", "../escape", "--dir", "k", cwd=tmp_path)
    assert_user_error(res, "invalid agent name")
    assert not (tmp_path / "escape.key_secret").exists()


def test_list_shows_coordinator_agents_and_allowed(tmp_path: Path) -> None:
    assert run_cli("init", "k", cwd=tmp_path).returncode == 0
    assert run_cli("add-agent", "a1", "--dir", "k", cwd=tmp_path).returncode == 0
    assert run_cli("add-agent", "a2", "--dir", "k", cwd=tmp_path).returncode == 0
    (tmp_path / "k" / "allowed" / "a2.key").unlink()  # revoked
    res = run_cli("list", "--dir", "k", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    root = tmp_path / "k"
    assert load_coordinator_keys(root).public.decode() in res.stdout
    a1 = load_agent_keys(root, "a1").own.public.decode()
    a2_line = next(line for line in res.stdout.splitlines() if line.strip().startswith("a2"))
    assert a1 in res.stdout
    assert "NOT admitted" in a2_line
    assert "allowed (1)" in res.stdout


def test_list_without_directory_is_a_user_error(tmp_path: Path) -> None:
    assert_user_error(run_cli("list", cwd=tmp_path), "loadctl-keys", "loadctl keys init")


@pytest.mark.parametrize(
    "content",
    [
        "garbage\n",
        'curve\n    public-key = "tooshort"\n',
        'curve\n    public-key = "' + "~" * 40 + '"\n',  # not Z85
    ],
    ids=["no-key", "short", "bad-alphabet"],
)
def test_malformed_key_file_is_one_line_exit_2(tmp_path: Path, content: str) -> None:
    assert run_cli("init", "k", cwd=tmp_path).returncode == 0
    assert run_cli("add-agent", "a1", "--dir", "k", cwd=tmp_path).returncode == 0
    bad = tmp_path / "k" / "allowed" / "a1.key"
    bad.write_text(content)
    assert_user_error(run_cli("list", "--dir", "k", cwd=tmp_path), str(Path("k/allowed/a1.key")))
    with pytest.raises(KeyFileError, match="malformed"):
        load_allowed(tmp_path / "k")


# ---------------------------------------------------------------------------- loaders


def one_line(err: pytest.ExceptionInfo[KeyFileError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_dir_and_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as err:
        load_coordinator_keys(tmp_path / "none")
    assert "loadctl keys init" in one_line(err)
    init_keys(tmp_path / "k")
    with pytest.raises(KeyFileError) as err:
        load_agent_keys(tmp_path / "k", "ghost")
    text = one_line(err)
    assert "ghost.key_secret" in text and "loadctl keys add-agent ghost" in text
    (tmp_path / "k" / "coordinator.key").unlink()
    add_agent_err = pytest.raises(KeyFileError, match="loadctl keys init")
    with add_agent_err:
        add_agent(tmp_path / "k", "a1")


def test_secret_file_open_to_group_or_other_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    files = add_agent(tmp_path / "k", "a1")
    for bad_mode in (0o640, 0o604, 0o644):
        os.chmod(files.secret, bad_mode)
        with pytest.raises(KeyFileError) as err:
            load_keypair(files.secret)
        assert f"chmod 600 {files.secret}" in one_line(err)
    os.chmod(files.secret, 0o400)  # stricter is fine
    assert load_keypair(files.secret).public == load_public_key(files.public)


def test_directory_in_place_of_key_file(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k" / "agents" / "a1.key_secret").mkdir()
    with pytest.raises(KeyFileError, match="is a directory"):
        load_agent_keys(tmp_path / "k", "a1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    secret = KeyPaths(tmp_path / "k").coordinator_secret
    os.chmod(secret, 0)
    with pytest.raises(KeyFileError, match="permission denied"):
        load_coordinator_keys(tmp_path / "k")


def test_mismatched_pair_and_secret_in_public_place(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    paths = KeyPaths(tmp_path / "k")
    other = fresh_keypair()
    text = paths.coordinator_secret.read_text()
    public = load_public_key(paths.coordinator_public).decode()
    paths.coordinator_secret.write_text(text.replace(public, other.public.decode()))
    with pytest.raises(KeyFileError, match="do not belong together"):
        load_coordinator_keys(paths.root)
    # A secret file copied into allowed/ is refused, not silently used.
    (paths.allowed_dir / "oops.key").write_text(text)
    with pytest.raises(KeyFileError, match="contains a secret key"):
        load_allowed(paths.root)


def test_fresh_keypair_and_repr_hides_secret() -> None:
    pair = fresh_keypair()
    assert len(pair.public) == 40 and len(pair.secret) == 40
    assert zmq.curve_public(pair.secret) == pair.public
    assert pair.secret.decode() not in repr(pair)
    assert fresh_keypair() != pair
    assert isinstance(pair, KeyPair)


def test_library_refuses_overwrite(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        init_keys(tmp_path / "k")
    add_agent(tmp_path / "k", "a1")
    with pytest.raises(KeyFileError, match="already exists"):
        add_agent(tmp_path / "k", "a1")
