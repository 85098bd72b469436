"""wsproxy: MongoDB change streams to browsers over WebSockets, for Flask
apps served by gunicorn's threaded workers."""

from .errors import (ClientError, ConfigError, EmbeddedServerError,
                     FilterError, WSProxyError)
from .access import AccessDenied, Principal
from .extension import WSProxy

__version__ = "0.1.0"

__all__ = ["WSProxy", "Principal", "AccessDenied", "WSProxyError", "ConfigError", "ClientError",
           "FilterError", "EmbeddedServerError", "__version__"]
