"""Which cluster endpoints may run without CURVE.

Plaintext is safe only where no other machine can reach the socket: ipc://
(a path in a 0700 directory) and loopback TCP. Anything else needs keys, or an
explicit --insecure that is logged loudly.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_local(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    parts = urlsplit(endpoint.replace("tcp://", "http://", 1))
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str) -> str | None:
    """A one-line problem with the endpoint's form, or None."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return None
    if not endpoint.startswith("tcp://"):
        return f"{endpoint!r} is not a ZeroMQ endpoint: use tcp://HOST:PORT or ipc:///path"
    parts = urlsplit(endpoint.replace("tcp://", "http://", 1))
    try:
        port = parts.port
    except ValueError:
        return f"{endpoint!r}: the port must be a number from 1 to 65535"
    if not parts.hostname or port is None:
        return f"{endpoint!r} needs a host and a port, e.g. tcp://10.0.0.5:5555"
    return None
