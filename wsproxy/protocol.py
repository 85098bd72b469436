"""The wire contract: message types, hello's resume modes, the watcher's
states, close codes and their reasons, and what a client does about each
close (its policy and backoff, which the Python client takes from here).

Documented in docs/protocol.md (its tables of these enums are generated
from this file, comments included) and, briefly, in the README; every
client relies on these values, so they are defined here once and used by
name everywhere else. StrEnum and IntEnum members are their values on the
wire (JSON, close frames, metrics labels).
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


class ResumeMode(StrEnum):
    """How a connection's resume was served (``hello``'s ``resume``)."""

    NONE = "none"  # no resume_after: live from here on
    HISTORY = "history"  # replayed from this worker's history, then live
    CATCH_UP = "catch-up"  # replayed from MongoDB, then joined to the live feed
    SNAPSHOT = "snapshot"  # a snapshot=1 subscription: a fresh snapshot follows


class WatcherState(StrEnum):
    """The proxy's link to MongoDB, as clients are told it (``hello``'s and
    ``status``'s ``watcher``)."""

    STARTING = "starting"  # not connected yet (hello only)
    CONNECTED = "connected"  # the change stream is open: the feed is live
    RECONNECTING = "reconnecting"  # lost; events resume when it is back


class SourceState(StrEnum):
    """The watcher's own state (:attr:`wsproxy.stream.source.ChangeSource.state`,
    and ``/readyz``'s ``watcher``); clients are told it as a
    :class:`WatcherState` (:func:`watcher_state`)."""

    STARTING = "starting"  # not connected yet
    CONNECTED = "connected"  # the change stream is open
    RECONNECTING = "reconnecting"  # lost: retried with backoff
    FAILED = "failed"  # refused by the deployment or the settings: retried slowly
    STOPPED = "stopped"  # the worker is stopping


def watcher_state(source_state: SourceState) -> WatcherState:
    """The wire value for a :class:`SourceState`."""
    if source_state in (SourceState.STARTING, SourceState.CONNECTED):
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


class LocalCloseCode(IntEnum):
    """Close codes a client's own socket reports; no server sends them."""

    NO_STATUS = 1005  # closed without a code (or the connection just went)
    TLS_HANDSHAKE = 1015  # the TLS handshake failed, as a browser reports it


class ClientAction(StrEnum):
    """What a client does after a close (:data:`CLOSE_POLICY`) or a refused
    handshake (:data:`REFUSAL_ACTION`); the browser module's ``CLOSE_CODES``
    and ``REFUSALS`` say the same (tests/test_browser_client.py)."""

    RESUME = "resume"  # reconnect at once with resume_after (MAX_IMMEDIATE times)
    RETRY = "retry"  # reconnect with backoff and resume_after
    BUSY = "busy"  # as retry, but no sooner than BUSY_FLOOR (or Retry-After)
    STOP = "stop"  # do not reconnect: retrying cannot help
    SIGNIN = "signin"  # a refused handshake only: sign in again (401)


# What each close code means for a client; a code not listed: RETRY.
CLOSE_POLICY: dict[int, ClientAction] = {
    CloseCode.NORMAL: ClientAction.RETRY,
    CloseCode.GOING_AWAY: ClientAction.RESUME,
    CloseCode.UNSUPPORTED_DATA: ClientAction.STOP,
    LocalCloseCode.NO_STATUS: ClientAction.RETRY,  # a network cut
    CloseCode.ABNORMAL: ClientAction.RETRY,
    CloseCode.INVALID_DATA: ClientAction.STOP,
    CloseCode.POLICY: ClientAction.STOP,
    CloseCode.TOO_BIG: ClientAction.STOP,
    CloseCode.INTERNAL_ERROR: ClientAction.RETRY,
    CloseCode.TRY_AGAIN: ClientAction.BUSY,
    LocalCloseCode.TLS_HANDSHAKE: ClientAction.RETRY,
    CloseCode.SLOW_CONSUMER: ClientAction.RESUME,
}
# What a refused handshake's HTTP status means; any other: RETRY.
REFUSAL_ACTION: dict[int, ClientAction] = {
    400: ClientAction.STOP,
    401: ClientAction.SIGNIN,
    403: ClientAction.STOP,
    414: ClientAction.STOP,
    429: ClientAction.BUSY,
    500: ClientAction.STOP,
    503: ClientAction.BUSY,
}

# Reconnecting: capped exponential backoff with "equal jitter" (half the
# delay fixed, half random), in seconds.
BACKOFF_INITIAL = 0.5  # the first retry's delay, before jitter
BACKOFF_MAX = 30.0  # the longest
MAX_IMMEDIATE = 3  # RESUME reconnects in a row before backing off
RESUME_JITTER = 0.25  # an immediate resume waits up to this (a herd spreads)
BUSY_FLOOR = 5.0  # BUSY waits at least this (times 1 to 1.5)
STABLE_AFTER = 10.0  # a connection up this long resets the backoff


# RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_REASON_BYTES = 123


def clip_utf8(text: object, max_bytes: int, marker: str = "...") -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a
    character, with ``marker`` where it was cut. Lone surrogates (which
    cannot be sent) become "?"."""
    data = str(text).encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    keep = max_bytes - len(marker.encode("utf-8"))
    return data[:keep].decode("utf-8", "ignore") + marker


def close_reason(text: object) -> str:
    """Trim a close reason to what fits in a close frame."""
    return clip_utf8(text, MAX_REASON_BYTES)
