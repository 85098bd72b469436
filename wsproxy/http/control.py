"""Messages from client to server, and what a connection's handler thread
does between them.

Accepted (small JSON text messages only):

* ``{"type": "ping"}``, answered with ``{"type": "pong"}``, for pages that
  want an application-level liveness check;
* ``{"type": "subscribe", "ns": ..., "ops": ..., "filter": ...}``: the
  connection's subscription is replaced, with the same fields and checks
  as the URL's query (:func:`wsproxy.fanout.subscription.parse`), and answered
  with ``{"type": "subscribed"}``: every change before that reply was
  chosen by the old subscription, every change after it by the new one. A
  bad one is answered with ``{"type": "error", "reason": ...}`` and the
  connection keeps its old subscription. Replies come in the order of the
  messages.

Anything else closes the connection with a code that says why. How many
frames a client may send, and how large a message may be, is policed
before a message gets here (:class:`wsproxy.transport.websocket.FramePolicy`): a
subscribe costs one frame of that budget, like any message. Nothing here
blocks or touches other clients; the filter is compiled on the
connection's own thread.

While a connection is catching up from MongoDB (:mod:`wsproxy.stream.catchup`),
the stand-in the broadcaster offers changes to judges them by the
subscription the connection started with, so its messages wait (in
order) until the catch-up has handed over to the live feed and one pass
of the broadcaster has followed (a :class:`~wsproxy.fanout.hub.Barrier`): from
then on, the broadcaster judges every change by the connection's own,
current subscription.
"""

import collections
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from werkzeug.datastructures import MultiDict

from ..errors import ClientError
from ..fanout.hub import Barrier, Hub
from ..logsafe import shown
from ..protocol import (
    ClientMessageType,
    CloseCode,
    MessageType,
    SourceState,
    WatcherState,
    watcher_state,
)
from ..transport import codec

if TYPE_CHECKING:
    from ..fanout.connection import ClientConnection
    from ..fanout.subscription import Subscription
    from ..stream.catchup import CatchUp

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.control")

SUBSCRIBE_FIELDS = ("ns", "ops", "filter")
# Messages a connection may have waiting while it catches up (its frame
# budget allows a burst of WSPROXY_CLIENT_MESSAGE_BURST anyway).
MAX_WAITING = 32
# Seconds between looks at something only polling can see: the watcher
# leaving "starting", a catch-up handing over.
POLL_INTERVAL = 0.1
# The close reason for a message nested deeper than Python's JSON reader
# (or writer) can follow.
TOO_DEEP = "message is nested too deep"


def subscription_args(message: Mapping[str, Any]) -> MultiDict[str, str]:
    """A subscribe message's fields as the URL query would give them (a
    MultiDict for :func:`wsproxy.fanout.subscription.parse`); ClientError if a
    field is unknown or of the wrong type. Omitted or null: everything
    granted, as a missing query parameter."""
    unknown = sorted(set(message) - {"type", *SUBSCRIBE_FIELDS})
    if unknown:
        raise ClientError(f"subscribe: unknown field {unknown[0][:40]!r}")
    pairs: list[tuple[str, str]] = []
    for name in ("ns", "ops"):
        value = message.get(name)
        if value is None:
            continue
        values = [value] if isinstance(value, str) else value
        if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise ClientError(f"{name}: a string or a list of strings")
        # An empty list is nothing, never everything (parse refuses it).
        pairs += [(name, v) for v in values] or [(name, "")]
    spec = message.get("filter")
    if isinstance(spec, dict):
        # Re-read as text: Extended JSON values ({"$oid": ...}) and the
        # size limit apply as for ?filter=.
        pairs.append(("filter", json.dumps(spec)))
    elif isinstance(spec, str):
        pairs.append(("filter", spec))
    elif spec is not None:
        raise ClientError("filter: a JSON object, or its text")
    return MultiDict(pairs)


