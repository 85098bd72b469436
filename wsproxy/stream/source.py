"""The watcher: a blocking PyMongo change stream, resumed forever.

The ``wsproxy-watcher`` thread iterates ``watch()`` with ``try_next()`` and
``max_await_time_ms``, so it wakes at least that often and can stop
promptly. It remembers the last resume token (an event's, or the server's
post-batch token while idle) and, after any error PyMongo did not already
resume from, reopens the stream from it after a capped, jittered backoff.
What an error means is decided by :mod:`wsproxy.stream.errorpolicy`, the policy
a client's catch-up follows too.

A database that is gone shows as a server selection timeout (bounded by
default, see :func:`wsproxy.http.extension.mongo_options`): the stream is then
reopened at once, not after the backoff, because the next attempt waits
for a server itself, and PyMongo checks the server every half second
while anything waits for one; so the watcher is back within about a
second of the database, however long it was away.
"""

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from bson import Timestamp
from pymongo import MongoClient
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

from .. import metrics
from ..fanout.hub import FORGET_HISTORY, PREFILLED, Announcement, Hub, Recorded
from ..protocol import MessageType, SourceState, WatcherState
from ..transport import codec
from . import errorpolicy, scopecheck
from .preimages import PreImages

if TYPE_CHECKING:
    from ..access.sealing import Sealer

# What the watcher watches: the deployment, a database or a collection.
Watched = MongoClient[Any] | Database[Any] | Collection[Any]

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.source")


