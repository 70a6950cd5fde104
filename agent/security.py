"""CURVE security for the agent's DEALER socket: its key pair + the pinned coordinator key.

Usage::

    security = ClientSecurity.from_dir(keys_dir, name)   # or ClientSecurity(insecure=True)
    sock = ctx.socket(zmq.DEALER)
    security.apply(sock)      # before connect
    sock.connect(endpoint)

The agent pins the coordinator's public key: a server that does not hold the
matching secret key cannot complete the handshake, so nothing is sent to it.
A refused or mis-pinned handshake is silent on the agent side (libzmq keeps
retrying); the link's own hello timeout is what reports it to the user.
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from loadctl.protocol.keys import (
    AgentKeys,
    KeyPair,
    load_agent_key_files,
    load_agent_keys,
)

__all__ = ["ClientSecurity"]


class ClientSecurity:
    """CURVE client options for the agent's socket, or a declared insecure mode."""

    def __init__(
        self,
        keys: KeyPair | None = None,
        server_public: bytes | None = None,
        *,
        insecure: bool = False,
    ) -> None:
        if insecure:
            if keys is not None or server_public is not None:
                raise ValueError("insecure=True takes no keys")
        elif keys is None or server_public is None:
            raise ValueError(
                "ClientSecurity needs the agent key pair and the coordinator public key, "
                "or insecure=True"
            )
        self._insecure = insecure
        self._keys = keys
        self._server_public = server_public

    @classmethod
    def from_agent_keys(cls, keys: AgentKeys) -> ClientSecurity:
        return cls(keys.own, keys.coordinator_public)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], name: str) -> ClientSecurity:
        """``DIR/agents/NAME.key_secret`` + ``DIR/coordinator.key`` (raises KeyFileError)."""
        return cls.from_agent_keys(load_agent_keys(directory, name))

    @classmethod
    def from_files(
        cls,
        secret_file: str | os.PathLike[str],
        coordinator_public_file: str | os.PathLike[str],
    ) -> ClientSecurity:
        """Explicit key files (raises KeyFileError)."""
        return cls.from_agent_keys(load_agent_key_files(secret_file, coordinator_public_file))

    @property
    def insecure(self) -> bool:
        return self._insecure

    @property
    def public_key(self) -> bytes | None:
        """This agent's public key (Z85), None when insecure."""
        return None if self._keys is None else self._keys.public

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Set the CURVE client options on ``socket``; call before connect."""
        if self._insecure or self._keys is None or self._server_public is None:
            return
        socket.curve_serverkey = self._server_public
        socket.curve_publickey = self._keys.public
        socket.curve_secretkey = self._keys.secret

    def describe(self) -> str:
        """One line for the log."""
        if self._insecure or self._keys is None or self._server_public is None:
            return "INSECURE cluster link: plaintext, the coordinator is not authenticated"
        return (
            f"CURVE cluster link: agent key {self._keys.public.decode('ascii')}, "
            f"coordinator pinned to {self._server_public.decode('ascii')}"
        )