class Control:
    """One connection's messages and wake-ups: ``on_message`` and
    ``on_wake`` for :meth:`ClientConnection.run`. Used by the connection's
    handler thread, and by the broadcaster only through the barriers it
    submits.

    ``parse(args)`` builds the subscription for the connection's principal
    (raises ClientError); ``hub`` and ``stopping`` take the barriers;
    ``watcher()`` is the watcher's state (:attr:`ChangeSource.state`)."""

    def __init__(
        self,
        parse: "Callable[[MultiDict[str, str]], Subscription]",
        *,
        hub: Hub | None = None,
        stopping: threading.Event | None = None,
        watcher: Callable[[], SourceState] | None = None,
        describe: "Callable[[Subscription], dict[str, Any]] | None" = None,
    ) -> None:
        self._parse = parse
        # subscription -> fields the "subscribed" reply tells about it
        self._describe = describe or (lambda subscription: {})
        self._hub = hub
        self._stopping = stopping
        self._watcher = watcher
        # The catch-up's stand-in while the connection resumes from
        # MongoDB; None once the broadcaster offers changes to it directly.
        self.catchup: CatchUp | None = None
        self._handed_over = False  # set by the barrier, then read here
        self._barrier_sent = False
        # messages, while catching up
        self._waiting: collections.deque[dict[str, Any]] = collections.deque()
        # Whether hello told this client the watcher is "starting": it has
        # not been told yet when that ends (the watcher announces only
        # its losses and recoveries).
        self._starting = False

    # -- hello -------------------------------------------------------------

    def told(self, source_state: SourceState) -> WatcherState:
        """The watcher state hello tells the client (called by hello)."""
        wire = watcher_state(source_state)
        self._starting = wire is WatcherState.STARTING
        return wire

    # -- messages ----------------------------------------------------------

    def on_message(self, client: "ClientConnection", data: str | bytes) -> None:
        if isinstance(data, (bytes, bytearray)):
            client.request_close(
                CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted"
            )
            return
        try:
            message = json.loads(data)
        except ValueError:
            client.request_close(CloseCode.POLICY, "message is not JSON")
            return
        except RecursionError:  # "[" * 2000 fits in 4 KB
            client.request_close(CloseCode.POLICY, TOO_DEEP)
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in tuple(ClientMessageType):
            client.request_close(
                CloseCode.POLICY,
                f"unknown message type {str(kind)[:30]!r}; only ping and "
                "subscribe are accepted",
            )
            return
        if self.catchup is not None and (
            kind == ClientMessageType.SUBSCRIBE or self._waiting
        ):
            if len(self._waiting) >= MAX_WAITING:
                client.request_close(
                    CloseCode.POLICY, "too many messages while resuming"
                )
                return
            self._waiting.append(message)
            return
        self._handle(client, message)

    def _handle(self, client: "ClientConnection", message: dict[str, Any]) -> None:
        if message["type"] == ClientMessageType.PING:
            client.send_text(codec.control_message(MessageType.PONG))
            return
        try:
            if client.subscription.snapshot is not None:
                raise ClientError(
                    "a snapshot subscription cannot be changed; connect with "
                    "the new one"
                )
            subscription = self._parse(subscription_args(message))
            if subscription.snapshot is not None:
                raise ClientError("snapshot=1 is given on the WebSocket URL")
        except ClientError as exc:
            client.send_text(
                codec.control_message(MessageType.ERROR, reason=exc.reason)
            )
            return
        except RecursionError:  # a filter json.loads only just read
            client.request_close(CloseCode.POLICY, TOO_DEEP)
            return
        # Routed by both while the one replaces the other, so no change
        # either admits can slip between them (wsproxy.fanout.routing).
        if self._hub is not None:
            self._hub.reroute(client, subscription)
        replaced = client.replace_subscription(
            subscription,
            codec.frame(
                codec.control_message(
                    MessageType.SUBSCRIBED, **self._describe(subscription)
                )
            ),
        )
        if self._hub is not None:
            self._hub.reroute(client)
        if replaced:
            log.info(
                "client %s subscribed (ns: %s)",
                client.id,
                shown(",".join(sorted(subscription.namespaces or ())) or "*"),
            )

    # -- wake-ups ----------------------------------------------------------

    def on_wake(self, client: "ClientConnection") -> float | None:
        """Hand-over after a catch-up, and the watcher's start; returns
        when to look again (None: at the next wake-up)."""
        again: float | None = None
        if self.catchup is not None:
            again = self._follow_catchup(client)
        if self._starting:
            # Told "starting" only where the watcher's state is known.
            state = cast("Callable[[], SourceState]", self._watcher)()
            if state == SourceState.STARTING:
                again = POLL_INTERVAL
            else:
                self._starting = False
                self._submit(lambda: self._tell_connected(client))
        return again

    def _follow_catchup(self, client: "ClientConnection") -> float | None:
        if self._handed_over:
            self.catchup = None
            while self._waiting and not client.closing:
                self._handle(client, self._waiting.popleft())
            return None
        if cast("CatchUp", self.catchup).spliced and not self._barrier_sent:
            # Spliced, but the broadcaster may still be judging one change
            # by the stand-in's subscription: after the barrier it is not.
            self._barrier_sent = True

            def handed_over() -> None:
                self._handed_over = True
                client.wake()

            self._submit(handed_over)
        # A splice's wake-up may come before it is visible here: look again
        # while something waits for it.
        return POLL_INTERVAL if self._waiting else None

    def _tell_connected(self, client: "ClientConnection") -> None:
        # On the broadcaster thread, in order with the watcher's own
        # announcements: only if the watcher is connected now (a later
        # loss is announced after this).
        if cast("Callable[[], SourceState]", self._watcher)() == SourceState.CONNECTED:
            client.offer(
                codec.frame(
                    codec.control_message(
                        MessageType.STATUS, watcher=WatcherState.CONNECTED, detail=""
                    )
                )
            )

    def _submit(self, callback: Callable[[], object]) -> None:
        # Only with a hub and a stopping event: the barriers are for a
        # connection catching up, or told the watcher was starting.
        cast(Hub, self._hub).submit(
            Barrier(callback), cast(threading.Event, self._stopping)
        )