class Backoff:
    """Capped exponential backoff with equal jitter."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2**self.failures))
        self.failures += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


class ChangeSource:
    """Owns the watcher thread. ``target`` is what to ``watch()``: a
    MongoClient, a Database or a Collection (see :func:`watch_target`)."""

    def __init__(
        self,
        target: Watched,
        hub: Hub,
        *,
        sealer: "Sealer",
        pipeline: Iterable[Mapping[str, Any]] = (),
        full_document: str | None = None,
        full_document_before_change: str | None = None,
        max_await_ms: int = 500,
        backoff: Backoff | None = None,
        prefill: float = 0.0,
    ) -> None:
        self.target = target
        self.hub = hub
        self.sealer = sealer  # seals each event's resume token into its id
        self.pipeline = list(pipeline)
        self.full_document = full_document
        self.full_document_before_change = full_document_before_change
        self.max_await_ms = max_await_ms
        self.backoff = backoff or Backoff()
        self.resume_token: Mapping[str, Any] | None = None
        self._start_after: Mapping[str, Any] | None = None
        self.state = SourceState.STARTING
        self.last_error: BaseException | None = None
        # When the live feed was last lost (monotonic), for the log line
        # that says it is back; None while it is live.
        self._lost_at: float | None = None
        self.errors = 0
        self.reconnects = 0
        self.last_event_at: float | None = None
        # last successful round trip (event or idle)
        self.last_ok_at: float | None = None
        # When the last round trip that found nothing new *began*: the
        # stream had then read everything committed before that moment.
        self.caught_up_as_of: float | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Whether the watched namespace was looked for (once, when the
        # first round trip worked: wsproxy.stream.scopecheck), and which of its
        # collections keep pre-images (wsproxy.stream.preimages).
        self._scope_checked = False
        self.preimages = PreImages(full_document_before_change)
        # Seconds of events read back into the hub's history when the
        # stream first opens (see _prefill_start); the hub waits for them
        # (Hub(prefilling=True)) until PREFILLED.
        self.prefill = prefill
        # While prefilling: the cluster time when the watcher started
        # (events up to it are Recorded, not published), and where it
        # reads from.
        self._prefill_until: Timestamp | None = None
        self._prefill_from: Timestamp | None = None
        self._prefill_pending = prefill > 0
        self._recorded = False  # whether any event was read back

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="wsproxy-watcher", daemon=True
        )
        self._thread.start()

    def request_stop(self) -> None:
        """Stop after the current round trip, without waiting for it."""
        self._stopping.set()

    def stop(
        self, timeout: float = 5.0, interrupt: Callable[[], object] | None = None
    ) -> None:
        """Stop and join the watcher. One waiting for a server (the database
        is gone) would hold this for the whole selection timeout: if it has
        not ended one round trip after the stop, ``interrupt()`` (closing
        the MongoClient) ends that wait."""
        self._stopping.set()
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            self._thread.join(min(timeout, self.max_await_ms / 1000 + 0.5))
            if self._thread.is_alive() and interrupt is not None:
                interrupt()
            self._thread.join(max(deadline - time.monotonic(), 0))
            self._thread = None
        self.state = SourceState.STOPPED

    @property
    def connected(self) -> bool:
        return self.state == SourceState.CONNECTED

    @property
    def healthy(self) -> bool:
        """Connected, and the last round trip to the server is recent."""
        return self.connected and self.answered_recently

    @property
    def answered_recently(self) -> bool:
        """The last round trip to the server is recent: a getMore returns
        within max_await_ms, so a longer silence means the server or the
        network is gone even before the driver says so."""
        if self.last_ok_at is None:
            return False
        stale_after = max(5.0, 3 * self.max_await_ms / 1000)
        return time.time() - self.last_ok_at < stale_after

    def open_stream(
        self,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        start_at: Timestamp | None = None,
    ) -> ChangeStream[Any]:
        """A change stream on the watched scope with the operator's options
        (also used for per-client catch-up, with small batches: a batch is
        decoded at once and held until read)."""
        return self.target.watch(
            self.pipeline,
            full_document=self.full_document,
            full_document_before_change=self.full_document_before_change,
            max_await_time_ms=self.max_await_ms,
            resume_after=resume_after,
            start_after=start_after,
            start_at_operation_time=start_at,
            batch_size=batch_size,
        )

    # -- the prefill ---------------------------------------------------------
    #
    # A worker that starts (a deploy, a restart after a kill -9) has no
    # history, and its clients all come back at once with the id of the
    # last event they got: each would be caught up from MongoDB on a
    # change stream of its own, a few at a time per principal. So the
    # watcher's first stream starts ``prefill`` seconds in the past: what
    # it reads from before it started is recorded in the history and
    # offered to no one, and clients resuming meanwhile wait for it (see
    # wsproxy.http.views), then resume from the history like on any worker.

    def _prefill_start(self) -> Timestamp | None:
        """Where the first stream starts: ``prefill`` seconds before the
        server's time now, or None (no prefill)."""
        if not self._prefill_pending:
            return None
        if self._prefill_from is None:
            now = _client_of(self.target).admin.command("ping").get("operationTime")
            if not isinstance(now, Timestamp):
                self._end_prefill("the server tells no operation time")
                return None
            self._prefill_until = now
            self._prefill_from = Timestamp(max(now.time - int(self.prefill), 1), 0)
        return self._prefill_from

    def _end_prefill(self, why: str | None = None) -> None:
        if not self._prefill_pending:
            return
        self._prefill_pending = False
        self._prefill_until = self._prefill_from = None
        if why:
            log.info("watcher: no history read back (%s)", why)
        self.hub.submit(PREFILLED, self._stopping)

    def _is_prefill(self, raw: Mapping[str, Any]) -> bool:
        """Whether an event read is from before the watcher started."""
        until = self._prefill_until
        if until is None:
            return False
        at = raw.get("clusterTime")
        if isinstance(at, Timestamp) and at <= until:
            return True
        self._end_prefill()
        return False

    # -- the watcher thread --------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            invalidated: bool | None = False
            began = time.monotonic()
            try:
                invalidated = self._stream_once()
            except PyMongoError as exc:
                if self._stopping.is_set():
                    break  # e.g. the client closed under a stopping watcher
                self._on_error(exc)
            except Exception as exc:  # noqa: BLE001 - never die silently
                log.exception("watcher: unexpected error")
                self._on_error(exc)
            if self._stopping.is_set():
                break
            if not invalidated:
                delay = self._retry_delay(time.monotonic() - began)
                log.debug("watcher: reopening the change stream in %.1fs", delay)
                self._stopping.wait(delay)
            self.reconnects += 1
            metrics.WATCHER_RECONNECTS.inc()

    def _retry_delay(self, attempt_took: float) -> float:
        """Seconds before the next attempt after one that failed."""
        if errorpolicy.is_fatal(self.last_error):
            return self.backoff.cap
        if isinstance(self.last_error, ServerSelectionTimeoutError):
            # No server: the attempt waited for one all along, and the next
            # one waits again (PyMongo checks the server every 0.5s while
            # it does), so it starts at once; a backoff here would sleep
            # through the database's return. Never faster than the
            # initial delay, should selection give up early.
            return max(self.backoff.initial - attempt_took, 0.0)
        return self.backoff.next_delay()

    def _stream_once(self) -> bool | None:
        if self._start_after is not None:
            stream = self.open_stream(start_after=self._start_after)
        elif self.resume_token is None and self._prefill_start() is not None:
            stream = self.open_stream(start_at=self._prefill_from)
        else:
            stream = self.open_stream(resume_after=self.resume_token)
        with stream:
            while not self._stopping.is_set():
                began = time.monotonic()
                raw = stream.try_next()
                now = time.time()
                self.last_ok_at = now
                if raw is None:
                    self.caught_up_as_of = began
                if self.state != SourceState.CONNECTED:
                    # Connected once a round trip has worked, not when the
                    # aggregate was accepted: a server that accepts every
                    # aggregate but fails every getMore stays "reconnecting"
                    # (and keeps its growing backoff).
                    self._set_state(SourceState.CONNECTED, None)
                    self.backoff.reset()
                    if not self._scope_checked:
                        self._scope_checked = True
                        scopecheck.warn_if_missing(self.target)
                        self.preimages.check(self.target)
                if raw is None:
                    # Read everything up to now: what was read back is in.
                    self._end_prefill()
                    token = stream.resume_token
                    if token is not None and token != self._start_after:
                        # The server's post-batch token: a position after
                        # everything seen, including an invalidate.
                        self.resume_token = token
                        self._start_after = None
                    if not stream.alive:
                        raise errorpolicy.StreamEnded(
                            "the server closed the change stream"
                        )
                    continue
                change = codec.Change(raw, self.sealer)
                item: codec.Change | Recorded = change
                if self._is_prefill(raw):
                    # From before the watcher started: for the history.
                    item = Recorded(change)
                    self._recorded = True
                else:
                    self.last_event_at = now
                    metrics.EVENTS.inc()
                if not self.hub.submit(item, self._stopping):
                    return None  # stopping
                self.resume_token = change.token
                self._start_after = None
                self.backoff.reset()
                if raw.get("operationType") == "invalidate":
                    # The watched collection or database went away; the
                    # stream is over. Watch on from just after the event.
                    self._start_after = change.token
                    self.resume_token = None
                    return True
            return False
        return False

    def _on_error(self, exc: BaseException) -> None:
        self.errors += 1
        metrics.WATCHER_ERRORS.inc()
        self.last_error = exc
        kind = errorpolicy.classify(exc)
        if kind is errorpolicy.ErrorKind.HISTORY_LOST and self._prefill_pending:
            # The oplog does not reach back that far (or the first events
            # read back are gone already): start from now, as without a
            # prefill; no client has a position here to lose.
            self.resume_token = None
            if self._recorded:
                # What was read back no longer joins what comes next.
                self.hub.submit(FORGET_HISTORY, self._stopping)
            self._end_prefill(f"cannot read back {self.prefill:g}s: {exc}")
            return
        if kind is errorpolicy.ErrorKind.HISTORY_LOST:
            log.error(
                "watcher: cannot resume (%s); restarting from now, "
                "clients are told events may have been lost",
                exc,
            )
            self.resume_token = None
            self._start_after = None
            metrics.RESETS.labels("watcher").inc()
            self.hub.submit(
                Announcement(
                    codec.control_message(
                        MessageType.RESET,
                        lost=True,
                        reason="the proxy lost its place in the change stream",
                    ),
                    forget_history=True,
                ),
                self._stopping,
            )
        elif kind is errorpolicy.ErrorKind.FATAL:
            log.error(
                "watcher: %s (retrying slowly; fix the deployment or "
                "WSPROXY_* settings)",
                exc,
            )
        elif self.state in (SourceState.STARTING, SourceState.CONNECTED):
            log.warning("watcher: change stream failed: %s", exc)
        else:
            # Still away: said when the outage began, and when it ends.
            log.debug("watcher: change stream failed again: %s", exc)
        self._set_state(
            SourceState.FAILED
            if kind is errorpolicy.ErrorKind.FATAL
            else SourceState.RECONNECTING,
            "the database is unreachable; the feed resumes when it is back",
        )

    def _set_state(self, state: SourceState, detail: str | None) -> None:
        """``detail`` goes to every client: a generic reason, never the
        driver's error text (hosts, ports, topology); that is logged."""
        previous, self.state = self.state, state
        was_live = previous in (SourceState.STARTING, SourceState.CONNECTED)
        if was_live == (state == SourceState.CONNECTED):
            return  # e.g. failed -> reconnecting: clients already know
        if state == SourceState.CONNECTED:
            if self._lost_at is not None:
                log.info(
                    "watcher: the change stream is back after %.1fs",
                    time.monotonic() - self._lost_at,
                )
            self._lost_at = None
        else:
            self._lost_at = time.monotonic()
            log.info(
                "watcher: the change stream is lost; clients are told, and it "
                "resumes from the last event when the database answers again"
            )
        # Tell clients the live feed paused or came back, so a page can show
        # it; no event is lost either way.
        self.hub.submit(
            Announcement(
                codec.control_message(
                    MessageType.STATUS,
                    watcher=(
                        WatcherState.CONNECTED
                        if state == SourceState.CONNECTED
                        else WatcherState.RECONNECTING
                    ),
                    detail=detail or "",
                )
            ),
            self._stopping,
        )


def _client_of(target: Watched) -> MongoClient[Any]:
    """The MongoClient of a MongoClient, Database or Collection. (Not by
    hasattr: a Database's unknown attribute is a Collection, so a Database
    has a "database", and a Collection a "client".)"""
    if isinstance(target, Collection):
        return target.database.client
    if isinstance(target, Database):
        return target.client
    return target


def watch_target(client: MongoClient[Any], scope: str) -> Watched:
    """``""`` -> the whole deployment, ``"db"`` -> a database,
    ``"db.coll"`` -> a collection."""
    if not scope:
        return client
    db, _, coll = scope.partition(".")
    return client[db][coll] if coll else client[db]
