"""Live documents: a client's current matching documents of one collection,
then every change after them (``?snapshot=1``; see docs/live-documents.md).

A :class:`LiveDocuments` stands in for the client in the hub. It goes
through three phases (:class:`Phase`), and back to the first after a
``reset``:

* ``READING``: the snapshot is being read (:mod:`wsproxy.live.snapshot`). Every
  change to the collection is kept, by reference, in arrival order.
* ``SENDING``: the changes kept so far have been merged into the snapshot,
  which is being sent; later changes are kept as before.
* ``LIVE``: the kept changes have been sent; the broadcaster offers changes
  through :meth:`LiveDocuments.on_change` directly.

Why the seam is exact. The stand-in joins the hub *before* the read
begins, so every change committed after that moment reaches it, and every
change committed before it is already in the database the read sees. A
read that spans several batches is not a point-in-time view (MongoDB
yields between batches), so a document may be read in a state that some
kept change also produced. That is harmless because each change carries the
whole document (``fullDocument``, by ``updateLookup`` or a post-image) or
removes it: applying a kept change sets a document to a state at least as
new as that change, and applying all of them in stream order ends each
document at the state of its last change, which no read can be newer than.
The merge happens on the server (:func:`wsproxy.live.snapshot.merge`), after the
live feed has passed the end of the read (or not at all: 1013), so no
change the read reflects comes after the snapshot, and the client never
sees a document go back to before a write the snapshot reflects; changes
that arrive later are applied by the client in order, by the same rules. (A
document by ``updateLookup`` is the one found when the stream looked it up,
possibly after later changes to it: an update may show a later state than
an insert or replace after it, which shows its own. That is the stream's
semantics, not the seam's.)

Leaving. With a filter (the client's or its principal's), a change may make
a held document stop matching. The client then gets ``leave`` with the
document's key and never the new content, which for a principal's filter
is not its to see. Deciding that needs what this client holds: ``_held``
maps each held document's key to its ``_id``, at most
``WSPROXY_SNAPSHOT_MAX_DOCS`` entries (beyond that, the document changed
longest ago is dropped with ``leave``). Without a filter every document of
the collection matches, so nothing is kept and nothing leaves.
"""

import threading
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from ..fanout.routing import NS, Anchor
from ..fanout.tracking import (
    CLEARING_OPS,
    DOCUMENT_OPS,
    Held,
    document_key,
    event_id,
    held_key,
)
from ..protocol import CloseCode
from ..transport.codec import Shape, untracked_leave_frame

if TYPE_CHECKING:
    from ..access.documentquery import DocumentQuery
    from ..fanout.connection import ClientConnection
    from ..fanout.tracking import HeldKey
    from ..transport.codec import Change


class Phase(StrEnum):
    """Where a :class:`LiveDocuments` is (see the module docstring);
    compared with ``is``."""

    READING = "reading"  # the snapshot is being read; changes are kept
    SENDING = "sending"  # merged, being sent; later changes are kept
    LIVE = "live"  # the kept changes sent: the broadcaster offers directly


# Re-exported for wsproxy.live.snapshot.
__all__ = [
    "CLEARING_OPS",
    "DOCUMENT_OPS",
    "LiveDocuments",
    "Phase",
    "Restart",
    "document_key",
    "event_id",
    "held_key",
]


class Restart(Exception):
    """The feed was reset while a snapshot was being taken: start again."""


