"""Catch-up: resume a client from a token older than this worker's history.

A client may come back with an id this worker never recorded or already
forgot: its page was away longer than the history covers, it was served by
another worker or another host, or this worker restarted. Resume tokens are
valid across the whole replica set, so a dedicated change stream opened
with ``resume_after`` replays what it missed; the only hard part is the
seam with the live feed.

The seam. From the moment the catch-up starts, a :class:`CatchUp` stands in
for the client in the hub and records every live event (its id, and its
frame if the client wants it). The catch-up stream reads forward from the
client's token. The two are the same ordered stream seen from two places,
so they meet at the first event both have seen:

* a catch-up event whose id is among the recorded live events: everything
  recorded before it was either delivered by the catch-up or older than the
  token; it and what was recorded after it are delivered, then live events
  flow;
* a live event whose id the catch-up already delivered (the catch-up ran
  ahead of this worker's watcher): live events flow from the next one on,
  skipping any the catch-up delivered.

* neither, because nothing happens: the catch-up has read everything and is
  idle. Once the watcher too has done a round trip that began after that
  moment and found nothing new, everything it read earlier is in the
  intake queue ahead of a barrier the catch-up then sends through it. When
  the broadcaster reaches the barrier, every live event recorded so far is
  one the catch-up also read (it would have met it) or one at or before
  the client's token (a watcher behind the client's previous worker), so
  the recorded events are dropped and the live feed takes over. Without
  this, a quiet collection would keep the catch-up open, and holding one of
  the few catch-up slots, until the next write.

Every check and every delivery happens under one lock, in stream order, so
there is no gap and no duplicate at the seam.

Errors follow the watcher's policy (:mod:`wsproxy.stream.errorpolicy`). Only a
position the server cannot resume from (older than the oplog window, not
found in it, or not a token it reads) gets a ``reset`` message, then the
live feed. Anything else leaves the client's last id good, and the close
says so: a refusal by the deployment or the settings (a missing
privilege) closes with 1011 and is logged at ERROR; anything transient (the
network, an election, a shutdown) closes with 1013.

Bounds. A catch-up holds one of ``WSPROXY_MAX_CATCHUPS`` slots, and one of
``WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL`` for its principal (or address), so
one principal's slow readers cannot take them all; it may last
``WSPROXY_CATCHUP_TIMEOUT`` seconds, then the client is closed with 1013
and resumes from where it got to. The replay follows the client's pace: it
reads on only while the outbox holds less than half its message *and* byte
bounds, fetching small batches, and what is recorded from the live feed
meanwhile is bounded the same way (beyond, 4008). Each replayed event is
filtered on the decoded event first and encoded only if the client wants
it; the client's filter runs outside the lock the broadcaster needs. Ids
the replay delivered are remembered only while the live feed could still
bring them.
"""

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pymongo.errors import PyMongoError

from .. import metrics
from ..fanout.hub import Barrier, item_size
from ..protocol import CloseCode, MessageType
from ..transport import codec
from . import errorpolicy
from .seam import SeamInputs, SeamState

if TYPE_CHECKING:
    from pymongo.change_stream import ChangeStream

    from ..access.sealing import Sealer
    from ..fanout.connection import ClientConnection, _Item
    from ..limits.throttle import KeyedSlots
    from ..transport.codec import Change

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.resume")

# Events per batch a catch-up's stream fetches. PyMongo decodes a whole
# batch at once and holds it until read, and the server fills one up to
# 16 MiB: with large documents that, not the outbox, was most of a stalled
# catch-up's memory.
CATCHUP_BATCH = 16


