"""The wire contract: message types, close codes and their reasons.

Documented in docs/protocol.md (its tables of these enums are generated
from this file, comments included) and, briefly, in the README; every
client relies on these values, so they are defined here once and used by
name everywhere else.
"""

from enum import IntEnum, StrEnum


class MessageType(StrEnum):
    """The ``type`` of every server -> client message."""

    HELLO = "hello"  # first message: worker, watch scope, how resume was served
    CHANGE = "change"  # one change event, with its sealed resume token as "id"
    RESET = "reset"  # events may have been lost; the page should reload state
    STATUS = "status"  # the proxy's link to MongoDB changed state
    PONG = "pong"  # reply to a client {"type": "ping"}
    SUBSCRIBED = "subscribed"  # reply to "subscribe": the new one applies from here
    ERROR = "error"  # reply to a refused "subscribe"; nothing changed
    SNAPSHOT = "snapshot"  # a batch of current documents (snapshot=1)
    SNAPSHOT_END = "snapshot_end"  # the snapshot is complete; changes follow
    LEAVE = "leave"  # a held document stopped matching: drop it (snapshot=1)


class ClientMessageType(StrEnum):
    """The ``type`` of every client -> server message."""

    PING = "ping"  # answered with "pong"
    SUBSCRIBE = "subscribe"  # replace the subscription: "subscribed" or "error"


class WatcherState(StrEnum):
    """The proxy's link to MongoDB, as clients are told it (``hello``'s and
    ``status``'s ``watcher``)."""

    STARTING = "starting"  # not connected yet (hello only)
    CONNECTED = "connected"  # the change stream is open: the feed is live
    RECONNECTING = "reconnecting"  # lost; events resume when it is back


def watcher_state(source_state):
    """The wire value for a :class:`~wsproxy.stream.source.ChangeSource` state."""
    if source_state in (WatcherState.STARTING, WatcherState.CONNECTED):
        return WatcherState(source_state)
    return WatcherState.RECONNECTING  # reconnecting, failed, stopped


class CloseCode(IntEnum):
    """WebSocket close codes wsproxy sends, or reports in its log."""

    NORMAL = 1000
    GOING_AWAY = 1001  # worker shutting down: reconnect and resume
    UNSUPPORTED_DATA = 1003  # binary frame: only JSON text is accepted
    INVALID_DATA = 1007  # a text frame that is not UTF-8 (simple-websocket's)
    ABNORMAL = 1006  # never sent: the connection ended without a close
    POLICY = 1008  # unknown or malformed message, or over the frame budget
    TOO_BIG = 1009  # incoming message over the size limit
    INTERNAL_ERROR = 1011  # a bug, or the database refused a catch-up: retry
    TRY_AGAIN = 1013  # too busy or the database unreachable: retry later
    SLOW_CONSUMER = 4008  # outbox overflowed: reconnect and resume


# RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_REASON_BYTES = 123


def clip_utf8(text, max_bytes, marker="..."):
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a
    character, with ``marker`` where it was cut. Lone surrogates (which
    cannot be sent) become "?"."""
    data = str(text).encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    keep = max_bytes - len(marker.encode("utf-8"))
    return data[:keep].decode("utf-8", "ignore") + marker


def close_reason(text):
    """Trim a close reason to what fits in a close frame."""
    return clip_utf8(text, MAX_REASON_BYTES)
