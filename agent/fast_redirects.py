"""Following redirects on the fast engine: the request a redirect leads to.

The rules are aiohttp's (so `follow_redirects: true` means the same on both
engines): 301, 302, 303, 307 and 308 with a Location are followed, at most 10 in
a row (then the request fails); a 303 turns any method but HEAD into a GET, and
301 and 302 turn a POST into a GET, without its body; 307 and 308 keep the method
and the body. A Location is resolved against the URL it answered, and may lead to
another server (another pool); the Authorization header is dropped when it does.
A redirect without a Location is the reply. The timeout covers the whole chain;
`bytes_in` adds up every reply of it, as they came off the socket.
"""

from __future__ import annotations

from typing import Final

from yarl import URL

from loadctl.agent.http import Endpoint, HttpRequest, Reply, SendError

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 10  # as aiohttp's default


def location(reply: Reply) -> str | None:
    """The Location of a redirect reply (None: not a redirect, or none given)."""
    if reply.status not in REDIRECTS:
        return None
    for name, value in reply.headers:
        if name.lower() == "location":
            return value
    return None


def next_request(request: HttpRequest, url: str, status: int, where: str) -> HttpRequest:
    """What `request`, sent to `url`, is followed by after a `status` to `where`."""
    try:
        target = URL(url).join(URL(where))
    except ValueError as exc:
        raise SendError(f"a redirect to an invalid URL {where!r}: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise SendError(f"a redirect to {where!r}, which is not an http(s) URL")
    method, body = request.method.upper(), request.body
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", b""
    same_origin = URL(url).origin() == target.origin()
    headers = tuple(
        (name, value)
        for name, value in request.headers
        if name.lower() != "host" and (same_origin or name.lower() != "authorization")
    )
    port = target.port or (443 if target.scheme == "https" else 80)
    endpoint = Endpoint(target.scheme, target.host, port)
    return HttpRequest(
        endpoint,
        method,
        target.raw_path_qs,
        headers,
        body,
        want_body=request.want_body,
        follow_redirects=True,
    )