class LiveDocuments:
    """The hub member of one ``snapshot=1`` connection (see the module)."""

    def __init__(self, client: "ClientConnection", *, max_held: int) -> None:
        self.client = client
        self.subscription = sub = client.subscription
        self.query = cast("DocumentQuery", sub.snapshot)  # snapshot=1: never None
        self.max_held = max_held
        # Guards _phase, _kept, _kept_bytes and _reset_frame: a phase
        # change and what is kept are decided together. Taken before the
        # client's _state_lock (docs/architecture.md, "Locks"); never held
        # while filtering or encoding.
        self._lock = threading.Lock()
        self._phase = Phase.READING
        # Changes to the collection, in stream order
        self._kept: list[Change] = []
        self._kept_bytes = 0
        # a reset that arrived mid-snapshot
        self._reset_frame: bytes | None = None
        # What the client holds, only with a filter (wsproxy.fanout.tracking).
        # Used by one thread at a time: the snapshot's until LIVE, then the
        # broadcaster's (a reset ends LIVE on the broadcaster itself).
        self._held = Held(max_held) if sub.rules or sub.predicates else None
        # () -> None: starts a snapshot thread (set by the caller).
        self.start_snapshot: Any = None

    def __repr__(self) -> str:
        return f"<LiveDocuments {self.client!r} {self._phase}>"

    def route_anchor(self) -> Anchor:
        """Offered every change to its collection (wsproxy.fanout.routing): while
        reading it keeps them all for the merge, whatever its filter."""
        return (NS, frozenset({self.query.ns}))

    # -- the hub's side (broadcaster thread) ---------------------------------

    def on_change(self, change: "Change") -> bool:
        if not self._concerns(change.raw):
            return False
        with self._lock:
            if self._phase is not Phase.LIVE:
                self._keep_locked(change)
                return False
        handed = False
        for data in self.route(change):
            handed = self.client.offer(data)
        return handed

    def on_changes(self, changes: list["Change"]) -> int:
        return sum(1 for change in changes if self.on_change(change))

    def offer(self, data: bytes) -> bool:
        return self.client.offer(data)

    def preload(self, frames: Iterable[bytes]) -> None:
        self.client.preload(frames)

    def request_close(self, code: int, reason: str) -> None:
        self.client.request_close(code, reason)

    def on_reset(self, frame: bytes) -> bool:
        """The live feed lost its place: the client gets ``reset`` and a
        fresh snapshot (whatever it holds may be stale)."""
        with self._lock:
            self._kept, self._kept_bytes = [], 0
            if self._phase is not Phase.LIVE:
                # The snapshot thread sends it, between two of its own
                # messages, and starts again.
                self._reset_frame = frame
                return True
            self._phase = Phase.READING
        handed = self.client.offer(frame)
        if self._held is not None:
            self._held.clear()
        self.start_snapshot()
        return handed

    def _concerns(self, raw: Mapping[str, Any]) -> bool:
        op = raw.get("operationType")
        if op == "invalidate":
            return True
        ns = raw.get("ns")
        if not isinstance(ns, Mapping) or ns.get("db") != self.query.db:
            return False
        return op == "dropDatabase" or ns.get("coll") == self.query.coll

    def _keep_locked(self, change: "Change") -> None:
        assert self._lock.locked()  # the caller holds it
        self._kept.append(change)
        self._kept_bytes += len(change.frame)
        if (
            len(self._kept) > self.client.max_messages
            or self._kept_bytes > self.client.max_bytes
        ):
            self._kept, self._kept_bytes = [], 0
            self.client.request_close(
                CloseCode.SLOW_CONSUMER,
                "fell behind while taking the snapshot; reconnect",
            )

    # -- the snapshot thread's side ------------------------------------------

    def take_kept(self, next_phase: Phase | str) -> list["Change"]:
        """The changes kept so far (handed over: no longer kept here), and
        the phase is now ``next_phase``; raises Restart after a reset."""
        with self._lock:
            self._check_reset_locked()
            kept, self._kept, self._kept_bytes = self._kept, [], 0
            self._phase = Phase(next_phase)
            return kept

    def send(self, frames: Iterable[bytes]) -> None:
        """Queue snapshot frames for the client, unless a reset came first
        (Restart): what the client gets after a reset is a new snapshot."""
        with self._lock:
            self._check_reset_locked()
            self.client.preload(frames)

    def go_live(self) -> None:
        """Send the changes kept since the snapshot, in rounds (more may
        arrive meanwhile, judged outside the lock), then let the live feed
        through. Raises Restart after a reset."""
        while True:
            with self._lock:
                self._check_reset_locked()
                kept, self._kept, self._kept_bytes = self._kept, [], 0
                if not kept:
                    self._phase = Phase.LIVE
                    return
            self.send([data for change in kept for data in self.route(change)])

    def _check_reset_locked(self) -> None:
        assert self._lock.locked()  # the caller holds it
        if self._reset_frame is not None:
            frame, self._reset_frame = self._reset_frame, None
            self._phase = Phase.READING
            self.client.preload([frame])
            raise Restart

    def hold(self, held: Iterable[tuple["HeldKey", Any]]) -> None:
        """What the client holds after a snapshot: ``(held key, _id)``
        pairs (see :func:`wsproxy.fanout.tracking.held_key`)."""
        if self._held is not None:
            self._held.hold_all(held)

    # -- judging one change ---------------------------------------------------

    def route(self, change: "Change") -> list[bytes]:
        """The frames one change means for this client: the change itself,
        a ``leave``, or nothing. Updates what it holds."""
        raw = change.raw
        op = raw.get("operationType")
        if op not in DOCUMENT_OPS and op != "delete" and op not in CLEARING_OPS:
            return []
        sub = self.subscription
        shape = sub.decide(change)
        dropped: Sequence[Any] = ()
        if self._held is not None:
            shape, dropped = self._held.route(raw, shape)
        elif op in CLEARING_OPS and shape is None:
            shape = Shape.CHANGE
        frames: list[bytes] = []
        if shape is not None:
            frames.append(sub.frame(change, self.client.deflate_bits, shape))
        for _id in dropped:
            frames.append(untracked_leave_frame(change.id, _id, sub.hide))
        return frames
