"""A Python client for a wsproxy endpoint, for scripts and tests in
non-async code: a blocking iterator over changes that holds the server's
guarantees.

    from wsproxy.client import WSProxyClient, Change, Reset

    with WSProxyClient("ws://localhost:8000/ws", ns=["shop.orders"],
                       token="...") as feed:
        for item in feed:
            if isinstance(item, Change):
                print(item.id, item.event["operationType"])
            elif isinstance(item, Reset):
                reload_everything()   # events may have been missed

It reconnects with capped, jittered backoff, resumes after the last id it
received (``resume_after``), drops duplicates by id, gives ``reset`` as an
item, follows one close-code table (:data:`CLOSE_POLICY`, the same as the
browser module's) and one backoff, both the wire contract's
(:mod:`wsproxy.protocol`), and when a handshake is refused asks the server why
(the admission decision, fetched as JSON) and raises :class:`Refused` when
retrying cannot help (400, 403; :class:`AuthenticationRequired` on 401).

A :class:`LiveDocuments` built on a feed keeps the documents it shows
(a ``snapshot=True`` feed's, or a filtered feed's), as the browser module's
does.

Built on simple-websocket's ``Client`` (its reader thread answers the
server's pings); everything else runs in the thread that iterates. One
thread uses a client at a time; :meth:`WSProxyClient.close` may be called
from another.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import simple_websocket
from bson import json_util
from simple_websocket.ws import Base as _WebSocketBase
from wsproto import ConnectionType

from .. import liverules
from ..errors import WSProxyError
from ..protocol import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BUSY_FLOOR,
    CLOSE_POLICY,
    MAX_IMMEDIATE,
    REFUSAL_ACTION,
    RESUME_JITTER,
    STABLE_AFTER,
    ClientAction,
    ClientMessageType,
    CloseCode,
    LocalCloseCode,
    MessageType,
    WatcherState,
)
from . import ejson

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

__all__ = [
    "WSProxyClient",
    "Change",
    "Reset",
    "Status",
    "Snapshot",
    "Leave",
    "LiveDocuments",
    "DocumentsEvent",
    "Refused",
    "AuthenticationRequired",
    "CLOSE_POLICY",
    "REFUSAL_ACTION",
]

# What each close code and each refused handshake's status mean for the
# client (CLOSE_POLICY, REFUSAL_ACTION), and its backoff (MAX_IMMEDIATE,
# BUSY_FLOOR, STABLE_AFTER...): the wire contract's, wsproxy.protocol,
# re-exported here; the browser module's CLOSE_CODES and REFUSALS say the
# same (a test checks it).

# The heartbeat the client sends when the server has been quiet.
_PING = json.dumps({"type": ClientMessageType.PING.value})


@dataclass(frozen=True)
class Change:
    """One change: its (sealed, opaque) resume ``id`` and the event."""

    id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Reset:
    """Events may have been missed (the resume position was too old, or
    the server lost its own); the live feed continues after it."""

    lost: bool
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """The current matching documents of a ``snapshot=True`` subscription,
    in order; they replace whatever was held (after ``hello`` or a
    ``reset``). ``complete`` is False if more matched than the limit."""

    documents: list[dict[str, Any]]
    complete: bool
    id: str | None


@dataclass(frozen=True)
class Leave:
    """A document left what the subscription shows: drop it (its new
    content is not sent). ``reason``: ``"filter"`` (a change took it out of
    the filter) or ``"untracked"`` (the server stopped following it, over
    its limit: a client keeping it would not hear of its delete). ``id``:
    the change that caused it."""

    id: str | None
    document_key: dict[str, Any]
    reason: str = "filter"


@dataclass(frozen=True)
class _Notice:
    """A message the iterator does not yield but a :class:`LiveDocuments`
    must see in stream order: ``hello`` or ``subscribed``."""

    type: str
    message: dict[str, Any]


@dataclass(frozen=True)
class Status:
    """The server's link to MongoDB changed (only with ``statuses=True``):
    from a ``status`` message, or from the ``hello`` of a new connection
    (``detail`` empty), so a change while the client was away is reported
    too. Once per change; a first hello saying "connected" is not one."""

    watcher: str
    detail: str


class Refused(WSProxyError):
    """The server refused the connection (or a subscription) and retrying
    cannot help. ``status`` is the HTTP status of a refused handshake,
    ``code`` the close code of a connection closed for good."""

    def __init__(
        self, reason: str, *, status: int | None = None, code: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


class AuthenticationRequired(Refused):
    """401: no credentials (or expired ones): sign in, then connect again."""


class ConnectionLost(WSProxyError):
    """The connection went away before the server answered a subscribe;
    the subscription in force is still the previous one."""


class _Socket(simple_websocket.Client):
    """simple-websocket's client with timeouts on the TCP connect and the
    handshake (its own has none), and the port in ``Host``."""

    def __init__(
        self,
        url: str,
        *,
        subprotocols: Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        port = parts.port or (443 if secure else 80)
        self.host = parts.netloc.rpartition("@")[2]  # Host, with its port
        self.path = parts.path or "/"
        if parts.query:
            self.path += "?" + parts.query
        self.subprotocols = list(subprotocols or [])
        self.extra_headeers = list((headers or {}).items())  # (sic: theirs)
        self._accepted = False
        sock = socket.create_connection((parts.hostname, port), timeout)
        try:
            if secure:
                context = ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            try:
                _WebSocketBase.__init__(
                    self, sock, connection_type=ConnectionType.CLIENT
                )
            except simple_websocket.ConnectionError:
                if not self._accepted:
                    raise
                # Accepted, then closed in the same read (see handshake):
                # a connection that is over, whose messages receive() still
                # returns before it raises ConnectionClosed with the code.
                sock.close()
        except BaseException:
            sock.close()
            raise

    def handshake(self) -> None:
        try:
            super().handshake()
        finally:
            self.sock.settimeout(None)  # the reader thread blocks in recv
        self._accepted = True
        # simple-websocket's handshake takes only the accept from wsproto;
        # frames read together with it (wsproxy's hello often is) would wait
        # in wsproto until more bytes arrive. Handle them now. (The server's
        # close may be among them: then simple-websocket raises
        # ConnectionError, which __init__ takes for what it is.)
        self.connected = self._handle_events()


def _subscription(
    ns: Iterable[str] | str | None,
    ops: Iterable[str] | str | None,
    filter: dict[str, Any] | str | None,
    snapshot: bool = False,
    sort: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    def listed(value: Iterable[str] | str | None) -> list[str] | None:
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else list(value)
        return [str(v).strip() for v in items if str(v).strip()]

    if filter is not None and not isinstance(filter, str):
        filter = json_util.dumps(filter)
    return {
        "ns": listed(ns),
        "ops": listed(ops),
        "filter": filter or None,
        "snapshot": bool(snapshot),
        "sort": sort,
        "limit": limit,
    }


class WSProxyClient:
    """A connection to a wsproxy WebSocket endpoint that stays connected.

    ``url``: ``ws://host:port/ws`` (or ``http://``, ``wss://``, ``https://``).
    ``ns``, ``ops``, ``filter``: the subscription (lists or comma-separated
    strings; the filter a dict or its JSON text). ``token``: a bearer token
    (or a callable returning one), sent as ``Authorization: Bearer``;
    ``headers``: more headers (a session ``Cookie``...). ``resume_after``:
    start after this id. ``statuses``: also yield :class:`Status` items.
    ``ejson``: decode events with ``bson.json_util`` (ObjectId, datetime,
    Decimal128...), keeping any object it cannot decode as sent
    (:mod:`wsproxy.client.ejson`); False gives the JSON as sent.

    ``snapshot=True`` (one collection in ``ns``, optional ``sort`` such as
    ``"-fullDocument.createdAt"`` and ``limit``): live documents; the
    iterator then also yields :class:`Snapshot`. Every (re)connection
    starts with a fresh snapshot. Any feed with a filter yields
    :class:`Leave` when a document it was sent leaves the filter; a
    :class:`LiveDocuments` built on the feed applies it all.
    """

    def __init__(
        self,
        url: str,
        *,
        ns: Iterable[str] | str | None = None,
        ops: Iterable[str] | str | None = None,
        filter: dict[str, Any] | str | None = None,
        snapshot: bool = False,
        sort: str | None = None,
        limit: int | None = None,
        token: str | Callable[[], str | None] | None = None,
        headers: dict[str, str] | None = None,
        resume_after: str | None = None,
        statuses: bool = False,
        ejson: bool = True,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        connect_timeout: float = 10.0,
        ping_interval: float = 30.0,
        pong_timeout: float = 10.0,
        dedupe: int = 5000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"not a ws:// or http:// URL: {url!r}")
        self._base = parts
        self.subscription = _subscription(ns, ops, filter, snapshot, sort, limit)
        self.token = token
        self.headers = dict(headers or {})
        self.last_id = resume_after
        self.statuses = statuses
        self.ejson = ejson
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.ssl_context = ssl_context
        self.hello: dict[str, Any] | None = None
        # The reconnect ticket of the last hello, sent when reconnecting.
        self._ticket: str | None = None
        self.watcher: str | None = None
        # The watcher state the last Status (or the first hello) gave.
        self._told_watcher: str | None = None
        self.last_close: tuple[int, str] | None = None
        self.stats = {
            "connections": 0,
            "changes": 0,
            "duplicates": 0,
            "resets": 0,
            "attempts": 0,
        }
        self._ws: _Socket | None = None
        self._pending: list[dict[str, Any]] | None = None  # a snapshot so far
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self._dedupe = dedupe
        # Items (and notices) read but not yet returned by receive().
        self._ready: collections.deque[Any] = collections.deque()
        self._observers: list[Callable[[Any], None]] = []
        self._attempt = 0
        self._immediate = 0
        self._retry_at = 0.0  # monotonic; 0: connect at once
        self._opened_at = 0.0
        self._heard_at = 0.0
        self._ping_sent_at: float | None = None
        # Set by close(), from any thread: wakes a backoff wait.
        self._closed = threading.Event()

    # -- URLs ----------------------------------------------------------------

    def _url(self, kind: str) -> str:
        secure = self._base.scheme in ("wss", "https")
        scheme = (
            ("wss" if secure else "ws")
            if kind == "ws"
            else ("https" if secure else "http")
        )
        query = [
            (k, v)
            for k, v in parse_qsl(self._base.query, keep_blank_values=True)
            if k
            not in (
                "ns",
                "ops",
                "filter",
                "resume_after",
                "snapshot",
                "sort",
                "limit",
                "ticket",
            )
        ]
        sub = self.subscription
        if sub["ns"] is not None:
            query.append(("ns", ",".join(sub["ns"])))
        if sub["ops"] is not None:
            query.append(("ops", ",".join(sub["ops"])))
        if sub["filter"]:
            query.append(("filter", sub["filter"]))
        if sub["snapshot"]:
            query.append(("snapshot", "1"))
            if sub["sort"]:
                query.append(("sort", sub["sort"]))
            if sub["limit"] is not None:
                query.append(("limit", str(sub["limit"])))
        if self.last_id:
            query.append(("resume_after", self.last_id))
        if self._ticket:
            # The last hello's reconnect ticket: a returning client, not a
            # new one (see wsproxy.limits.tickets).
            query.append(("ticket", self._ticket))
        return urlunsplit(
            (
                scheme,
                self._base.netloc,
                self._base.path or "/",
                urlencode(query, safe=","),
                "",
            )
        )

    @property
    def url(self) -> str:
        """The WebSocket URL the next connection uses."""
        return self._url("ws")

    def _headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        token = self.token() if callable(self.token) else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    # -- the iterator ----------------------------------------------------------

    def __iter__(self) -> Iterator[Change | Reset | Status | Snapshot | Leave]:
        while True:
            item = self.receive()
            if item is None:  # closed
                return
            yield item

    def __enter__(self) -> WSProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(
        self, timeout: float | None = None
    ) -> Change | Reset | Status | Snapshot | Leave | None:
        """The next item, connecting (and reconnecting) as needed; None
        when ``timeout`` seconds pass first, or the client is closed.
        Raises :class:`Refused` when the server refuses for good."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            while self._ready:
                item = self._ready.popleft()
                self._tell(item)
                if not isinstance(item, _Notice):
                    return item
            if self._ws is None:
                wait = self._retry_at - time.monotonic()
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                if wait > 0:
                    self._closed.wait(wait)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                self._connect()
                continue
            self._read(deadline)
            if self._ready:
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def close(self) -> None:
        """Close the connection and end iteration (any thread)."""
        self._closed.set()
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    def subscribe(
        self,
        ns: Iterable[str] | str | None = None,
        ops: Iterable[str] | str | None = None,
        filter: dict[str, Any] | str | None = None,
    ) -> None:
        """Replace the subscription. Connected: on the open connection
        (changes that arrive meanwhile are kept for the iterator); returns
        once the server applied it, raises :class:`Refused` (the previous
        one stays) or :class:`ConnectionLost`. Not connected: the next
        connection asks for it. A :class:`LiveDocuments` on this feed
        starts afresh (empty) when the iterator reaches the reply, after
        the items that came before it."""
        if self.subscription["snapshot"]:
            raise ValueError(
                "a snapshot subscription cannot be changed: connect a new client"
            )
        sub = _subscription(ns, ops, filter)
        ws = self._ws
        if ws is None:
            self.subscription = sub
            return
        message = {"type": "subscribe", "ns": sub["ns"], "ops": sub["ops"]}
        ws.send(json.dumps({**message, "filter": sub["filter"]}))
        while True:
            try:
                text = ws.receive(timeout=self.connect_timeout)
            except simple_websocket.ConnectionClosed as exc:
                self._closed_by_peer(ws, exc)
                raise ConnectionLost(
                    "the connection closed before the server answered"
                ) from None
            if text is None:
                raise ConnectionLost(
                    f"no answer to subscribe within {self.connect_timeout}s"
                )
            message = self._decode(text)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == MessageType.SUBSCRIBED:
                self.subscription = sub
                # After what came before it: a LiveDocuments clears what
                # it holds when the iterator gets this far.
                self._ready.append(_Notice(kind, message))
                return
            if kind == MessageType.ERROR:
                raise Refused(str(message.get("reason", "refused")), status=400)
            self._queue(self._handle(message))

    # -- connecting ----------------------------------------------------------

    def _connect(self) -> None:
        self.stats["attempts"] += 1
        headers = self._headers()
        try:
            ws = _Socket(
                self._url("ws"),
                headers=headers,
                timeout=self.connect_timeout,
                ssl_context=self.ssl_context,
            )
        except simple_websocket.ConnectionError as exc:
            # An HTTP status instead of the upgrade.
            self._refused_handshake(headers, getattr(exc, "status_code", None))
            return
        except Exception:  # noqa: BLE001 - unreachable, reset, timed out, or
            # closed mid-handshake (wsproto's errors for a cut response vary)
            self._refused_handshake(headers, None)
            return
        if self._closed.is_set():
            ws.close()
            return
        self._ws = ws
        self.hello = None
        self._opened_at = self._heard_at = time.monotonic()
        self._ping_sent_at = None
        self.stats["connections"] += 1

    # ``status``: the HTTP status, or None (Any: looked up as is in
    # REFUSAL_ACTION, whose keys are ints).
    def _refused_handshake(self, headers: dict[str, str], status: Any) -> None:
        """The handshake failed (with HTTP ``status``, or None if it never
        got one): ask the server why (the same URL, as JSON), then stop,
        wait or retry."""
        decision = self._decision(headers)
        if decision is None:
            if REFUSAL_ACTION.get(status) in (ClientAction.STOP, ClientAction.SIGNIN):
                # No reason to be had, but the status is final.
                decision = status, {"error": f"HTTP {status}"}, 0.0
            else:
                self._schedule(ClientAction.RETRY)
                return
        status, body, retry_after = decision
        if body.get("ok") is True:
            self._schedule(ClientAction.RETRY)
            return
        reason = str(body.get("error", f"HTTP {status}"))
        action = REFUSAL_ACTION.get(status, ClientAction.RETRY)
        if action == ClientAction.SIGNIN:
            raise AuthenticationRequired(reason, status=status)
        if action == ClientAction.STOP:
            raise Refused(reason, status=status)
        self._schedule(
            ClientAction.BUSY if action == ClientAction.BUSY else ClientAction.RETRY,
            floor=retry_after,
        )

    def _decision(
        self, headers: dict[str, str]
    ) -> tuple[int | None, dict[str, Any], float] | None:
        request = urllib.request.Request(
            self._url("http"), headers={**headers, "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.connect_timeout, context=self.ssl_context
            ) as resp:
                status, data, retry = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, data, retry = exc.code, exc.read(), exc.headers
        except (OSError, ValueError):
            return None  # unreachable: retry
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not (
            body.get("ok") is True or isinstance(body.get("error"), str)
        ):
            if status in (400, 403, 414):  # not ours, but final (e.g. 414)
                return status, {"error": f"HTTP {status}"}, 0.0
            return None
        try:
            retry_after = float(retry.get("Retry-After") or 0)
        except ValueError:
            retry_after = 0.0
        return status, body, retry_after

    def _schedule(self, policy: ClientAction, floor: float = 0.0) -> None:
        if policy == ClientAction.RESUME and self._immediate < MAX_IMMEDIATE:
            self._immediate += 1
            delay = random.uniform(0, RESUME_JITTER)
        else:
            # Exponential with "equal jitter": half fixed, half random.
            d = min(self.backoff_max, self.backoff_initial * 2**self._attempt)
            self._attempt = min(self._attempt + 1, 30)
            delay = d / 2 + random.uniform(0, d / 2)
            if policy == ClientAction.BUSY:
                delay = max(delay, BUSY_FLOOR * random.uniform(1, 1.5))
        self._retry_at = time.monotonic() + max(delay, floor)

    # -- reading -------------------------------------------------------------

    def _read(self, deadline: float | None) -> None:
        ws = cast(_Socket, self._ws)  # receive() reads only when connected
        now = time.monotonic()
        wait = None if deadline is None else max(deadline - now, 0)
        if self.ping_interval:
            if self._ping_sent_at is not None:
                due = self._ping_sent_at + self.pong_timeout
            else:
                due = self._heard_at + self.ping_interval
            wait = max(due - now, 0) if wait is None else min(wait, max(due - now, 0))
        try:
            text = ws.receive(timeout=wait)
        except simple_websocket.ConnectionClosed as exc:
            self._closed_by_peer(ws, exc)
            return
        now = time.monotonic()
        if text is None:
            if self.ping_interval:
                self._keepalive(ws, now)
            return
        self._heard_at = now
        self._ping_sent_at = None
        self._queue(self._handle(self._decode(text)))

    def _keepalive(self, ws: _Socket, now: float) -> None:
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self.pong_timeout:
                # Nothing heard: the network is gone without a word.
                self._lost(ws, CloseCode.ABNORMAL, "no answer to ping")
            return
        if now - self._heard_at >= self.ping_interval:
            try:
                ws.send(_PING)
            except simple_websocket.ConnectionClosed as exc:
                self._closed_by_peer(ws, exc)
                return
            self._ping_sent_at = now

    def _decode(self, text: object) -> Any:
        if not isinstance(text, str):
            return None
        try:
            # Document content never fails the message: objects json_util
            # cannot decode stay as sent (wsproxy.client.ejson).
            return ejson.loads(text) if self.ejson else json.loads(text)
        except (ValueError, RecursionError):
            return None

    def _closed_by_peer(
        self, ws: _Socket, exc: simple_websocket.ConnectionClosed
    ) -> None:
        code = (
            int(exc.reason) if exc.reason is not None else int(LocalCloseCode.NO_STATUS)
        )
        self._lost(ws, code, exc.message or "")

    def _lost(self, ws: _Socket, code: int, reason: str) -> None:
        if self._ws is ws:
            self._ws = None
        try:
            ws.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        self.last_close = (code, reason)
        self.watcher = None
        if time.monotonic() - self._opened_at > STABLE_AFTER:
            self._attempt = 0
            self._immediate = 0
        if self._closed.is_set():
            return
        policy = CLOSE_POLICY.get(code, ClientAction.RETRY)
        if policy == ClientAction.STOP:
            raise Refused(reason or f"closed with {code}", code=code)
        self._schedule(policy)

    def _queue(self, item: Any) -> None:
        if item is not None:
            self._ready.append(item)

    def _tell(self, item: Any) -> None:
        """Hand an item (or a notice) to the observers, in stream order."""
        for observer in list(self._observers):
            observer(item)

    def _observe(self, observer: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``observer`` with every item :meth:`receive` returns, and
        with the ``hello`` and ``subscribed`` notices, as the iterator
        reaches them (on its thread). Returns a function that stops it."""
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def _handle(
        self, message: Any
    ) -> Change | Reset | Status | Snapshot | Leave | None:
        """The item a message gives the iterator, or None (a notice it
        gives goes straight to the queue, ahead of the item)."""
        if not isinstance(message, dict):
            return None
        kind = message.get("type")
        if kind == MessageType.CHANGE:
            change_id = message.get("id")
            if not isinstance(change_id, str):
                return None
            if change_id in self._seen:
                self.stats["duplicates"] += 1
                return None
            self._seen.add(change_id)
            self._seen_order.append(change_id)
            if len(self._seen_order) > self._dedupe:
                self._seen.discard(self._seen_order.popleft())
            self.last_id = change_id
            self.stats["changes"] += 1
            return Change(change_id, message.get("event") or {})
        if kind == MessageType.SNAPSHOT:
            docs = message.get("docs")
            if isinstance(docs, list):
                self._pending = (self._pending or []) + docs
            return None
        if kind == MessageType.SNAPSHOT_END:
            documents, self._pending = self._pending or [], None
            end_id = message.get("id")
            if isinstance(end_id, str):
                self.last_id = end_id
            return Snapshot(documents, message.get("complete") is not False, end_id)
        if kind == MessageType.LEAVE:
            key = message.get("documentKey")
            if not isinstance(key, dict):
                return None
            leave_id = message.get("id")
            reason = message.get("reason")
            return Leave(
                leave_id if isinstance(leave_id, str) else None,
                key,
                reason if isinstance(reason, str) else "filter",
            )
        if kind == MessageType.HELLO:
            self._pending = None
            self.hello = message
            ticket = message.get("ticket")
            if isinstance(ticket, str):
                self._ticket = ticket
            self.watcher = str(message.get("watcher", WatcherState.CONNECTED))
            # Before the Status it may give: seen first, as it came first.
            self._ready.append(_Notice(kind, message))
            return self._watcher_news("")
        if kind == MessageType.RESET:
            self._pending = None
            self.stats["resets"] += 1
            return Reset(
                message.get("lost") is not False, str(message.get("reason", ""))
            )
        if kind == MessageType.STATUS:
            self.watcher = str(message.get("watcher"))
            return self._watcher_news(str(message.get("detail", "")))
        return None  # pong, and types a newer server may add

    def _watcher_news(self, detail: str) -> Status | None:
        """A Status if :attr:`watcher` is not what the consumer was last
        told (a change while away shows only in the next hello; a close
        drops a queued status message); None for a repeat."""
        told = self._told_watcher or WatcherState.CONNECTED
        self._told_watcher = self.watcher
        if self.watcher == told or not self.statuses:
            return None
        return Status(str(self.watcher), detail)


# ------------------------------------------------------------ live documents

_EVENTS = ("loading", "snapshot", "upsert", "remove")


@dataclass(frozen=True)
class DocumentsEvent:
    """What a :class:`LiveDocuments` callback is given (the browser
    module's event details have the same fields).

    ``type``: ``"loading"``, ``"snapshot"``, ``"upsert"`` or ``"remove"``.
    ``snapshot`` (the documents were replaced whole): ``documents``,
    ``complete``, ``reason``. ``upsert``: ``key``, ``document``,
    ``previous`` (None when new). ``remove``: ``key``, ``previous``,
    ``reason``. ``detail``: the change's operation type, or a leave's own
    reason (see :class:`LiveDocuments`)."""

    type: str
    key: str | None = None
    document: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    documents: dict[str, dict[str, Any]] | None = None
    complete: bool | None = None
    reason: str | None = None
    detail: str | None = None


class LiveDocuments:
    """The documents a subscription shows, kept current by the rules of
    docs/live-documents.md (:mod:`wsproxy.liverules`): the
    browser's ``LiveDocuments`` with the same names.

        feed = WSProxyClient(url, ns="shop.orders",
                             filter={"fullDocument.status": "open"})
        orders = LiveDocuments(feed)
        orders.on("remove", lambda e: print(e.key, "gone:", e.reason))
        for item in feed:          # applied as the iterator yields it
            print(len(orders), "open orders")

    On a ``snapshot=True`` feed: the snapshot, then every change after it.
    On a plain feed: the documents it was sent (inserted, or changed into
    the filter, since it subscribed), until a delete or a ``leave`` takes
    them out: with a filter on document fields the server sends both (see
    docs/live-documents.md, "Filtered feeds").

    ``documents``: key -> document, in order (the snapshot's, then new
    ones as they come); the key is :meth:`key` of the ``_id``. ``loading``:
    True until the documents are current (snapshot feed: from a hello or a
    reset until the snapshot ends, the old documents staying meanwhile;
    plain feed: until the first hello). ``complete``: False when more
    documents may match than are held (a snapshot the limit cut short; a
    plain feed, which only holds what it was sent). ``deletes``: what the
    last ``hello`` or ``subscribed`` said (``"exact"`` or ``"tracked"``).

    Callbacks (:meth:`on`), each given a :class:`DocumentsEvent`:

    * ``loading``: a fresh snapshot began;
    * ``snapshot``: the documents were replaced whole; ``reason``:
      ``"snapshot"`` (a snapshot ended), ``"clear"`` (a drop, rename,
      dropDatabase or invalidate: ``detail`` says which), ``"subscribed"``
      (the feed's subscription changed: the server starts afresh),
      ``"reset"`` (a plain feed may have missed events), ``"reconnect"``
      (a plain feed whose new connection cannot tell it of deletes of the
      documents it holds: ``deletes`` is not ``"exact"``);
    * ``upsert``: a document was added or replaced whole (``previous``:
      None when new; ``detail``: the operation);
    * ``remove``: a document went; ``reason``: ``"delete"`` (deleted, or a
      change whose ``fullDocument`` is null: deleted since; ``detail``:
      the operation) or ``"leave"`` (``detail``: the server's reason,
      ``"filter"`` or ``"untracked"``).

    Everything happens on the thread that iterates the feed, in the order
    the items come; a callback that raises, raises from the iterator.
    Without a feed, give it each item with :meth:`apply`.
    """

    def __init__(self, feed: WSProxyClient | None = None) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.loading = True
        self.complete = False
        self.deletes: str | None = None
        self._listeners: dict[str, list[Callable[[DocumentsEvent], None]]] = {
            name: [] for name in _EVENTS
        }
        self._feed = feed
        self._snapshots = bool(feed is not None and feed.subscription["snapshot"])
        self._hellos = 0
        self._stop = feed._observe(self.apply) if feed is not None else None

    @staticmethod
    def key(_id: Any) -> str:
        """The key a document with this ``_id`` is held under (the browser
        module's ``documentKey``): see :func:`wsproxy.liverules.key`."""
        return liverules.key(_id)

    def get(self, _id: Any) -> dict[str, Any] | None:
        """The document with this ``_id``, if held."""
        return self.documents.get(liverules.key(_id))

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def size(self) -> int:
        return len(self.documents)

    def on(
        self, type: str, callback: Callable[[DocumentsEvent], None]
    ) -> Callable[[], None]:
        """Call ``callback`` on every ``type`` event; returns a function
        that stops it."""
        if type not in self._listeners:
            raise ValueError(f"no {type!r} event: one of {', '.join(_EVENTS)}")
        listeners = self._listeners[type]
        listeners.append(callback)

        def off() -> None:
            if callback in listeners:
                listeners.remove(callback)

        return off

    def detach(self) -> None:
        """Stop following the feed (the documents stay as they are)."""
        if self._stop is not None:
            self._stop()
            self._stop = None

    # -- applying ---------------------------------------------------------

    def apply(self, item: Any) -> None:
        """Apply one item of the feed (done for you when built on one)."""
        if isinstance(item, Change):
            self._effect(liverules.of_change(item.event))
        elif isinstance(item, Leave):
            self._effect(liverules.of_leave(item.document_key, item.reason))
        elif isinstance(item, Snapshot):
            self._snapshots = True
            documents: dict[str, dict[str, Any]] = {}
            for doc in item.documents:
                if isinstance(doc, dict) and "_id" in doc:
                    documents[liverules.key(doc["_id"])] = doc
            self.loading = False
            self._replace(documents, "snapshot", complete=item.complete)
        elif isinstance(item, Reset):
            if self._snapshots:
                self._begin()  # a fresh snapshot follows
            else:
                self._replace({}, "reset")
        elif isinstance(item, _Notice):
            if item.type == MessageType.HELLO:
                self._hello(item.message)
            elif item.type == MessageType.SUBSCRIBED:
                self.deletes = _deletes(item.message)
                self._replace({}, "subscribed")

    def _hello(self, hello: Mapping[str, Any]) -> None:
        self._hellos += 1
        self.deletes = _deletes(hello)
        if self._feed is not None:
            self._snapshots = bool(self._feed.subscription["snapshot"])
        if self._snapshots:
            self._begin()
            return
        self.loading = False
        if self._hellos > 1 and self.deletes != "exact":
            # A new connection knows nothing of what the last one sent:
            # without pre-images it could not say when those documents go.
            self._replace({}, "reconnect")

    def _begin(self) -> None:
        # The old documents stay until the snapshot ends: a view does not
        # blank out on a reconnect.
        self.loading = True
        self._emit(DocumentsEvent("loading"))

    def _replace(
        self,
        documents: dict[str, dict[str, Any]],
        reason: str | None,
        detail: str | None = None,
        complete: bool = False,
    ) -> None:
        self.documents = documents
        self.complete = complete
        self._emit(
            DocumentsEvent(
                "snapshot",
                documents=documents,
                complete=complete,
                reason=reason,
                detail=detail,
            )
        )

    def _effect(self, effect: liverules.Effect | None) -> None:
        if effect is None:
            return
        if effect.action == liverules.CLEAR:
            self._replace({}, effect.reason, effect.detail, self.complete)
            return
        k = liverules.key(effect.id)
        previous = liverules.apply(self.documents, effect, lambda _: k)
        if effect.action == liverules.UPSERT:
            self._emit(
                DocumentsEvent(
                    "upsert",
                    key=k,
                    document=self.documents[k],
                    previous=previous,
                    detail=effect.detail,
                )
            )
        elif previous is not None:
            self._emit(
                DocumentsEvent(
                    "remove",
                    key=k,
                    previous=previous,
                    reason=effect.reason,
                    detail=effect.detail,
                )
            )

    def _emit(self, event: DocumentsEvent) -> None:
        for callback in list(self._listeners[event.type]):
            callback(event)


def _deletes(message: Mapping[str, Any]) -> str | None:
    deletes = message.get("deletes")
    return deletes if isinstance(deletes, str) else None
