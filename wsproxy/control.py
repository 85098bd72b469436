"""Messages from client to server: small JSON control messages only.

Accepted: ``{"type": "ping"}`` (answered with ``{"type": "pong"}``, for
pages that want an application-level liveness check). Anything else closes
the connection with a code that says why; a flood of valid messages is
rate-limited. Nothing here blocks or touches other clients.
"""

import json
import time

from . import codec, protocol


class RateLimit:
    """A token bucket: ``rate`` messages per second, bursts of ``burst``."""

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def allow(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def handler(rate, burst):
    """``on_message(client, data)`` for :meth:`Client.run`, with its own
    rate limit (one handler per connection)."""
    limit = RateLimit(rate, burst)

    def on_message(client, data):
        if not limit.allow():
            client.request_close(protocol.CLOSE_POLICY,
                                 f"too many messages (limit {rate}/s)")
            return
        if isinstance(data, (bytes, bytearray)):
            client.request_close(protocol.CLOSE_UNSUPPORTED_DATA,
                                 "binary messages are not accepted")
            return
        try:
            message = json.loads(data)
        except ValueError:
            client.request_close(protocol.CLOSE_POLICY, "message is not JSON")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            client.send_text(codec.control_message(protocol.PONG))
            return
        client.request_close(
            protocol.CLOSE_POLICY,
            f"unknown message type {str(kind)[:30]!r}; only ping is accepted")

    return on_message
