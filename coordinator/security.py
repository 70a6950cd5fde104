"""CURVE security for the coordinator's ROUTER socket: encryption + an allow-list.

Usage (the order matters)::

    security = ServerSecurity.from_dir(keys_dir)    # or ServerSecurity(insecure=True)
    log.warning(...) if security.insecure else log.info(security.describe())
    security.start(ctx)            # ZAP handler first ...
    sock = ctx.socket(zmq.ROUTER)
    security.apply(sock)           # ... then CURVE options ...
    sock.bind(endpoint)            # ... then bind
    ...
    sock.close(); security.stop()  # handler last

Design notes
------------

* A CURVE server socket *without a running ZAP handler* admits every client
  that knows the server's public key: CURVE alone is encryption, not
  authentication. The allow-list is enforced only by the ZAP authenticator,
  so :meth:`ServerSecurity.start` must run before the socket binds, and
  :meth:`apply` refuses to configure a socket before it. :meth:`apply` also
  sets ``ZMQ_ZAP_ENFORCE_DOMAIN`` so that if the handler is missing or has been
  stopped, handshakes fail closed instead of falling back to "admit anyone".
* The handler is pyzmq's ``ThreadAuthenticator`` (ZAP in a background thread),
  not the asyncio one: handshakes keep being answered while the coordinator's
  event loop is busy merging snapshots, and ``start()`` works whether or not
  a loop is running yet. Nothing here blocks the caller's loop.
* The allow-list is checked by a credentials-provider callback (pyzmq's
  ``configure_curve_callback``) over an in-memory ``{name: public key}`` map
  (:func:`loadctl.protocol.keys.load_allowed`), which :meth:`set_allowed`
  replaces at run time (revoking = removing ``allowed/NAME.key`` + reload).
* Refused attempts are counted and remembered (public key in Z85, peer
  address) and logged at WARNING, rate-limited: a refused peer reconnects
  every ~100 ms, and a scanner can spray fresh keys.
* An admitted connection's ZAP user id is the agent's name from the
  allow-list, so every message the ROUTER receives carries it: with
  ``recv_multipart(copy=False)``, ``frame.get("User-Id")`` is the agent name
  (in insecure mode there is no ZAP and ``get`` raises ``zmq.ZMQError``).
* A handshake with a client that pinned a *wrong server key* fails inside
  libzmq before ZAP is asked (the client's HELLO cannot be decrypted), so it
  is not counted in :attr:`refused`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from loadctl.protocol.keys import KeyPair, load_allowed, load_coordinator_keys

__all__ = ["ZAP_DOMAIN", "Refusal", "ServerSecurity"]

ZAP_DOMAIN = "loadctl"
_MAX_TRACKED_KEYS = 256  # distinct refused keys remembered (bounded against key spraying)
_LOG_BURST = 5  # refusal warnings per log interval, across all keys

_log = logging.getLogger("loadctl.coordinator.security")


@dataclass(frozen=True)
class Refusal:
    """A public key the coordinator refused, and where it last came from."""

    public_key: str  # Z85, 40 characters
    address: str  # peer IP address as libzmq reports it
    count: int  # refusals of this key so far
    last_seen: float  # time.time() of the latest refusal


@dataclass
class _RefusalState:
    address: str
    count: int = 0
    last_seen: float = 0.0
    last_logged: float | None = None  # time.monotonic()
    unlogged: int = 0


class _Authenticator(ThreadAuthenticator):
    """ZAP handler that asks its :class:`ServerSecurity` about every CURVE key.

    It is also its own credentials provider (``callback(domain, key)``); it
    remembers the peer address of the request being handled so that refusals
    can name it (pyzmq's callback receives only the domain and the key).
    Requests are handled one at a time on the authenticator thread.
    """

    def __init__(self, context: zmq.Context[Any], owner: ServerSecurity) -> None:
        super().__init__(context=context, log=logging.getLogger("loadctl.coordinator.zap"))
        self._owner = owner
        self._peer = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        try:
            await super().handle_zap_message(msg)
        finally:
            self._peer = ""

    def callback(self, domain: str, key: bytes) -> bool:
        return self._owner._check(key, self._peer)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._owner._name_for(z85.encode(client_public_key))


class ServerSecurity:
    """CURVE server setup for the coordinator's ROUTER, or a declared insecure mode.

    ``ServerSecurity(keys, allowed)`` admits only the public keys in
    ``allowed`` (``{agent name: Z85 public key}``); ``ServerSecurity(insecure=True)``
    does nothing at all (plaintext, no authentication): the caller must log
    :meth:`describe` loudly as a warning.
    """

    def __init__(
        self,
        keys: KeyPair | None = None,
        allowed: Mapping[str, bytes] | None = None,
        *,
        insecure: bool = False,
        log: logging.Logger | None = None,
        log_interval: float = 10.0,
    ) -> None:
        if insecure:
            if keys is not None or allowed is not None:
                raise ValueError("insecure=True takes no keys")
        elif keys is None or allowed is None:
            raise ValueError("ServerSecurity needs keys and an allow-list, or insecure=True")
        self._insecure = insecure
        self._keys = keys
        self._log = log or _log
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._allowed: dict[str, bytes] = {}
        self._names: dict[bytes, str] = {}
        if allowed is not None:
            self.set_allowed(allowed)
        self._auth: _Authenticator | None = None
        self._ctx_handle: int | None = None
        self._admitted = 0
        self._refused = 0
        self._recent: OrderedDict[bytes, _RefusalState] = OrderedDict()
        self._window_start = 0.0
        self._window_logged = 0
        self._window_unlogged = 0

    @classmethod
    def from_dir(cls, directory: str, **kwargs: Any) -> ServerSecurity:
        """Load ``DIR/coordinator.key_secret`` and ``DIR/allowed/*.key``.

        Raises :class:`loadctl.protocol.keys.KeyFileError` on user mistakes.
        """
        return cls(load_coordinator_keys(directory), load_allowed(directory), **kwargs)

    # ------------------------------------------------------------------ state

    @property
    def insecure(self) -> bool:
        return self._insecure

    @property
    def public_key(self) -> bytes | None:
        """The coordinator's public key (Z85) that agents pin; None when insecure."""
        return None if self._keys is None else self._keys.public

    @property
    def running(self) -> bool:
        return self._auth is not None

    @property
    def allowed(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._allowed)

    @property
    def admitted(self) -> int:
        """CURVE handshakes the allow-list admitted."""
        with self._lock:
            return self._admitted

    @property
    def refused(self) -> int:
        """CURVE handshakes refused because the client key is not allow-listed."""
        with self._lock:
            return self._refused

    @property
    def refused_keys(self) -> list[str]:
        """Distinct refused public keys (Z85), most recent first."""
        return [r.public_key for r in self.refusals()]

    def refusals(self) -> list[Refusal]:
        """Refused keys with their last address and count, most recent first."""
        with self._lock:
            return [
                Refusal(key.decode("ascii"), st.address, st.count, st.last_seen)
                for key, st in reversed(self._recent.items())
            ]

    def set_allowed(self, allowed: Mapping[str, bytes]) -> None:
        """Replace the allow-list (takes effect for the next handshake)."""
        names: dict[bytes, str] = {}
        for name, key in allowed.items():
            names.setdefault(bytes(key), name)
        with self._lock:
            self._allowed = {name: bytes(key) for name, key in allowed.items()}
            self._names = names

    def describe(self) -> str:
        """One line for the log: what protects the cluster link."""
        if self._insecure or self._keys is None:
            return (
                "INSECURE cluster link: plaintext, no authentication - anyone who can reach "
                "the coordinator port can join as an agent and read every plan; "
                "use `loadctl keys init` for CURVE"
            )
        with self._lock:
            names = sorted(self._allowed)
        shown = ", ".join(names[:10]) + (f", ... (+{len(names) - 10})" if len(names) > 10 else "")
        return (
            f"CURVE cluster link: encrypted, coordinator key {self._keys.public.decode('ascii')}, "
            f"admits {len(names)} agent key(s)" + (f": {shown}" if names else " (none!)")
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self, ctx: zmq.Context[Any]) -> None:
        """Start the ZAP authenticator on ``ctx``. Call before binding the socket.

        One ZAP handler per context: a second one (ours or anyone's) fails.
        """
        if self._insecure:
            return
        if self._auth is not None:
            raise RuntimeError("ServerSecurity already started")
        auth = _Authenticator(ctx, self)
        try:
            auth.start()
        except zmq.ZMQError as e:
            auth.stop()
            raise RuntimeError(
                f"cannot start the ZAP authenticator ({e}); is another one running on this context?"
            ) from e
        # Our callback decides about every CURVE key of the loadctl domain.
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=auth)
        self._auth = auth
        self._ctx_handle = ctx.underlying

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server checked by our authenticator (before bind)."""
        if self._insecure or self._keys is None:
            return
        if self._auth is None:
            raise RuntimeError(
                "start() the ZAP authenticator before apply(): a CURVE server without "
                "one admits any client that knows the server key"
            )
        if socket.context.underlying != self._ctx_handle:
            raise RuntimeError(
                "socket belongs to another zmq context than the one the authenticator runs on"
            )
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler -> refuse, not admit
        socket.curve_secretkey = self._keys.secret
        socket.curve_publickey = self._keys.public
        socket.curve_server = True

    def stop(self) -> None:
        """Stop the authenticator (close the sockets first). Idempotent."""
        auth, self._auth = self._auth, None
        self._ctx_handle = None
        if auth is not None:
            auth.stop()

    # ------------------------------------------------------------------ ZAP side
    # Called on the authenticator thread.

    def _name_for(self, key_z85: bytes) -> str:
        with self._lock:
            return self._names.get(key_z85, "unknown")

    def _check(self, key_z85: bytes, address: str) -> bool:
        with self._lock:
            if key_z85 in self._names:
                self._admitted += 1
                return True
            self._refused += 1
            message = self._record_refusal(key_z85, address)
        if message is not None:
            self._log.warning("%s", message)
        return False

    def _record_refusal(self, key: bytes, address: str) -> str | None:
        """Update the refusal records; return a log line if one is due (lock held)."""
        wall, now = time.time(), time.monotonic()
        st = self._recent.pop(key, None) or _RefusalState(address)
        st.address, st.count, st.last_seen = address, st.count + 1, wall
        self._recent[key] = st  # most recent last
        while len(self._recent) > _MAX_TRACKED_KEYS:
            self._recent.popitem(last=False)

        if st.last_logged is not None and now - st.last_logged < self._log_interval:
            st.unlogged += 1
            return None
        if now - self._window_start >= self._log_interval:
            self._window_start, self._window_logged = now, 0
        if self._window_logged >= _LOG_BURST:
            self._window_unlogged += 1
            st.unlogged += 1
            return None
        self._window_logged += 1
        repeats = f" ({st.unlogged} more since last logged)" if st.unlogged else ""
        others = (
            f"; {self._window_unlogged} other refusal(s) not logged"
            if self._window_unlogged
            else ""
        )
        st.last_logged, st.unlogged, self._window_unlogged = now, 0, 0
        return (
            f"refused agent from {address or '?'}: public key {key.decode('ascii')} is not "
            f"allow-listed (refusal #{st.count} of this key{repeats}{others}); to admit it, "
            "put its .key file in the coordinator's allowed/ directory"
        )
