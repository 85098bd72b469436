"""Access: the pure rules of who may connect and what each client may see
or ask for. Nothing here does I/O or starts a thread.

* :mod:`wsproxy.access.principal`: principals, the bearer token, host and
  origin checks (its names are this package's own, the public
  ``wsproxy.access.Principal``, ``wsproxy.access.bearer_token``...);
* :mod:`wsproxy.access.filters`: the filter language;
* :mod:`wsproxy.access.redaction`: hidden fields;
* :mod:`wsproxy.access.documentquery`: a snapshot's query;
* :mod:`wsproxy.access.watchspec`: what the watcher may be told to watch;
* :mod:`wsproxy.access.sealing`: sealed resume ids.
"""

from .principal import (
    ANYONE,
    BEARER_SUBPROTOCOL,
    LOOPBACK_HOSTS,
    AccessDenied,
    Principal,
    bearer_token,
    check_host,
    check_origin,
)

__all__ = [
    "ANYONE",
    "BEARER_SUBPROTOCOL",
    "LOOPBACK_HOSTS",
    "AccessDenied",
    "Principal",
    "bearer_token",
    "check_host",
    "check_origin",
]
