"""One WebSocket connection: its subscription, bounded outbox and close.

Writes to a socket must never interleave; :mod:`wsproxy.transport.websocket` guards
every write, ours and simple-websocket's (pongs, close replies), with the
connection's ``write_lock`` (see :class:`~wsproxy.transport.websocket.GuardedSocket`).

Locks (the worker's whole lock order is in docs/architecture.md, "Locks";
this is the connection's part of it). A thread may wait for
``_state_lock`` while holding ``write_lock`` (:meth:`ClientConnection._flush`
pops what is queued under it, up to 16 KB at a time), never the other way
round: while holding ``_state_lock``, ``write_lock`` is only ever *tried*,
non-blocking (:meth:`ClientConnection._offer_items`), so a writer blocked
on a slow socket never holds up the broadcaster. Every lock a member or the hub holds
(``Hub._lock``, a stand-in's ``_lock``) comes before both::

    Hub._lock | _Joining._lock | CatchUp._lock | LiveDocuments._lock
        -> GuardedSocket.write_lock -> ClientConnection._state_lock
        -> Wakeup._lock, Holders._lock   (leaves)

    (_state_lock -> write_lock: tried only, never waited for)

Reads of ``_outbox`` length and of ``_close_request`` outside
``_state_lock`` are deliberate: each is a hint that the locked path
re-checks.

Fan-out has two paths. The broadcaster first tries a *direct* write: if the
outbox is empty and nobody is writing, it writes the shared frame with a
non-blocking ``send``; that is one syscall and wakes no thread, which is what
keeps 1,000 mostly idle connections cheap. Anything that does not go out at
once (a full socket buffer, a concurrent writer) is queued in the bounded
outbox, and the connection's own handler thread drains it. A connection whose
outbox overflows is a slow consumer: its outbox is dropped and it is closed
with 4008, so it can reconnect and resume from the last id it received.

A client that negotiated permessage-deflate gets compressed frames: from
its subscription's shared context when it is in step with it, else
compressed on their own (see :mod:`wsproxy.transport.compression`, which says why
the two never mix badly). Every compressed frame is queued through
:meth:`ClientConnection._offer` or :meth:`~ClientConnection.preload`, which
keep the connection's :class:`~wsproxy.transport.compression.Sync` under
``_state_lock``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from .. import metrics, protocol
from ..protocol import CloseCode
from ..transport.codec import Shape, frame, is_compressed, untracked_leave_frame
from ..transport.compression import Sync
from ..transport.websocket import ConnectionClosedByPeer
from .tracking import CLEARING_OPS, Held, held_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from ..access.principal import Principal
    from ..transport.codec import Change
    from ..transport.compression import SharedContexts
    from ..transport.websocket import Connection
    from .routing import Holders
    from .subscription import Subscription

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.connection")


# Changes routing may turn into a delete or a leave of a held document.
_ROUTED = frozenset({"update", "replace", "delete"})
# Queued frames written together, up to this many bytes: one system call
# for a replay of 30 small events instead of 30. Small enough that a
# slow but moving reader takes it well within WSPROXY_SEND_TIMEOUT.
_WRITE_AT_ONCE = 16 * 1024


class _Item:
    """One change on its way to a client (see
    :meth:`ClientConnection.prepare`), or a plain frame (``change`` None)."""

    __slots__ = ("change", "sub", "shape", "data", "position", "fallback", "others")

    # A plain frame (change None) has data and no sub; a change, its sub
    # (a Subscription) and data once made (None: not sent as is).
    sub: Any
    data: Any
    position: tuple[int, int] | None
    fallback: bytes | None
    others: dict[Shape, bytes]

    def __init__(
        self, change: Change | None, sub: Subscription | None, shape: Shape | None
    ) -> None:
        self.change = change
        self.sub = sub
        self.shape = shape  # what the subscription decided (a Shape or None)
        self.data = None  # its frame: a shared context's, or its own
        self.position = None  # (epoch, seq) of a shared frame
        self.fallback = None  # the frame compressed on its own, if out of step
        self.others = {}  # Shape -> frame: what routing may turn it into

    @property
    def likely_sent(self) -> bool:
        """False for a change kept only in case routing sends it (see
        :meth:`ClientConnection.prepare`): it seldom becomes a frame."""
        return self.data is not None or bool(self.others)

    @classmethod
    def of_frame(cls, data: bytes) -> _Item:
        item = cls(None, None, None)
        item.data = data
        return item


class ClientConnection:
    """One subscriber. Thread-safe: the broadcaster calls :meth:`offer`, the
    connection's handler thread calls :meth:`run`."""

    _ids = iter(range(1, 1 << 62))
    # Offered only the changes its subscription's anchor and what it holds
    # can concern (wsproxy.fanout.routing).
    routed = True

    def __init__(
        self,
        conn: Connection,
        *,
        max_messages: int,
        max_bytes: int,
        ping_interval: float,
        close_timeout: float,
        subscription: Subscription,
        remote_addr: str | None = None,
        contexts: SharedContexts | None = None,
        max_held: int = 1000,
        owner: object = None,
        holders: Holders | None = None,
        principal: Principal | None = None,
    ) -> None:
        self.id = next(self._ids)
        # Who is connected (None: tests, tools): its key bounds what the
        # connection's catch-ups and snapshots may hold (wsproxy.limits).
        self.principal = principal
        self.conn = conn
        self.sock = conn.sock
        # The window of the permessage-deflate the client negotiated (its
        # changes are sent compressed, see wsproxy.transport.codec), or None.
        self.deflate_bits = conn.deflate_bits
        self.subscription = subscription
        # The documents a filtered feed was sent (wsproxy.fanout.tracking), at
        # most max_held; None when its filters do not test documents.
        # Routed and replaced under _state_lock.
        self.max_held = max_held
        self._holders = holders
        self.held = self._new_held(subscription)
        # The worker's shared compression contexts (None: not used), the
        # one this client's subscription is in, and where it stands in it.
        self._contexts = contexts
        # The window shared frames may use: none if the client asked the
        # server not to carry context from message to message.
        self._shared_bits = self.deflate_bits if conn.deflate_takeover else None
        # Whom a shared context this client makes is charged to.
        self.owner = owner
        self._context = (
            contexts.join(subscription, self._shared_bits, owner)
            if contexts is not None
            else None
        )
        self._sync = Sync()
        # Compressed change frames queued: from the shared context, and
        # compressed on their own (for the log; under _state_lock).
        self.shared_frames = self.own_frames = 0
        self.remote_addr = remote_addr
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        # Guards the outbox, its byte count, the close request, what is
        # held, and the shared context and _sync when they change.
        self._state_lock = threading.Lock()
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_bytes = 0
        self._close_request: tuple[int, str] | None = None  # once decided
        self.close_code: int | None = None
        self.ended = False  # the connection is over, however it ended
        # Set by the broadcaster, replay and simple-websocket's event
        # handling (see wsproxy.transport.websocket.Wakeup); the handler waits on it
        # and the socket together (Connection.wait).
        self._wake = conn.wake
        # Set whenever the handler thread has flushed the outbox.
        self._drained = threading.Event()

    def __repr__(self) -> str:
        return f"<ClientConnection {self.id} {self.remote_addr}>"

    def _new_held(self, subscription: Subscription) -> Held | None:
        if subscription.tracks and subscription.snapshot is None:
            return Held(self.max_held, self._holders, self)
        return None

    # -- called by the broadcaster (and at registration) -------------------

    def on_change(self, change: Change) -> bool:
        """Offer ``change`` if subscribed; True if it was handed over."""
        return self.on_changes([change]) == 1

    def on_changes(self, changes: list[Change]) -> int:
        """Offer the changes the subscription wants, in order, in one write
        when the socket takes them at once; how many were handed over."""
        sub = self.subscription
        while True:
            # What this batch sends, for the changes after it in the batch:
            # nothing else is queued for a live client meanwhile.
            sent: set | None = set() if self.held is not None else None
            items = [
                item
                for item in (
                    self.prepare(change, sub, shared=True, sent=sent)
                    for change in changes
                )
                if item is not None
            ]
            if not items:
                return 0
            handed = self._offer_items(items, sub)
            if handed is not None:
                return handed
            # The subscription was replaced meanwhile: judge them again.
            sub = self.subscription

    def prepare(
        self,
        change: Change,
        sub: Subscription | None = None,
        *,
        shared: bool = False,
        sent: set | None = None,
    ) -> _Item | None:
        """What ``change`` may become for this client, worked out outside
        every lock: the subscription's decision and its frames (from the
        shared compression context only for live delivery, ``shared``).
        None if nothing can come of it. Routing through what the client
        holds (:mod:`wsproxy.fanout.tracking`) happens when it is queued.

        What is held only learns of a document when the change that sends
        it is queued, so a change judged before an earlier one is queued
        (in a batch, a backlog, a catch-up's record) may be about a
        document it does not know yet. ``sent``: the held keys of what the
        earlier changes of the batch send, kept up to date here (the live
        batches of :meth:`on_changes`). Without it, a change routing may
        turn into a delete or a leave is kept whatever is held (its frames
        made under the lock, if ever)."""
        sub = sub or self.subscription
        shape = sub.decide(change)
        held = self.held
        maybe_held = False
        if held is not None:
            raw = change.raw
            # Held.may_hold, with the key kept for ``sent``.
            op = raw.get("operationType")
            clearing = op in CLEARING_OPS
            key = None if clearing else held_key(raw)
            maybe_held = clearing or (
                key is not None and (key in held or (sent is not None and key in sent))
            )
            if (
                shape is None
                and not maybe_held
                and (sent is not None or op not in _ROUTED)
            ):
                return None
            if (
                sent is not None
                and shape is not None
                and shape is not Shape.LEAVE
                and isinstance(raw.get("fullDocument"), Mapping)
            ):
                sent.add(key)
        elif shape is None:
            return None
        item = _Item(change, sub, shape)
        if shape is not None and shape is not Shape.LEAVE:
            context = self._context if shared else None
            encoded = None
            if context is not None and context.key == sub.key:
                encoded = context.encode(change, change.text_for(sub.hide, shape))
            if encoded is None:
                item.data = sub.frame(change, self.deflate_bits, shape)
            else:
                epoch, seq, item.data = encoded
                item.position = (epoch, seq)
                # Out of step (an unlocked look, checked again under the
                # lock): the frame compressed on its own, made here.
                if not self._sync.expects(epoch, seq):
                    item.fallback = sub.frame(change, self.deflate_bits, shape)
        if maybe_held:
            # What routing may turn it into, made here rather than under
            # the lock: the key alone (a leave) or a delete's key.
            for other in (Shape.LEAVE, Shape.CHANGE_WITHOUT_BEFORE):
                if other is not shape:
                    item.others[other] = sub.frame(change, self.deflate_bits, other)
        elif shape is Shape.LEAVE:
            item.data = sub.frame(change, None, shape)
        return item

    def offer(self, data: bytes) -> bool:
        """Queue or write one frame. False if this client is closing."""
        return bool(self._offer_items([_Item.of_frame(data)], None))

    def offer_item(self, item: _Item) -> bool:
        """Queue or write one prepared item, as live delivery does."""
        return bool(self._offer_items([item], None))

    def on_reset(self, frame: bytes) -> bool:
        """The live feed's ``reset`` (see :class:`wsproxy.fanout.hub.Member`)."""
        return self.offer(frame)

    def _offer_items(self, items: list[_Item], sub: Subscription | None) -> int | None:
        """Queue or write the frames of ``items`` (see :meth:`prepare`);
        how many frames were handed over (0 if closing), or None, and
        nothing sent, if ``sub`` (the subscription they were made for) is
        no longer the client's. Several frames the socket takes at once
        go out in one write."""
        lock = self.sock.write_lock
        with self._state_lock:
            if self._close_request is not None:
                return 0
            if sub is not None and sub is not self.subscription:
                return None
            frames = self._frames_locked(items)
            if not frames:
                return 0
            direct = (
                self.sock.nonblocking_ok
                and not self._outbox
                and lock.acquire(blocking=False)
            )
            if direct and self.sock.tail is not None:
                lock.release()
                direct = False
            if not direct:
                return self._append_locked(frames)
        try:
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            if not self.sock.try_write(data):
                self._wake.set()  # the handler thread finishes the tail
        except OSError:
            # The peer is gone; the handler thread notices and cleans up.
            self._wake.set()
        finally:
            lock.release()
        return len(frames)

    def queue(self, items: Iterable[_Item | bytes | None]) -> int:
        """Queue replayed items (or plain frames; None is skipped) for the
        handler thread to send, in order, routed through what the client
        holds. Bounded by what they are replayed from (a history, a paced
        catch-up), not by the outbox bounds. How many frames were queued."""
        items = [
            _Item.of_frame(item) if isinstance(item, (bytes, bytearray)) else item
            for item in items
            if item is not None
        ]
        with self._state_lock:
            if self._close_request is not None:
                return 0
            return self._append_locked(
                self._frames_locked(cast("list[_Item]", items)), bounded=False
            )

    def _append_locked(self, frames: list[bytes], bounded: bool = True) -> int:
        assert self._state_lock.locked()  # the caller holds it
        for handed, data in enumerate(frames):
            if bounded and (
                len(self._outbox) >= self.max_messages
                or self._outbox_bytes + len(data) > self.max_bytes
            ):
                self._request_close_locked(
                    CloseCode.SLOW_CONSUMER,
                    f"slow consumer: {len(self._outbox)} messages, "
                    f"{self._outbox_bytes} bytes queued; reconnect "
                    "with resume_after",
                )
                return handed
            self._outbox.append(data)
            self._outbox_bytes += len(data)
        self._wake.set()
        return len(frames)

    def _frames_locked(self, items: list[_Item]) -> list[bytes]:
        """The frames that go out for ``items``, in order, keeping what the
        client holds and the shared-context sync (under _state_lock)."""
        assert self._state_lock.locked()  # the caller holds it
        frames: list[bytes] = []
        held = self.held
        for item in items:
            change = item.change
            if change is None:
                if is_compressed(item.data):
                    self._sync.lose()
                frames.append(item.data)
                continue
            shape = item.shape
            dropped: Sequence[Any] = ()
            if held is not None:
                shape, dropped = held.route(change.raw, shape)
            if shape is not None:
                frames.append(self._choose_locked(item, shape))
            for _id in dropped:
                frames.append(untracked_leave_frame(change.id, _id, item.sub.hide))
        return frames

    def _choose_locked(self, item: _Item, shape: Shape) -> bytes:
        """The frame of ``item`` in ``shape``: the shared frame if the
        client is in step with its context, else one of its own."""
        assert self._state_lock.locked()  # the caller holds it
        if shape is item.shape and item.data is not None:
            if item.position is not None:
                if self._sync.admits(*item.position):
                    self.shared_frames += 1
                    return item.data
                data = item.fallback or item.sub.frame(
                    item.change, self.deflate_bits, shape
                )
            else:
                data = item.data
        else:
            data = item.others.get(shape) or item.sub.frame(
                item.change, self.deflate_bits, shape
            )
        if is_compressed(data):
            self._sync.lose()
            self.own_frames += 1
        return data

    def replace_subscription(self, subscription: Subscription, reply: bytes) -> bool:
        """Make ``subscription`` this client's and queue ``reply`` in one
        step: every change before ``reply`` was judged by the old
        subscription, every change after it by the new one. False if the
        client is closing.

        Only for a client the broadcaster offers changes to directly (not
        through a catch-up's stand-in, which keeps its own subscription
        until it has handed over; see :mod:`wsproxy.http.control`)."""
        context = (
            self._contexts.join(subscription, self._shared_bits, self.owner)
            if self._contexts is not None
            else None
        )
        with self._state_lock:
            replaced = self._close_request is None
            if replaced:
                self.subscription = subscription
                # What was held was judged by the old subscription: the
                # client starts afresh from the reply on (see
                # docs/live-documents.md, "Filtered feeds").
                if self.held is not None:
                    self.held.clear()
                self.held = self._new_held(subscription)
                context, self._context = self._context, context
                self._sync.lose()
                self._outbox.append(reply)
                self._outbox_bytes += len(reply)
                self._wake.set()
        if self._contexts is not None:
            self._contexts.leave(context)  # the old one (or the unused new)
        return replaced

    def wake(self) -> None:
        """Wake the handler thread (it calls ``on_wake``, see :meth:`run`)."""
        self._wake.set()

    def preload(self, frames: Iterable[bytes]) -> None:
        """Queue frames made for this client alone (hello, replies,
        snapshots); bounded by what they come from."""
        with self._state_lock:
            for data in frames:
                if is_compressed(data):
                    self._sync.lose()
                self._outbox.append(data)
                self._outbox_bytes += len(data)
            self._wake.set()

    def wait_for_room(
        self, below: int, timeout: float, below_bytes: int | None = None
    ) -> bool:
        """Block until fewer than ``below`` messages (and ``below_bytes``
        bytes) are queued, or the timeout passes (then False); replay uses
        it to follow the client's pace."""
        deadline = time.monotonic() + timeout
        while (
            (
                len(self._outbox) >= below  # unlocked: a hint, rechecked
                or (below_bytes is not None and self._outbox_bytes >= below_bytes)
            )
            and not self.closing
            and not self.ended
        ):
            if time.monotonic() >= deadline:
                return False
            self._drained.wait(min(deadline - time.monotonic(), 0.1))
            self._drained.clear()
        return True

    def request_close(self, code: int, reason: str) -> None:
        with self._state_lock:
            self._request_close_locked(code, reason)

    def _request_close_locked(self, code: int, reason: str) -> None:
        assert self._state_lock.locked()  # the caller holds it
        if self._close_request is None:
            self._close_request = (code, reason)
            if code == CloseCode.SLOW_CONSUMER:
                metrics.SLOW.inc()
            # The backlog is dropped; a half-written frame is not (it is
            # the socket's tail, finished before the close frame).
            self._outbox.clear()
            self._outbox_bytes = 0
        self._wake.set()

    @property
    def closing(self) -> bool:
        return self._close_request is not None  # unlocked: set once, never cleared

    # -- the connection's own handler thread -------------------------------

    def send_text(self, text: str) -> None:
        """Queue a message from the handler thread (replies)."""
        self.preload([frame(text)])

    def run(
        self,
        on_message: Callable[[ClientConnection, str | bytes], None],
        on_wake: Callable[[ClientConnection], float | None] | None = None,
    ) -> None:
        """Drain the outbox, answer the peer and keep the heartbeat until
        the connection ends. ``on_message(client, data)`` handles each
        message the peer sends; ``on_wake(client)``, if given, is called
        after them on every wake-up and returns the seconds until it wants
        to be called again at the latest (None: no sooner than the next
        wake-up)."""
        heartbeat = bool(self.ping_interval)
        next_ping = time.monotonic() + (self.ping_interval or 0)
        call_at = time.monotonic() if on_wake is not None else None
        try:
            while True:
                now = time.monotonic()
                deadlines = [
                    t
                    for t in (next_ping if heartbeat else None, call_at)
                    if t is not None
                ]
                self.conn.wait(max(min(deadlines) - now, 0) if deadlines else None)
                self._wake.clear()
                if self.conn.breach is not None:
                    self.request_close(*self.conn.breach)
                for message in self.conn.messages():
                    on_message(self, message)
                    if self.closing:
                        break
                if on_wake is not None and not self.closing:
                    delay = on_wake(self)
                    call_at = None if delay is None else time.monotonic() + delay
                if not self.conn.connected:
                    self.close_code = self.conn.peer_close_code()
                    return
                self._flush()
                if self.closing:
                    break
                if heartbeat and time.monotonic() >= next_ping:
                    try:
                        answered = self.conn.send_ping()
                    except ConnectionClosedByPeer:
                        self.close_code = self.conn.peer_close_code()
                        return
                    if not answered:
                        log.info(
                            "client %s: no pong within %ss, dropping",
                            self.id,
                            self.ping_interval,
                        )
                        self.close_code = CloseCode.ABNORMAL
                        self.sock.abort()
                        return
                    next_ping = time.monotonic() + self.ping_interval
        except OSError as exc:
            # Peer reset, broken pipe or send timeout: nothing more can be
            # delivered, so there is no close frame to send either.
            log.info("client %s: connection lost (%s)", self.id, exc)
            self.close_code = CloseCode.ABNORMAL
            self.sock.abort()
            return
        self._send_close()

    def _flush(self) -> None:
        with self.sock.write_lock:
            if self.sock.tail is not None:
                self.sock.write_now(b"")
            while True:
                with self._state_lock:
                    if not self._outbox or self._close_request is not None:
                        return
                    data = self._outbox.popleft()
                    if self._outbox and len(data) < _WRITE_AT_ONCE:
                        # What is queued goes in one write, not a write a
                        # frame: a resuming client's replay, a burst.
                        batch = [data]
                        size = len(data)
                        while self._outbox and (
                            size + len(self._outbox[0]) <= _WRITE_AT_ONCE
                        ):
                            batch.append(self._outbox.popleft())
                            size += len(batch[-1])
                        data = b"".join(batch)
                    self._outbox_bytes -= len(data)
                self.sock.write_now(data)
                if len(self._outbox) < 8:  # unlocked: a wake-up hint
                    self._drained.set()

    def close_now(self) -> None:
        """Send the requested close frame from this thread, whatever the
        state of the loop (used after an unexpected error)."""
        try:
            self._send_close()
        except Exception:  # noqa: BLE001 - the connection is beyond saving
            self.sock.abort()

    def _send_close(self) -> None:
        code, reason = cast("tuple[int, str]", self._close_request)  # requested
        self.close_code = code
        try:
            self.conn.send_close(code, protocol.close_reason(reason))
        except Exception:  # noqa: BLE001 - already closed or peer gone
            self.sock.abort()
            return
        # Wait for the peer's close reply (reading ends when it arrives);
        # a peer that never answers is cut off.
        if not self.conn.wait_reader(self.close_timeout):
            self.sock.abort()

    def stop_reading(self) -> None:
        """Make sure reading has ended (the peer's close reply, or at most
        the close timeout, then the socket is cut)."""
        if not self.conn.wait_reader(self.close_timeout):
            self.sock.abort()
            self.conn.wait_reader(self.close_timeout)

    def finish(self) -> None:
        """Make sure reading has ended and no write can reach the socket
        any more (the WSGI server closes it next)."""
        self.ended = True
        with self._state_lock:
            # Out of the hub's index of who holds what; no more to hold.
            if self.held is not None:
                self.held.clear()
                self.held = None
        if self._contexts is not None:
            self._contexts.leave(self._context)
            self._context = None
        self.stop_reading()
        with self.sock.write_lock:
            self.sock.closed = True
        self.conn.release()
