"""Taking a snapshot for a live-documents client, on its own
``wsproxy-snapshot-<id>`` thread (see :mod:`wsproxy.live.documents` for why the
result is exact).

1. Read the matching documents (majority read concern, so everything read
   is also in the change stream), at most ``limit`` of them, bounded in
   bytes; note the read's operation time.
2. Wait until the live feed has passed that time, so every change the read
   may reflect has reached the stand-in (not by the time limit: 1013, and
   the client takes a fresh snapshot; merged without them, the snapshot
   could be followed by a change older than what it shows).
3. Merge those changes into the documents, judge every document by the
   subscription's filters, and send the result in messages of bounded
   size, at the client's pace; then ``snapshot_end``.
4. Send the changes kept meanwhile and go live.

Snapshots read at once are bounded per worker (``WSPROXY_MAX_SNAPSHOTS``;
others wait ``WSPROXY_CLOSE_TIMEOUT``, then 1013) and each is bounded in
time (``WSPROXY_CATCHUP_TIMEOUT``). Nothing here runs on the broadcaster
or under a lock other clients need.

The GIL and the CPU are another matter. Decoding and encoding 10,000
documents is most of a second of CPU, and the broadcaster gives the GIL
up at every socket write of its fan-out: a busy snapshot thread took it
back each time, for up to a switch interval (5 ms), so live events to
other clients waited seconds (``python -m bench.snapshot``). So a
snapshot works in slices of :data:`SLICE_DOCS` documents (about a
millisecond each) and, between slices, waits while the broadcaster is
busy; and while live changes are flowing it also rests as long as its
last slice took. Slices of all the worker's snapshots take turns (one
lock), so together they use at most half the time while live changes
flow (:class:`Pacer`). Live fan-out comes first; snapshots use the gaps.
"""

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from .. import liverules, metrics
from ..access.documentquery import MESSAGE_BYTES
from ..access.redaction import redact
from ..fanout.hub import Barrier
from ..limits import throttle
from ..logsafe import shown
from ..protocol import CloseCode, MessageType
from ..stream import errorpolicy
from ..stream.seam import SeamInputs, SeamState
from ..transport import codec
from .documents import LiveDocuments, Phase, Restart, document_key

if TYPE_CHECKING:
    from bson.timestamp import Timestamp
    from pymongo import MongoClient

    from ..access.documentquery import DocumentQuery
    from ..fanout.connection import ClientConnection
    from ..fanout.subscription import Subscription
    from ..fanout.tracking import HeldKey

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.snapshot")

# A snapshot holds its documents until they are merged and sent: this
# bounds that memory per snapshot (WSPROXY_MAX_SNAPSHOTS at once).
MAX_READ_BYTES = 64 << 20
# Documents decoded or encoded between two looks at the broadcaster (about
# a millisecond of work), and the longest wait for it to be idle, so that
# a continuously busy broadcaster slows snapshots without stopping them.
SLICE_DOCS = 32
PACE_WAIT = 0.005
# A snapshot whose client takes no byte of it for this long (or
# WSPROXY_SEND_TIMEOUT, if shorter) is closed with 4008, freeing its slots.
STALL_SECONDS = 2.0
# Live traffic counts as flowing if a change was published this recently.
LIVE_WITHIN = 0.25
_RAW = CodecOptions(document_class=RawBSONDocument)


@dataclasses.dataclass(frozen=True)
class SnapshotInputs(SeamInputs):
    """Everything a snapshot uses, named: what a catch-up uses too
    (:class:`~wsproxy.stream.seam.SeamInputs`), and its own
    (:meth:`from_state` builds them from a running proxy)."""

    mongo: "MongoClient[Any]"  # the worker's
    last_id: Callable[[], str | None]  # id of the last change published, or None
    broadcaster_idle: threading.Event  # Hub.idle
    published_at: Callable[[], float]  # monotonic time of the last publish
    slice_lock: threading.Lock  # one snapshot slice at a time (Pacer)
    charge: Callable[[Hashable, float], None]  # (key, tokens): what a read cost
    stall_limit: float  # seconds a client may read nothing of its snapshot

    gauge = metrics.SNAPSHOTS
    busy_for_key = (
        "too many snapshots for this client at once (limit {limit}); retry shortly"
    )
    busy = "too many snapshots at once; retry shortly"

    @classmethod
    def from_state(cls, state: "SnapshotState") -> "SnapshotInputs":
        hub = state.hub
        return cls(
            **SeamInputs.shared(state, state.snapshot_slots, state.snapshots_per_key),
            mongo=state.mongo,
            last_id=hub.last_id,
            broadcaster_idle=hub.idle,
            published_at=lambda: hub.published_at,
            slice_lock=state.snapshot_slice_lock,
            charge=state.connect_rate.charge,
            stall_limit=min(STALL_SECONDS, state.config["WSPROXY_SEND_TIMEOUT"]),
        )


