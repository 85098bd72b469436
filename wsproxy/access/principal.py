"""Who may connect, and what they may see.

The host app registers an authorizer: a callable that receives the Flask
request *before* the WebSocket upgrade (cookie session, headers and query
string all available) and returns a :class:`Principal` to allow the
connection, ``None`` to refuse it as unauthenticated (HTTP 401), or raises
:class:`AccessDenied` (HTTP 403). Without an authorizer every client gets
:data:`ANYONE`: the whole watched scope, minus the operator's hidden fields.
"""

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import ClientError

# A browser cannot set headers on a WebSocket, so a token may also travel as
# the subprotocol list ["bearer", "<token>"]; the server answers "bearer".
BEARER_SUBPROTOCOL = "bearer"


class AccessDenied(ClientError):
    """Raised by an authorizer: the client is known but not allowed (403)."""

    status = 403

    def __init__(self, reason: str = "forbidden") -> None:
        super().__init__(reason)


class Principal:
    """What one connection is allowed.

    ``namespaces``: ``"db"`` / ``"db.coll"`` strings it may watch, or None
    for the whole watched scope; an empty set grants nothing (the connection
    is refused with 403). ``filter``: a filter (JSON text or dict, the same
    language as ``?filter=``) every event must also match; it sees the whole
    event, hidden fields included. ``hide``: dotted document fields removed
    from everything sent to it.
    """

    def __init__(
        self,
        name: str | None = None,
        namespaces: Iterable[str] | None = None,
        filter: str | Mapping[str, Any] | None = None,
        hide: Iterable[str] = (),
    ) -> None:
        if isinstance(namespaces, str) or isinstance(hide, str):
            # A bare string would be read as a set of its characters.
            raise TypeError(
                "namespaces and hide take a collection of strings, not one string"
            )
        self.name = name
        self.namespaces: frozenset[str] | None = (
            frozenset(namespaces) if namespaces is not None else None
        )
        self.filter = filter
        self.hide: tuple[str, ...] = tuple(hide)

    def __repr__(self) -> str:
        return f"<Principal {self.name!r}>"


ANYONE = Principal("anonymous")


def bearer_token(request: Any) -> str | None:
    """The bearer token from ``Authorization``, ``?access_token=`` or the
    ``Sec-WebSocket-Protocol`` list, in that order; None if there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.args.get("access_token"):
        return request.args["access_token"]
    offered = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
    ]
    if len(offered) == 2 and offered[0] == BEARER_SUBPROTOCOL and offered[1]:
        return offered[1]
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HOSTNAME = re.compile(r"[a-z0-9.\-]+|\[[0-9a-f:.]+\]")
# Host names a loopback-bound server answers to when WSPROXY_ALLOWED_HOSTS
# is not set: anything else reaching it is a rebound DNS name.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _parse(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of an origin or ``//host:port``; ClientError
    (400) if it is not one. The port is None when it is the default."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ClientError(f"malformed {url[:60]!r}") from None
    host = (
        parts.netloc.rpartition("@")[2].rsplit(":", 1)[0]
        if port is not None
        else parts.netloc
    ).lower()
    if not host or not _HOSTNAME.fullmatch(host) or parts.username:
        raise ClientError(f"malformed {url[:60]!r}")
    if port == _DEFAULT_PORTS.get(parts.scheme):
        port = None
    return parts.scheme, host, port


def _is_loopback(address: Any) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except (TypeError, ValueError):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def check_host(request: Any, allowed: Iterable[str] | None, local_address: Any) -> None:
    """Refuse DNS rebinding: a page on another site whose name was made to
    point at this server reaches it with its own name in ``Host``.
    ``allowed`` lists the names this server answers to (``".example.com"``
    also matches its subdomains, ``"*"`` anything); None means the
    loopback names when the connection arrived on a loopback address, and
    no check otherwise."""
    if allowed is None:
        if not _is_loopback(local_address):
            return
        allowed = LOOPBACK_HOSTS
    if "*" in allowed:
        return
    _, host, _ = _parse(request.scheme + "://" + request.host)
    for pattern in allowed:
        pattern = pattern.lower()
        if host == pattern or (
            pattern.startswith(".") and (host.endswith(pattern) or host == pattern[1:])
        ):
            return
    raise ClientError(f"host {host[:60]} is not allowed; see WSPROXY_ALLOWED_HOSTS")


def check_origin(request: Any, allowed: Iterable[str] | None) -> None:
    """Refuse cross-site WebSocket hijacking: a browser page from another
    origin riding on this site's cookies. ``allowed`` None means same-origin
    only; ``["*"]`` disables the check. Clients that send no Origin (not
    browsers) are not subject to it: only browsers attach cookies
    cross-site. A malformed Origin is a 400."""
    origin = request.headers.get("Origin")
    if origin is None or (allowed and "*" in allowed):
        return
    if allowed and origin.rstrip("/") in allowed:
        return
    if origin == "null":  # an opaque origin (sandbox, file:): never ours
        raise ClientError("origin null is not allowed", status=403)
    scheme, host, port = _parse(origin)
    if not allowed:
        _, own_host, own_port = _parse(request.scheme + "://" + request.host)
        # The request's scheme is only known to be https when TLS ends here
        # (or ProxyFix says so); then an http page is another origin. An
        # http request may be TLS terminated by a proxy in front.
        same_scheme = request.scheme != "https" or scheme == "https"
        if same_scheme and (host, port) == (own_host, own_port):
            return
    raise ClientError(f"origin {origin[:60]} is not allowed", status=403)
