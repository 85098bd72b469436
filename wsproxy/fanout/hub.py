"""The intake queue, the broadcaster thread and the locked set of clients.

The watcher puts :class:`~wsproxy.transport.codec.Change` objects on the intake queue;
the ``wsproxy-broadcaster`` thread takes off every change that is waiting
(up to :data:`MAX_BATCH`, never waiting for more), records each in a
bounded history of recent events (so a reconnecting client can resume
without asking MongoDB) and offers their pre-built frames to every
subscribed client together, which writes them in one go when its socket
takes them. Offering never blocks (see :mod:`wsproxy.fanout.connection`),
so one slow client cannot stall the others.

Nothing a client controls runs under the hub's lock, which the broadcaster
needs for every event: a client resuming from history takes, under it, only
references to the recorded events after its id and its place in the client
set (as a :class:`_Joining` that holds what is published meanwhile); its
filter runs over them afterwards, on its own thread.
"""

import collections
import contextlib
import datetime
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

from .. import metrics
from ..protocol import CloseCode, ResumeMode
from ..transport import codec
from .routing import Routes
from .tracking import HeldKey, held_key

if TYPE_CHECKING:
    from .connection import ClientConnection, _Item
    from .subscription import Subscription

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.hub")

_STOP = object()
# Changes offered to clients together at most: what a getMore batch
# brings at once during a burst, without holding one client's turn long.
MAX_BATCH = 64
# The longest a subscription change waits for a batch in flight (offers
# never block, so one takes milliseconds; a stuck broadcaster must not
# hold the client's thread for ever).
REROUTE_WAIT = 5.0