class SnapshotState(SeamState, Protocol):
    """What :meth:`SnapshotInputs.from_state` reads of a started ProxyState
    (wsproxy.http.extension, a layer above this one)."""

    mongo: "MongoClient[Any]"
    snapshot_slots: threading.BoundedSemaphore
    snapshots_per_key: throttle.KeyedSlots
    snapshot_slice_lock: threading.Lock
    connect_rate: throttle.KeyedRateLimit


def starter(inputs: SnapshotInputs, member: LiveDocuments) -> Callable[[], None]:
    """The ``start_snapshot`` of ``member``: each call runs one snapshot
    (and its restarts) on a new thread."""

    def start() -> None:
        threading.Thread(
            target=run,
            args=(inputs, member),
            name=f"wsproxy-snapshot-{member.client.id}",
            daemon=True,
        ).start()

    return start


def run(inputs: SnapshotInputs, member: LiveDocuments) -> None:
    """Take the member's snapshot (again after a reset), holding one of
    its principal's snapshot slots and one of the worker's."""
    with inputs.holding(member.client) as key:
        if key is not None:
            _run(inputs, member, key)


def _run(inputs: SnapshotInputs, member: LiveDocuments, key: Hashable) -> None:
    client = member.client
    try:
        while not _stopped(inputs, client):
            try:
                _take(inputs, member, key)
                return
            except Restart:
                log.info("client %s: reset during the snapshot; again", client.id)
    except PyMongoError as exc:
        if inputs.stopping.is_set():
            # The worker closed the database client on its way out; the
            # client already has its 1001.
            log.info("client %s: snapshot ended by the worker's shutdown", client.id)
            return
        _on_error(client, exc)
    except Exception:  # noqa: BLE001 - a failed snapshot must not kill a worker
        log.exception("client %s: snapshot failed", client.id)
        client.request_close(CloseCode.INTERNAL_ERROR, "internal error")


def _stopped(inputs: SeamInputs, client: "ClientConnection") -> bool:
    return client.closing or client.ended or inputs.stopping.is_set()


def _take(inputs: SnapshotInputs, member: LiveDocuments, key: Hashable) -> None:
    client = member.client
    query = member.query
    started = time.monotonic()
    deadline = started + inputs.time_limit
    since = inputs.last_id()  # the snapshot reflects at least this far
    pace = Pacer(inputs)
    docs, complete, read_end = read(inputs.mongo, query, deadline, pace)
    read_done = time.monotonic()
    # What the read cost the database, charged now that it is known (a
    # limit=1 that no index serves can scan a whole collection).
    inputs.charge(key, throttle.read_cost(len(docs), read_done - started))
    if not _wait_for_feed(inputs, client, read_end, read_done, deadline):
        if _stopped(inputs, client):
            return
        # Not merged anyway: a change the read reflects may still come,
        # after the snapshot, and take a document back to an older state.
        log.info(
            "client %s: the live feed did not pass the snapshot's read in "
            "time; closing (1013)",
            client.id,
        )
        client.request_close(
            CloseCode.TRY_AGAIN, "the live feed is behind the snapshot; reconnect"
        )
        return
    kept = member.take_kept(next_phase=Phase.SENDING)
    held, texts = merge(member.subscription, docs, kept, entering=complete, pace=pace)
    member.hold(held)
    progress = _Progress(client, inputs.stall_limit)
    for message in _messages(texts):
        if not _wait_for_room(inputs, client, deadline, progress):
            return
        member.send([message])
    end = codec.control_message(
        MessageType.SNAPSHOT_END,
        id=kept[-1].id if kept else since,
        count=len(texts),
        complete=complete,
    )
    member.send([codec.frame(end)])
    member.go_live()
    log.info(
        "client %s: snapshot of %s sent (%d documents, %d changes merged, %.3fs)",
        client.id,
        shown(query.ns),
        len(texts),
        len(kept),
        time.monotonic() - started,
    )


