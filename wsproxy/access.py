"""Who may connect, and what they may see.

The host app registers an authorizer: a callable that receives the Flask
request *before* the WebSocket upgrade (cookie session, headers and query
string all available) and returns a :class:`Principal` to allow the
connection, ``None`` to refuse it as unauthenticated (HTTP 401), or raises
:class:`AccessDenied` (HTTP 403). Without an authorizer every client gets
:data:`ANYONE`: the whole watched scope, minus the operator's hidden fields.
"""

from urllib.parse import urlsplit

from .errors import ClientError

# A browser cannot set headers on a WebSocket, so a token may also travel as
# the subprotocol list ["bearer", "<token>"]; the server answers "bearer".
BEARER_SUBPROTOCOL = "bearer"


class AccessDenied(ClientError):
    """Raised by an authorizer: the client is known but not allowed (403)."""

    status = 403

    def __init__(self, reason="forbidden"):
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

    def __init__(self, name=None, namespaces=None, filter=None, hide=()):
        if isinstance(namespaces, str) or isinstance(hide, str):
            # A bare string would be read as a set of its characters.
            raise TypeError("namespaces and hide take a collection of "
                            "strings, not one string")
        self.name = name
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        self.filter = filter
        self.hide = tuple(hide)

    def __repr__(self):
        return f"<Principal {self.name!r}>"


ANYONE = Principal("anonymous")


def bearer_token(request):
    """The bearer token from ``Authorization``, ``?access_token=`` or the
    ``Sec-WebSocket-Protocol`` list, in that order; None if there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.args.get("access_token"):
        return request.args["access_token"]
    offered = [p.strip() for p in
               request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) == 2 and offered[0] == BEARER_SUBPROTOCOL and offered[1]:
        return offered[1]
    return None


def _netloc(origin):
    parts = urlsplit(origin)
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    port = parts.port
    host = parts.hostname.lower()
    return host if port in (None, default) else f"{host}:{port}"


def check_origin(request, allowed):
    """Refuse cross-site WebSocket hijacking: a browser page from another
    origin riding on this site's cookies. ``allowed`` None means same-origin
    only; ``["*"]`` disables the check. Clients that send no Origin (not
    browsers) are not subject to it: only browsers attach cookies
    cross-site."""
    origin = request.headers.get("Origin")
    if origin is None or (allowed and "*" in allowed):
        return
    if allowed and origin.rstrip("/") in allowed:
        return
    host = request.host.lower()
    host_default = host.rsplit(":", 1)
    if len(host_default) == 2 and host_default[1] in ("80", "443"):
        host = host_default[0]
    if allowed is None and _netloc(origin) == host:
        return
    raise ClientError(f"origin {origin[:60]} is not allowed", status=403)
