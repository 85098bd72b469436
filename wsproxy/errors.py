"""The package's exception types.

Every error a client can cause carries the WebSocket close code (or HTTP
status, before the upgrade) that reports it, so the view never has to guess.
"""


class WSProxyError(Exception):
    """Base class for every error raised by wsproxy."""


class ConfigError(WSProxyError):
    """A ``WSPROXY_*`` setting is missing or invalid."""


class ClientError(WSProxyError, ValueError):
    """Something a client sent is unacceptable.

    ``status`` is the HTTP status used when the error is found before the
    WebSocket upgrade; ``close_code`` the WebSocket close code used after it.
    """

    status = 400
    close_code = 1008

    def __init__(self, reason, *, status=None, close_code=None):
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        if close_code is not None:
            self.close_code = close_code


class FilterError(ClientError):
    """A subscription filter is malformed, too large, or uses an operator
    outside the safe subset."""