class Pacer:
    """Slices of a snapshot's CPU work: ``with pace:`` around a loop that
    calls ``pace()`` once per document. Within the block this snapshot
    holds the worker's slice lock; every SLICE_DOCS documents it rests
    (while live changes flow) as long as the slice took, still holding
    it, so no other snapshot works meanwhile; then lets it go and waits
    (up to PACE_WAIT) for the broadcaster to be idle. Nothing inside the
    block waits on the network (see :func:`read`)."""

    def __init__(self, inputs: SnapshotInputs) -> None:
        self._inputs = inputs
        self._count = 0
        self._began = 0.0

    def __enter__(self) -> "Pacer":
        self._inputs.slice_lock.acquire()
        self._began = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inputs.slice_lock.release()

    def __call__(self) -> None:
        self._count += 1
        if self._count % SLICE_DOCS:
            return
        inputs = self._inputs
        now = time.monotonic()
        if now - inputs.published_at() < LIVE_WITHIN:
            time.sleep(now - self._began)
        inputs.slice_lock.release()
        try:
            inputs.broadcaster_idle.wait(PACE_WAIT)
        finally:
            inputs.slice_lock.acquire()
        self._began = time.monotonic()


class _NoPace:
    """Pacer's interface, doing nothing (tests, tools)."""

    def __enter__(self) -> "_NoPace":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self) -> None:
        pass


_no_pace = _NoPace()


def read(
    mongo: "MongoClient[Any]",
    query: "DocumentQuery",
    deadline: float,
    pace: Pacer | _NoPace = _no_pace,
) -> tuple[list[Any], bool, "Timestamp | None"]:
    """The matching documents in order (decoded), whether that is all of
    them, and the read's operation time."""
    coll = mongo[query.db].get_collection(
        query.coll, codec_options=_RAW, read_concern=ReadConcern("majority")
    )
    options = mongo.codec_options
    docs: list[Any]  # decoded documents
    docs, size, complete = [], 0, True
    with mongo.start_session(causal_consistency=True) as session:
        cursor = coll.find(
            query.query,
            sort=list(query.sort),
            limit=query.limit + 1,
            session=session,
            max_time_ms=max(1, int((deadline - time.monotonic()) * 1000)),
        )
        with cursor:
            while complete:
                # A slice's documents, fetched without the slice lock: a
                # getMore is a network round trip, and one snapshot's slow
                # one must not stall every other snapshot's CPU work.
                batch = cursor.to_list(SLICE_DOCS)
                if not batch:
                    break
                with pace:
                    for raw in batch:
                        size += len(raw.raw)
                        if len(docs) == query.limit or size > MAX_READ_BYTES:
                            complete = False
                            break
                        docs.append(bson.decode(raw.raw, codec_options=options))
                        pace()
        return docs, complete, session.operation_time


def _wait_for_feed(
    inputs: SnapshotInputs,
    client: "ClientConnection",
    read_end: "Timestamp | None",
    read_done: float,
    deadline: float,
) -> bool:
    """Until the live feed has offered every change up to ``read_end``:
    it has published one at least that late, or the watcher found nothing
    new after the read ended and everything it read before has been
    published.

    "At least that late": changes come in cluster-time order, so every
    earlier one has been offered; one that shares ``read_end`` exactly
    (a transaction's) may still come later, as a change, but nothing the
    read saw can be newer than it, so applying it changes nothing."""
    while not _stopped(inputs, client) and time.monotonic() < deadline:
        through = inputs.published_through()
        try:
            if read_end is not None and through is not None and through >= read_end:
                return True
        except TypeError:
            pass
        caught_up = inputs.watcher_caught_up_as_of()
        if caught_up is not None and caught_up > read_done:
            published = threading.Event()
            if not inputs.submit(Barrier(published.set), inputs.stopping):
                return False
            return published.wait(max(0.0, deadline - time.monotonic()))
        inputs.stopping.wait(0.02)
    return False


