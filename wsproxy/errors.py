"""The package's exception types.

Every error a client can cause before the upgrade carries the HTTP status
that reports it, so the view never has to guess. After the upgrade errors
are close codes (:class:`wsproxy.protocol.CloseCode`).
"""


class WSProxyError(Exception):
    """Base class for every error raised by wsproxy."""


class ConfigError(WSProxyError):
    """A ``WSPROXY_*`` setting is missing or invalid."""


class ClientError(WSProxyError, ValueError):
    """Something a client sent is unacceptable, found before the WebSocket
    upgrade: ``status`` is the HTTP status that reports it, ``reason`` the
    JSON reason."""

    status = 400

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class FilterError(ClientError):
    """A subscription filter is malformed, too large, or uses an operator
    outside the safe subset."""
