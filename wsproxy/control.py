"""Messages from client to server: small JSON control messages only.

Accepted: ``{"type": "ping"}`` (answered with ``{"type": "pong"}``, for
pages that want an application-level liveness check). Anything else closes
the connection with a code that says why. How many frames a client may
send, and how large a message may be, is policed before a message gets
here (:class:`wsproxy.websocket.FramePolicy`). Nothing here blocks or
touches other clients.
"""

import json

from . import codec
from .protocol import CloseCode, MessageType


def on_message(client, data):
    """``on_message(client, data)`` for :meth:`ClientConnection.run`."""
    if isinstance(data, (bytes, bytearray)):
        client.request_close(CloseCode.UNSUPPORTED_DATA,
                             "binary messages are not accepted")
        return
    try:
        message = json.loads(data)
    except ValueError:
        client.request_close(CloseCode.POLICY, "message is not JSON")
        return
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "ping":
        client.send_text(codec.control_message(MessageType.PONG))
        return
    client.request_close(
        CloseCode.POLICY,
        f"unknown message type {str(kind)[:30]!r}; only ping is accepted")