class CatchUp:
    """The hub member that stands in for a client being caught up."""

    def __init__(self, client: "ClientConnection", buffer_limit: int) -> None:
        self.client = client
        self.subscription = client.subscription
        self.buffer_limit = buffer_limit
        self.buffer_bytes = client.max_bytes
        # () -> where the live feed is (see Hub.published_through); set
        # by catch_up. Replayed events before it need no remembering.
        self.published_through: Callable[[], Any] = lambda: None
        # Guards everything below: the seam is decided under it. Held for
        # no filtering and no encoding; taken before the client's
        # _state_lock (docs/architecture.md, "Locks").
        self._lock = threading.Lock()
        # (id, the client's item or None if unwanted), in order; (None,
        # frame) for the watcher's reset, which keeps its place in the stream.
        self._live: list[tuple[str | None, _Item | bytes | None]] = []
        self._live_ids: dict[str, int] = {}  # id -> index in _live
        self._live_bytes = 0
        self._delivered: set[str] = set()  # ids the catch-up stream delivered
        self.spliced = False
        self.replayed = 0
        self.last_delivery = 0.0  # monotonic time of the last catch-up event

    # -- the broadcaster's side ------------------------------------------

    def on_change(self, change: "Change") -> bool:
        """The broadcaster's offer; True if handed to the client now."""
        sub = self.subscription
        with self._lock:
            if self.spliced:
                if self._delivered and change.id in self._delivered:
                    self._delivered.discard(change.id)
                    return False
                spliced = True
            elif change.id in self._delivered:
                # The catch-up ran ahead: it has delivered this one and
                # everything before it, so the live feed takes over after it.
                self._delivered.discard(change.id)
                self._splice_locked([])
                return False
            else:
                spliced = False
        if spliced:
            return self.client.on_change(change)
        # Filtered and encoded outside the lock (this is the broadcaster,
        # doing for this client what it does for every live one).
        item = self.client.prepare(change, sub)
        with self._lock:
            if self.spliced:
                # The seam was found meanwhile, at an earlier event: this
                # one belongs to the live feed.
                if change.id in self._delivered:
                    self._delivered.discard(change.id)
                    return False
                return item is not None and self.client.offer_item(item)
            if change.id in self._delivered:
                # Delivered by the replay meanwhile: it ran ahead.
                self._delivered.discard(change.id)
                self._splice_locked([])
                return False
            size = item_size(item) if item is not None else 0
            if (
                len(self._live) >= self.buffer_limit
                or self._live_bytes + size > self.buffer_bytes
            ):
                self.client.request_close(
                    CloseCode.SLOW_CONSUMER,
                    "fell behind while catching up; resume again",
                )
                return False
            self._live_ids[change.id] = len(self._live)
            self._live.append((change.id, item))
            self._live_bytes += size
            # The replay has not reached this event, so everything it
            # delivered so far comes before it: the live feed, already
            # past them, can never bring those again.
            self._delivered.clear()
            return False

    def on_changes(self, changes: list["Change"]) -> int:
        return sum(1 for change in changes if self.on_change(change))

    def offer(self, data: bytes) -> bool:
        return self.client.offer(data)

    def on_reset(self, frame: bytes) -> bool:
        """The live feed lost its place: recorded like a live event, so the
        client gets the reset where it happened in the stream, after the
        replayed events before it, and only if the seam comes before it
        (met after it, the catch-up read on without a gap)."""
        with self._lock:
            if not self.spliced:
                self._live.append((None, frame))
                self._live_bytes += len(frame)
                return True
        return self.client.offer(frame)

    def request_close(self, code: int, reason: str) -> None:
        self.client.request_close(code, reason)

    # -- the catch-up thread's side ----------------------------------------

    def deliver(self, change: "Change") -> bool:
        """One event from the catch-up stream. Returns False once the
        seam has been found (the caller stops reading)."""
        sub = self.subscription
        # The client's filter, on the decoded event, and the encoding, only
        # if wanted: both outside the lock.
        item = self.client.prepare(change, sub)
        with self._lock:
            if self.spliced:
                return False
            index = self._live_ids.get(change.id)
            if index is not None:
                # The seam: this event and what followed it come from the
                # recorded live feed.
                self._splice_locked(self._live[index:])
                self._delivered.clear()
                return False
            if self._may_come_live(change):
                self._delivered.add(change.id)
            self.last_delivery = time.monotonic()
            if item is not None and self.client.queue([item]):
                self.replayed += 1
            return True

    def _may_come_live(self, change: "Change") -> bool:
        """Whether the live feed may still offer ``change``: not if the hub
        has published a later event (cluster times never decrease along
        the stream)."""
        through = self.published_through()
        at = change.raw.get("clusterTime")
        try:
            return through is None or at is None or not at < through
        except TypeError:
            return True

    def splice_if_idle_since(self, idle_at: float) -> None:
        """The barrier's callback (broadcaster thread): the live feed takes
        over if the catch-up delivered nothing since ``idle_at``."""
        with self._lock:
            if self.spliced or self.last_delivery > idle_at:
                return
            self._splice_locked([])

    def reset(self, reason: str) -> None:
        """The token cannot be resumed from: say so, then go live with what
        was recorded since the catch-up began."""
        with self._lock:
            if self.spliced:
                return
            self.client.preload(
                [
                    codec.frame(
                        codec.control_message(
                            MessageType.RESET, lost=True, reason=reason
                        )
                    )
                ]
            )
            metrics.RESETS.labels("client").inc()
            self._delivered.clear()
            self._splice_locked(self._live)

    def _splice_locked(
        self, recorded: list[tuple[str | None, "_Item | bytes | None"]]
    ) -> None:
        assert self._lock.locked()  # the caller holds it
        # Routed through what the client holds here, in stream order.
        self.client.queue([item for _, item in recorded])
        self._live, self._live_ids, self._live_bytes = [], {}, 0
        self.spliced = True


