"""The fast engine's wire format: requests serialised once, reply framing helpers."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

from loadctl import __version__
from loadctl.agent.http import HttpRequest, SendError

USER_AGENT: Final = f"loadctl/{__version__}"
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_METHOD: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Characters left as they are when a non-ASCII path is percent-encoded.
_PATH_SAFE: Final = "/?#[]@!$&'()*+,;=:%~-._"
_CONTROL_OR_SPACE: Final = re.compile("[\x00- \x7f]")  # percent-encoded in a path


def serialise_request(request: HttpRequest) -> bytes:
    """The request as it goes on the wire: head (Host, User-Agent, Content-Length) and body."""
    return serialise_head(request) + request.body


def serialise_head(request: HttpRequest) -> bytes:
    """The request head, with Host, User-Agent (unless given) and Content-Length."""
    method = request.method.upper()
    if not _METHOD.fullmatch(method):
        raise SendError(f"invalid HTTP method {request.method!r}")
    return request_line(method, request.target) + header_block(request, method)


def request_line(method: str, target: str) -> bytes:
    """`METHOD target HTTP/1.1` and its CRLF; a target with spaces, control or
    non-ASCII characters is percent-encoded."""
    if not target.isascii() or _CONTROL_OR_SPACE.search(target):
        target = quote(target, safe=_PATH_SAFE)
    return f"{method} {target} HTTP/1.1\r\n".encode()


def header_block(request: HttpRequest, method: str) -> bytes:
    """The header lines after the request line, through the blank line."""
    lines = []
    names = {name.lower() for name, _ in request.headers}
    if "host" not in names:
        lines.append(f"Host: {request.endpoint.authority}\r\n")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}\r\n")
    for name, value in request.headers:
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding"):
            continue  # the body is bytes: its length is set below
        if not name or any(c in name for c in ": \r\n\t") or "\r" in value or "\n" in value:
            raise SendError(f"invalid header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    if request.body or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(request.body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


def eof_delimited(head: bytes) -> bool:
    """True when the final (non-1xx) reply head in `head` has a body that ends at EOF."""
    for block in head.split(b"\r\n\r\n"):
        if block[9:10] == b"1":  # "HTTP/1.1 1xx": an informational reply, skip it
            continue
        for line in block.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                return False
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True
    return False
