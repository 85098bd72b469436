"""wsproxy: MongoDB change streams to browsers over WebSockets, for Flask
apps served by gunicorn's threaded workers.

The names below are imported on first use, not with the package: gunicorn
imports ``wsproxy.gunicorn`` (its config) in the master process, which must
set ``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "WSProxy": ".http.extension",
    "Principal": ".access",
    "AccessDenied": ".access",
    "WSProxyError": ".errors",
    "ConfigError": ".errors",
    "ClientError": ".errors",
    "FilterError": ".errors",
}

__all__ = [
    "WSProxy",
    "Principal",
    "AccessDenied",
    "WSProxyError",
    "ConfigError",
    "ClientError",
    "FilterError",
    "__version__",
]

if TYPE_CHECKING:
    from .access import AccessDenied, Principal
    from .errors import ClientError, ConfigError, FilterError, WSProxyError
    from .http.extension import WSProxy


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsproxy' has no attribute {name!r}")