@dataclasses.dataclass(frozen=True)
class CatchUpInputs(SeamInputs):
    """Everything a catch-up uses, named: what a snapshot uses too
    (:class:`~wsproxy.stream.seam.SeamInputs`), and its own.
    :meth:`from_state` builds them from a running proxy; tests build
    them by hand."""

    # (resume_after=token, batch_size=n) -> a change stream on the watched
    # scope, with the operator's pipeline and options.
    open_stream: Callable[..., "ChangeStream[Any]"]
    sealer: "Sealer"  # unseals the client's id, seals events'

    gauge = metrics.CATCHUPS
    busy_for_key = "too many catch-ups for this client (limit {limit}); retry shortly"
    busy = "too many clients catching up; retry shortly"

    @classmethod
    def from_state(cls, state: "CatchUpState") -> "CatchUpInputs":
        """From a started ProxyState (see wsproxy.http.extension)."""
        return cls(
            **SeamInputs.shared(state, state.catchup_slots, state.catchups_per_key),
            open_stream=state.source.open_stream,
            sealer=state.sealer,
        )


# What a client is told when its catch-up fails, by kind of error (see
# wsproxy.stream.errorpolicy.ErrorKind). Only HISTORY_LOST says events may
# have been missed; the others leave the client's last id good, and say
# so. Never the driver's error text (hosts, ports, topology): that is
# logged.
RESET_REASON = "cannot resume from resume_after: events may have been missed"
# A refusal a retry will not fix until an operator acts: 1011, not 1013,
# whose "try again later" promises a temporary condition; the client backs
# off and retries later (the watcher, too, retries it at its backoff cap).
FATAL_CLOSE = (
    CloseCode.INTERNAL_ERROR,
    (
        "the database refused to replay the change stream; nothing "
        "was lost: retry later with resume_after"
    ),
)
TRANSIENT_CLOSE = (
    CloseCode.TRY_AGAIN,
    ("cannot reach the database to resume; nothing was lost: retry with resume_after"),
)


class CatchUpState(SeamState, Protocol):
    """What :meth:`CatchUpInputs.from_state` reads of a started ProxyState
    (wsproxy.http.extension, a layer above this one)."""

    catchup_slots: threading.BoundedSemaphore
    catchups_per_key: "KeyedSlots"
    sealer: "Sealer"


def _send_barrier(inputs: CatchUpInputs, catchup: CatchUp, idle_since: float) -> bool:
    """Once the watcher has caught up past ``idle_since``, queue a barrier
    behind everything it read; True if one was sent."""
    caught_up = inputs.watcher_caught_up_as_of()
    if caught_up is None or caught_up <= idle_since:
        return False
    return inputs.submit(
        Barrier(lambda: catchup.splice_if_idle_since(idle_since)), inputs.stopping
    )