def merge(
    sub: "Subscription",
    docs: Iterable[Any],
    kept: Sequence[codec.Change],
    entering: bool = True,
    pace: Pacer | _NoPace = _no_pace,
) -> tuple[list[tuple["HeldKey", Any]], list[str]]:
    """The snapshot ``docs`` with the ``kept`` changes applied, judged by
    ``sub``: returns ``(held, texts)``, the ``(key, _id)`` of every document
    sent and each document's JSON, in order (read order, then new ones).

    The changes are applied by the clients' rules (:mod:`wsproxy.liverules`),
    holding the change itself rather than its document: it is judged (and
    redacted) once, at the end, and only if it is still the last word.

    Without ``entering`` (the limit cut the read short) a kept change
    only updates or removes a document that was read: the snapshot is the
    first ``limit`` documents, and others enter only by changing after it."""
    states = {}  # key -> (_id, document read) or (_id, Change)
    for doc in docs:
        _id = doc.get("_id")
        states[document_key(_id)] = (_id, doc)
    known = set(states)  # what was read (or entered), for ``entering``
    for change in kept:
        effect = liverules.of_change(change.raw)
        if effect is None:
            continue
        if effect.action == liverules.CLEAR:
            known.clear()
        elif not entering and document_key(effect.id) not in known:
            continue
        else:
            known.add(document_key(effect.id))
        liverules.apply(states, effect, document_key, (effect.id, change))
    held, texts = [], []
    query = cast("DocumentQuery", sub.snapshot)  # a snapshot=1 subscription's
    db, coll = query.db, query.coll
    with pace:
        for key, (_id, source) in states.items():
            pace()
            if isinstance(source, codec.Change):
                shown = _judge_change(sub, source)
            else:
                shown = _judge_document(sub, source)
            if shown is not None:
                held.append(((db, coll, key), _id))
                texts.append(codec.dumps(shown))
    return held, texts


def _judge_document(sub: "Subscription", doc: Any) -> Any:
    """The document as the client sees it, or None if it does not match.
    Judged as the change that inserted it would be."""
    event = {"documentKey": {"_id": doc.get("_id")}, "fullDocument": doc}
    seen = redact(event, sub.hide) if sub.hide else event
    if not sub.admits(event, lambda: seen):
        return None
    return seen["fullDocument"]


def _judge_change(sub: "Subscription", change: codec.Change) -> Any:
    if not sub.matches(change):
        return None
    seen = change.redacted_event(sub.hide) if sub.hide else change.raw
    return seen["fullDocument"]


def _messages(texts: Iterable[str]) -> Iterator[bytes]:
    """``snapshot`` messages of about MESSAGE_BYTES each, as frames."""
    batch: list[str]
    batch, size = [], 0
    for text in texts:
        if batch and size + len(text) > MESSAGE_BYTES:
            yield _snapshot_frame(batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        yield _snapshot_frame(batch)


def _snapshot_frame(texts: list[str]) -> bytes:
    # The documents are JSON already: assembled, not encoded again.
    return codec.frame(
        '{"type": "' + MessageType.SNAPSHOT + '", "docs": [' + ", ".join(texts) + "]}"
    )


class _Progress:
    """Whether a client is still reading what it is sent: a snapshot whose
    client takes no byte for ``limit`` seconds gives its slots back (4008)
    at once, rather than after the send timeout or the snapshot's time
    limit (a slow reader still takes some bytes)."""

    def __init__(self, client: "ClientConnection", limit: float) -> None:
        self.client = client
        self.limit = limit
        self.sent = client.sock.bytes_written
        self.since = time.monotonic()

    def stalled(self) -> bool:
        sent = self.client.sock.bytes_written
        now = time.monotonic()
        if sent != self.sent:
            self.sent, self.since = sent, now
        return now - self.since >= self.limit


def _wait_for_room(
    inputs: SnapshotInputs,
    client: "ClientConnection",
    deadline: float,
    progress: _Progress,
) -> bool:
    """Back-pressure: at most half an outbox of snapshot at a time."""
    while not client.wait_for_room(
        client.max_messages // 2, timeout=0.5, below_bytes=client.max_bytes // 2
    ):
        if _stopped(inputs, client):
            return False
        if progress.stalled():
            log.info(
                "client %s: read nothing of its snapshot for %gs; closing "
                "(4008) to free the slot",
                client.id,
                progress.limit,
            )
            client.request_close(
                CloseCode.SLOW_CONSUMER,
                f"read nothing of the snapshot for {progress.limit:g}s; reconnect",
            )
            return False
        if time.monotonic() >= deadline:
            client.request_close(
                CloseCode.TRY_AGAIN, "the snapshot took too long; reconnect"
            )
            return False
    return not _stopped(inputs, client)


def _on_error(client: "ClientConnection", exc: PyMongoError) -> None:
    kind = errorpolicy.classify(exc)
    if kind is errorpolicy.ErrorKind.FATAL:
        log.error(
            "client %s: snapshot refused by the database: %s", client.id, shown(exc)
        )
        client.request_close(
            CloseCode.INTERNAL_ERROR, "the database refused the snapshot; retry later"
        )
    else:
        log.warning("client %s: snapshot failed: %s", client.id, shown(exc))
        client.request_close(
            CloseCode.TRY_AGAIN, "cannot reach the database for the snapshot; retry"
        )