class Barrier:
    """Runs ``callback`` on the broadcaster thread once everything queued
    before it has been published to every client."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback


class Recorded:
    """A change from before this worker's watcher started (the prefill,
    see :class:`wsproxy.stream.source.ChangeSource`): recorded in the history
    for clients resuming after a restart, offered to no one."""

    __slots__ = ("change",)

    def __init__(self, change: codec.Change) -> None:
        self.change = change


# Put on the intake after the last Recorded change: the history is filled.
PREFILLED = object()
# The Recorded changes do not join what comes next: forget them.
FORGET_HISTORY = object()


class Announcement:
    """A control message for every connected client (status, reset)."""

    __slots__ = ("text", "frame", "forget_history")

    def __init__(self, text: str, forget_history: bool = False) -> None:
        self.text = text
        self.frame = codec.frame(text)
        # After a reset, recorded positions no longer connect to the live
        # stream, so resuming from them must not look gap-free.
        self.forget_history = forget_history


class Member(Protocol):
    """What the hub holds in its client set: a connection
    (:class:`~wsproxy.fanout.connection.ClientConnection`) or something
    standing in for one (:class:`_Joining` here while it resumes from the
    history, :class:`~wsproxy.stream.catchup.CatchUp` while it is caught up
    from MongoDB, :class:`~wsproxy.live.documents.LiveDocuments` for a
    snapshot subscription). Everything the hub, its routing and the
    extension's shutdown call on every member is declared here.

    Read where present, with ``getattr`` (a member may leave them out):
    ``route_anchor()``, the member's own anchor, and ``routed``, whether it
    is indexed by its subscription's (:func:`wsproxy.fanout.routing._anchor_of`;
    neither: it takes every change); ``held``, what a tracking connection
    holds (not None: a later change of a batch about a document an earlier
    one offered it is offered to it too, see :meth:`Hub._routed`)."""

    # What it is routed by (wsproxy.fanout.routing), read when it joins
    # and when it is rerouted.
    subscription: "Subscription"

    def on_change(self, change: codec.Change) -> bool:
        """Offered a change, on the broadcaster thread; True if it was
        handed to the connection (counted in metrics)."""

    def on_changes(self, changes: list[codec.Change]) -> int:
        """Offered changes that arrived together, in order (the
        broadcaster's usual call); how many were handed over."""

    def offer(self, data: bytes) -> bool:
        """A frame for everyone (an announcement); False if closing."""

    def on_reset(self, frame: bytes) -> bool:
        """The live feed lost its place (``frame`` says so); False if
        closing. A live-documents member then takes a fresh snapshot."""

    def request_close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason`` (thread-safe;
        every member is asked at shutdown, see ``ProxyState.begin_shutdown``)."""


# Given a resuming client that the history cannot serve, its stand-in
# member and the function that starts its catch-up (see Hub.subscribe).
CatchUpStarter = Callable[["ClientConnection"], tuple[Member, Callable[[], object]]]


class Newcomer(Member, Protocol):
    """What :meth:`Hub.register` and :meth:`Hub.subscribe` are given: a
    member that takes its ``hello`` before anything it is offered (a
    connection, or a live-documents stand-in). With an id to resume after,
    the newcomer must be a ``ClientConnection`` (its filter runs over the
    backlog: ``prepare``, ``queue``, the outbox bounds)."""

    def preload(self, frames: Iterable[bytes]) -> None:
        """Queue frames for this connection alone (its hello), under the
        hub's lock: ahead of every change it is offered."""


class _Joining:
    """Stands in for a client in the hub while its replay from history is
    filtered and encoded outside the hub's lock: holds, in order, what the
    broadcaster offers meanwhile, then hands over to the client."""

    def __init__(self, client: "ClientConnection") -> None:
        self.client = client
        self.subscription = client.subscription
        # Guards _held, _held_bytes and live: the hand-over is decided
        # under it. Never held while filtering or encoding; taken before
        # the client's _state_lock (docs/architecture.md, "Locks").
        self._lock = threading.Lock()
        # Change, or a frame (an announcement); None: overflowed
        self._held: list[codec.Change | bytes] | None = []
        self._held_bytes = 0
        self.live = False

    def on_change(self, change: codec.Change) -> bool:
        with self._lock:
            if not self.live:
                self._hold_locked(change, len(change.frame))
                return False
        return self.client.on_change(change)

    def on_changes(self, changes: list[codec.Change]) -> int:
        return sum(1 for change in changes if self.on_change(change))

    def offer(self, data: bytes) -> bool:
        with self._lock:
            if not self.live:
                self._hold_locked(data, len(data))
                return True
        return self.client.offer(data)

    def on_reset(self, frame: bytes) -> bool:
        return self.offer(frame)

    def _hold_locked(self, item: codec.Change | bytes, size: int) -> None:
        assert self._lock.locked()  # the caller holds it
        if self._held is None:
            return  # overflowed: the client is being closed
        self._held.append(item)
        self._held_bytes += size
        if (
            len(self._held) > self.client.max_messages
            or self._held_bytes > self.client.max_bytes
        ):
            self._held = None
            self.client.request_close(
                CloseCode.SLOW_CONSUMER, "fell behind while resuming; resume again"
            )

    def request_close(self, code: int, reason: str) -> None:
        self.client.request_close(code, reason)

    def go_live(self) -> None:
        """Queue what was held (judged outside the lock, in rounds, as
        more may arrive meanwhile), then let the live feed through."""
        sub = self.subscription
        while True:
            with self._lock:
                batch, self._held = self._held, []
                self._held_bytes = 0
                if not batch:
                    self.live = True
                    return
            self.client.queue(
                [
                    item
                    if isinstance(item, (bytes, bytearray))
                    else self.client.prepare(item, sub)
                    for item in batch
                ]
            )


def _counted(item: object) -> bool:
    """Whether a prepared item counts toward the outbox bound: not a change
    a filtered feed keeps only in case it turns out to be about a document
    sent before it (see ClientConnection.prepare)."""
    return getattr(item, "likely_sent", True)


def item_size(item: "_Item | bytes") -> int:
    """The bytes of a prepared item (or a plain frame) as far as known."""
    data = item if isinstance(item, (bytes, bytearray)) else item.data
    return len(data or b"")


_UNKNOWN = object()  # a held key not computed yet


def _in_term(term: list[Any] | None, number: int) -> bool:
    """Whether batch ``number`` falls in a member's term (joined before it
    was recorded, not yet left); None: not a member."""
    return (
        term is not None and term[0] <= number and (term[1] is None or number < term[1])
    )


class Hub:
    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_bytes: int = 64 << 20,
        queue_size: int = 10000,
        prefilling: bool = False,
    ) -> None:
        # Guards the client set, the history and the routing state
        # together: the broadcaster records an event and snapshots the
        # clients in one critical section, and a resuming client takes its
        # backlog and joins the set in one, which is what makes the seam
        # between replay and live gap- and duplicate-free. Only O(1)-ish
        # work happens under it; first in the lock order (docs/architecture.md,
        # "Locks": under it only a newcomer's _state_lock, for its hello).
        self._lock = threading.Lock()
        self._clients: set[Member] = set()
        # Which members each change can concern (wsproxy.fanout.routing), and, per
        # member, the batch numbers it is offered: [joined, left or None]
        # (a batch recorded before it joined or after it left is not its).
        # Written under the lock; the broadcaster reads them outside it.
        self.routes = Routes()
        self._terms: dict[Member, list[Any]] = {}
        self._departed: list[Member] = []  # members that left, to drop from routes
        # Whether a recorded batch is being offered (outside the lock): a
        # member that leaves meanwhile stays routed until it has been.
        self._offering = False
        self._batch = 0  # the number of the next batch recorded
        # How many batches have been offered in full; notified (under the
        # lock) each time one has, for reroute to wait on.
        self._offered = 0
        self._offered_changed = threading.Condition(self._lock)
        self._history: collections.deque[codec.Change] = collections.deque()
        # id -> position (numbered from 0, never reused)
        self._positions: dict[str, int] = {}
        self._next_position = 0
        self._history_size = history_size
        # Counted as frame bytes; the decoded event and its JSON text are
        # kept too, so memory is about three times this.
        self._history_bytes_max = history_bytes
        self._history_bytes = 0
        # Changes, Barrier, Recorded, Announcement, PREFILLED, FORGET_HISTORY
        self.intake: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        # The clusterTime of the last change published (its offers begun):
        # every earlier event has been offered to every member, so the live
        # feed will never bring one again (see resume.CatchUp).
        self.published_through: Any = None
        # Set while the broadcaster waits for work: background work that
        # competes for the GIL (a snapshot) runs in the gaps (see
        # wsproxy.live.snapshot), so fan-out never waits for it.
        self.idle = threading.Event()
        # When the last change was published (monotonic): whether live
        # traffic is flowing, for the same pacing.
        self.published_at = 0.0
        # Set once the history holds what the watcher read back from before
        # it started (at once when it reads nothing back): until then an id
        # found in the history may be followed by events still to be
        # recorded, so a resume is served another way (see register).
        self.prefilled = threading.Event()
        if not prefilling:
            self.prefilled.set()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="wsproxy-broadcaster", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self.intake.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- intake (watcher thread) -------------------------------------------

    def submit(self, item: object, stopping: threading.Event) -> bool:
        """Queue a change or control message; blocks while the queue is full
        (back-pressure on the change stream, never a dropped event) unless
        ``stopping`` is set. Returns False if it gave up because of that."""
        while not stopping.is_set():
            try:
                self.intake.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    # -- clients (handler threads) -----------------------------------------

    @contextlib.contextmanager
    def subscribe(
        self,
        client: Newcomer,
        after_id: str | None,
        hello: Callable[[ResumeMode], str],
        catch_up: "CatchUpStarter | None",
    ) -> Iterator[ResumeMode]:
        """Hold ``client`` in the hub for the duration of the block, which
        gets how its resume was served (a :class:`~wsproxy.protocol.ResumeMode`):
        ``NONE``, ``HISTORY``, or ``CATCH_UP`` when ``after_id`` is not in
        this worker's history.
        Then ``catch_up(client)`` gives a stand-in member and the function
        that starts its replay from MongoDB; the stand-in is in the hub
        before the replay starts (so no live event is missed) and is
        what leaves the hub at the end."""
        member: Member = client
        # Everything inside: a setup that fails (a catch-up thread that
        # cannot start) must not leave its member counted in the hub.
        try:
            mode = self.register(client, after_id, hello)
            if mode is None:
                mode = ResumeMode.CATCH_UP
                # Only a resume gets here: a ClientConnection, with catch_up.
                member, start = cast("CatchUpStarter", catch_up)(
                    cast("ClientConnection", client)
                )
                with self._lock:
                    # hello under the lock, as in register().
                    client.preload([codec.frame(hello(mode))])
                    self._join_locked(member)
                start()
            yield mode
        finally:
            self.unregister(member)

    def register(
        self,
        client: Newcomer,
        after_id: str | None,
        hello: Callable[[ResumeMode], str],
    ) -> ResumeMode | None:
        """Add a client, first queueing ``hello(mode)`` and, with
        ``after_id``, the recorded events after it. Returns the mode:
        ``"none"`` (live only), ``"history"`` (replayed from memory), or
        None when ``after_id`` is not in the history, or when the events
        after it that the client wants are more than its outbox bounds
        hold: the client is then not added, and the caller must catch it
        up another way. (The modes are :class:`~wsproxy.protocol.ResumeMode`'s.)

        Runs on the client's thread; the hub's lock is held only to take
        references to the backlog and join the set (and, when no backlog
        follows, to write ``hello``: what it says of the watcher is then
        either already announced or announced to this client too).

        ``hello(mode)`` must be quick (it may run under the lock)."""
        if after_id is None:
            with self._lock:
                client.preload([codec.frame(hello(ResumeMode.NONE))])
                self._join_locked(client)
            return ResumeMode.NONE
        # With an id to resume after: a ClientConnection (see Newcomer).
        client = cast("ClientConnection", client)
        joining = _Joining(client)
        if not self.prefilled.is_set():
            # Recorded changes are offered to no one: joining now, the
            # client would miss those still to come.
            return None
        with self._lock:
            backlog = self._recorded_after_locked(after_id)
            if backlog is None:
                return None
            self._join_locked(joining)
        try:
            # The client's filter over the backlog, outside the lock.
            sub = client.subscription
            items = [
                item
                for item in (client.prepare(change, sub) for change in backlog)
                if item is not None
            ]
            if sum(map(_counted, items)) > client.max_messages or (
                sum(map(item_size, items)) > client.max_bytes
            ):
                # More than the outbox bounds hold for live delivery: the
                # caller catches the client up from MongoDB instead, at
                # its pace (closing it with 4008 would only bring it back
                # with the same id and the same backlog). Events published
                # meanwhile are in that replay.
                self.unregister(joining)
                return None
            client.queue([codec.frame(hello(ResumeMode.HISTORY)), *items])
            joining.go_live()
        except BaseException:
            self.unregister(joining)
            raise
        with self._lock:
            # The stand-in now only forwards: put the client in its place.
            if joining in self._clients:
                self._leave_locked(joining)
                self._join_locked(client)
        return ResumeMode.HISTORY

    def _recorded_after_locked(self, after_id: str) -> list[codec.Change] | None:
        """The recorded changes after ``after_id`` (references, copied at C
        speed), or None if it is not recorded; the caller holds the lock."""
        assert self._lock.locked()  # the caller holds it
        position = self._positions.get(after_id)
        if position is None:
            return None
        first = self._next_position - len(self._history)
        return list(itertools.islice(self._history, position - first + 1, None))

    def unregister(self, client: Member) -> None:
        with self._lock:
            self._leave_locked(client)

    def _join_locked(self, member: Member) -> None:
        assert self._lock.locked()  # the caller holds it
        if member in self._terms:
            # Left and back before the next batch pruned it: start afresh.
            self._departed = [m for m in self._departed if m is not member]
            self.routes.remove(member)
        self._clients.add(member)
        self._terms[member] = [self._batch, None]
        self.routes.add(member)

    def _leave_locked(self, member: Member) -> None:
        assert self._lock.locked()  # the caller holds it
        if member in self._clients:
            self._clients.discard(member)
            # Still offered the batches recorded before now; dropped from
            # the routes once none is being offered (a quiet stream must
            # not keep every member that ever left).
            self._terms[member][1] = self._batch
            self._departed.append(member)
            if not self._offering:
                self._prune_departed_locked()

    def _prune_departed_locked(self) -> None:
        assert self._lock.locked()  # the caller holds it
        departed, self._departed = self._departed, []
        for member in departed:
            self.routes.remove(member)
            del self._terms[member]

    def reroute(
        self, member: Member, subscription: "Subscription | None" = None
    ) -> None:
        """``member``'s subscription is being replaced by ``subscription``
        (routed by both from now on), or, without one, was replaced (routed
        by its current one alone). A member not in the hub is left alone.

        Widening returns once every batch recorded before it has been
        offered: the broadcaster routes a batch before it offers it, so a
        batch routed by the old anchor alone and offered after the
        replacement would skip the member for changes the new
        subscription wants, after the reply that says it is in force."""
        with self._lock:
            if member not in self._clients:
                return
            if subscription is None:
                self.routes.settle(member)
                return
            self.routes.widen(member, subscription)
            if threading.current_thread() is self._thread:
                return  # the broadcaster itself: no batch is in flight
            routed_before = self._batch
            deadline = time.monotonic() + REROUTE_WAIT
            while self._offered < routed_before:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "broadcaster: a batch took over %.0f s to offer; "
                        "a subscription is replaced without waiting for it",
                        REROUTE_WAIT,
                    )
                    return
                self._offered_changed.wait(remaining)

    def clients(self) -> list[Member]:
        with self._lock:
            return list(self._clients)

    def __len__(self) -> int:
        return len(self._clients)  # unlocked: a size, for the 503 check

    def history_length(self) -> int:
        return len(self._history)  # a deliberately unlocked read: a size

    def last_id(self) -> str | None:
        """The id of the last change recorded, or None."""
        with self._lock:
            return self._history[-1].id if self._history else None

    def history_ids(self) -> list[str]:
        with self._lock:
            return [change.id for change in self._history]

    # -- the broadcaster thread --------------------------------------------

    def _run(self) -> None:
        following: Any = None  # an item taken while gathering a batch
        flush_at = 0.0  # when the bytes written go to their metric next
        while True:
            if time.monotonic() >= flush_at:
                metrics.BYTES_WRITTEN.flush()
                flush_at = time.monotonic() + metrics.Tally.FLUSH_EVERY
            if following is not None:
                item, following = following, None
            else:
                try:
                    item = self.intake.get_nowait()
                except queue.Empty:
                    self.idle.set()
                    try:
                        # Not forever: the flush above, while idle too.
                        item = self.intake.get(timeout=metrics.Tally.FLUSH_EVERY)
                    except queue.Empty:
                        continue  # still idle
                    self.idle.clear()
            if item is _STOP:
                return
            try:
                if isinstance(item, codec.Change):
                    batch = [item]
                    # What else is waiting, never waiting for more.
                    while len(batch) < MAX_BATCH:
                        try:
                            more = self.intake.get_nowait()
                        except queue.Empty:
                            break
                        if not isinstance(more, codec.Change):
                            following = more  # after this batch, in order
                            break
                        batch.append(more)
                    self._publish(batch)
                elif isinstance(item, Barrier):
                    item.callback()
                elif isinstance(item, Recorded):
                    self._published(item.change)
                    with self._lock:
                        self._record_locked([item.change], [len(item.change.frame)])
                elif item is PREFILLED:
                    self.prefilled.set()
                elif item is FORGET_HISTORY:
                    with self._lock:
                        self._forget_history_locked()
                else:
                    self._announce(item)
            except Exception:  # noqa: BLE001 - the broadcaster must survive
                log.exception("broadcaster: failed to publish %r", item)

    def _publish(self, batch: list[codec.Change]) -> None:
        sizes = [len(change.frame) for change in batch]  # not under the lock
        # Every change before the batch has been offered to every member;
        # the batch's own are offered from now on.
        self._published(batch[0])
        with self._lock:
            self._record_locked(batch, sizes)
            number = self._batch
            self._batch += 1
            # Members that left before this batch are offered nothing more.
            self._prune_departed_locked()
            self._offering = True
        try:
            self._offer(batch, number)
        finally:
            with self._lock:
                self._offering = False
                self._offered = number + 1
                self._offered_changed.notify_all()
                self._prune_departed_locked()

    def _offer(self, batch: list[codec.Change], number: int) -> None:
        now = time.time()
        for change in batch:
            wall = change.raw.get("wallTime")
            if isinstance(wall, datetime.datetime):
                # PyMongo decodes naive UTC datetimes.
                lag = now - wall.replace(tzinfo=datetime.UTC).timestamp()
                metrics.LAG.observe(max(lag, 0.0))
        handed = 0
        for member, changes in self._routed(batch, number).items():
            if len(changes) == 1:
                handed += 1 if member.on_change(changes[0]) else 0
            else:
                handed += member.on_changes(changes)
        self._published(batch[-1])
        if handed:
            metrics.MESSAGES.inc(handed)
        # The bytes these writes (and others since) put on sockets: counted
        # as written (GuardedSocket), published here and once a second.
        metrics.BYTES_WRITTEN.flush()

    def _routed(
        self, batch: list[codec.Change], number: int
    ) -> dict[Member, list[codec.Change]]:
        """Member -> the changes of batch ``number`` it may be offered, in
        order: those the routes say can concern it, if it was a member when
        the batch was recorded (outside the lock)."""
        routed: dict[Member, list[codec.Change]] = {}
        terms = self._terms
        # The scan list takes every change: once per batch, not per change
        # (events for everyone cost no more than before the index).
        scan = self.routes.scan
        for member in scan:
            if _in_term(terms.get(member), number):
                routed[member] = list(batch)
        # What a member holds learns of a document only when the change
        # sending it is queued, after this: a later change of the batch
        # about a document an earlier one offered a tracking member (its
        # delete, its leave) is offered to that member too.
        # held key -> tracking members offered it in this batch
        offered: dict[HeldKey | None, set[Member]] = {}
        several = len(batch) > 1
        for change in batch:
            raw = change.raw
            members = self.routes.indexed(raw)
            key: Any = _UNKNOWN  # a HeldKey, None, or _UNKNOWN
            if offered:
                key = held_key(raw)
                also = offered.get(key)
                if also:
                    members |= also
            for member in members:
                if member in scan or not _in_term(terms.get(member), number):
                    continue
                changes = routed.get(member)
                if changes is None:
                    routed[member] = changes = []
                changes.append(change)
                if several and getattr(member, "held", None) is not None:
                    if key is _UNKNOWN:
                        key = held_key(raw)
                    if key is not None:
                        offered.setdefault(key, set()).add(member)
        return routed

    def _record_locked(self, batch: list[codec.Change], sizes: list[int]) -> None:
        """Append to the history, within its bounds (the caller holds the
        lock)."""
        assert self._lock.locked()  # the caller holds it
        for change, size in zip(batch, sizes, strict=True):
            self._history.append(change)
            self._positions[change.id] = self._next_position
            self._next_position += 1
            self._history_bytes += size
        while self._history and (
            len(self._history) > self._history_size
            or self._history_bytes > self._history_bytes_max
        ):
            position = self._next_position - len(self._history)
            old = self._history.popleft()
            if self._positions.get(old.id) == position:
                del self._positions[old.id]
            self._history_bytes -= len(old.frame)

    def _published(self, change: codec.Change) -> None:
        cluster_time = change.raw.get("clusterTime")
        if cluster_time is not None:
            self.published_through = cluster_time
        self.published_at = time.monotonic()

    def _forget_history_locked(self) -> None:
        assert self._lock.locked()  # the caller holds it
        self._history.clear()
        self._positions.clear()
        self._history_bytes = 0

    def _announce(self, announcement: Announcement) -> None:
        if announcement.forget_history:
            with self._lock:
                self._forget_history_locked()
        for client in self.clients():
            if announcement.forget_history:
                client.on_reset(announcement.frame)
            else:
                client.offer(announcement.frame)