def catch_up(inputs: CatchUpInputs, catchup: CatchUp, resume_id: str) -> None:
    """Run in the ``wsproxy-catchup`` thread: replay from ``resume_id``
    until the seam, or reset. Bounded per principal, in number
    (``inputs.slots``) and in time."""
    with inputs.holding(catchup.client) as key:
        if key is not None:
            _replay(inputs, catchup, resume_id)


def _replay(inputs: CatchUpInputs, catchup: CatchUp, resume_id: str) -> None:
    client = catchup.client
    catchup.published_through = inputs.published_through
    limit = inputs.time_limit
    deadline = time.monotonic() + limit
    idle_since, barrier_sent = None, False
    try:
        token = inputs.sealer.unseal(resume_id)  # views checked it already
        with inputs.open_stream(resume_after=token, batch_size=CATCHUP_BATCH) as stream:
            while not (
                catchup.spliced
                or client.closing
                or client.ended
                or inputs.stopping.is_set()
            ):
                if time.monotonic() >= deadline:
                    log.info(
                        "client %s: catch-up still running after %ss "
                        "(%d events replayed); closing",
                        client.id,
                        limit,
                        catchup.replayed,
                    )
                    client.request_close(
                        CloseCode.TRY_AGAIN,
                        f"catch-up took longer than {limit:g}s; resume "
                        "from the last id received",
                    )
                    break
                # Back-pressure: never hold more than half an outbox of
                # replay, in messages or bytes, so a slow client slows the
                # replay, not memory.
                if not client.wait_for_room(
                    client.max_messages // 2,
                    timeout=0.5,
                    below_bytes=client.max_bytes // 2,
                ):
                    continue
                raw = stream.try_next()
                if raw is None and not stream.alive:
                    raise errorpolicy.StreamEnded("the catch-up stream ended")
                if raw is None:
                    # Idle since the first empty round after a delivery.
                    if idle_since is None:
                        idle_since = time.monotonic()
                    if not barrier_sent:
                        barrier_sent = _send_barrier(inputs, catchup, idle_since)
                    continue
                idle_since, barrier_sent = None, False
                if not catchup.deliver(codec.Change(raw, inputs.sealer)):
                    break
        if catchup.spliced:
            log.info(
                "client %s: caught up (%d events replayed)", client.id, catchup.replayed
            )
        else:
            log.info(
                "client %s: catch-up ended before the seam (client gone or closing)",
                client.id,
            )
    except PyMongoError as exc:
        if inputs.stopping.is_set():
            # The worker closed the database client on its way out; the
            # client already has its 1001.
            log.info("client %s: catch-up ended by the worker's shutdown", client.id)
            return
        # What reaches here PyMongo did not resume from by itself (it
        # retries a failed first aggregate once, and resumes a broken
        # getMore once).
        _on_error(catchup, exc)
    except Exception:  # noqa: BLE001 - a failed catch-up must not kill a worker
        log.exception("client %s: catch-up failed", client.id)
        client.request_close(CloseCode.INTERNAL_ERROR, "internal error")


def _on_error(catchup: CatchUp, exc: PyMongoError) -> None:
    """The one place a catch-up's database error becomes what the client
    is told (see wsproxy.stream.errorpolicy)."""
    client = catchup.client
    kind = errorpolicy.classify(exc)
    if kind is errorpolicy.ErrorKind.HISTORY_LOST:
        # Older than the oplog window (286), not found there (280), or not
        # a token this server reads: the client's position is gone.
        log.info("client %s: cannot resume (%s); reset", client.id, exc)
        catchup.reset(RESET_REASON)
    elif kind is errorpolicy.ErrorKind.FATAL:
        log.error(
            "client %s: catch-up refused by the database (%s); "
            "closing with %d: fix the deployment or WSPROXY_* "
            "settings",
            client.id,
            exc,
            FATAL_CLOSE[0],
        )
        client.request_close(*FATAL_CLOSE)
    else:
        log.warning(
            "client %s: catch-up failed: %s; closing with %d",
            client.id,
            exc,
            TRANSIENT_CLOSE[0],
        )
        client.request_close(*TRANSIENT_CLOSE)
