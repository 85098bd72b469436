"""The wire contract: message types, close codes and their reasons.

Documented in the README ("Message format", "Close codes"); every later
feature and every client relies on these values.
"""

# Server -> client message types.
HELLO = "hello"      # first message: worker, watch scope, how resume was served
CHANGE = "change"    # one change event, with its resume token as "id"
RESET = "reset"      # events may have been lost; the page should reload state
STATUS = "status"    # the proxy's link to MongoDB changed state
PONG = "pong"        # reply to a client {"type": "ping"}

# WebSocket close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001          # worker shutting down: reconnect and resume
CLOSE_UNSUPPORTED_DATA = 1003    # binary frame: only JSON text is accepted
CLOSE_POLICY = 1008              # invalid subscription or control message
CLOSE_TOO_BIG = 1009             # incoming message over the size limit
CLOSE_INTERNAL_ERROR = 1011      # a bug on our side; the client may retry
CLOSE_TRY_AGAIN = 1013           # worker full: retry later or elsewhere
CLOSE_SLOW_CONSUMER = 4008       # outbox overflowed: reconnect and resume

_MAX_REASON_BYTES = 123  # RFC 6455: close payload 125 bytes minus the code


def close_reason(text):
    """Trim a close reason to what fits in a close frame (UTF-8 safe)."""
    data = text.encode("utf-8")
    if len(data) <= _MAX_REASON_BYTES:
        return text
    return data[:_MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."
