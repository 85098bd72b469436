"""The watcher (wsproxy/stream/source.py): its error policy, against the
real PyMongo driver.

A MockupDB server plays a one-node replica-set primary: the test scripts
each ``aggregate`` (``$changeStream``) and ``getMore`` reply by hand, so it
decides exactly where an error, a dropped connection or an invalidate event
lands, and then checks what the driver resumed by itself, what the watcher
reopened, from which token, and what reached the hub.

PyMongo 4.20's rule for what it resumes by itself (``_resumable`` in
``pymongo/change_stream_shared.py``): any ``ConnectionFailure`` (a dropped
connection, and also every "not primary"/"node is recovering" code such as
10107, which PyMongo raises as ``NotPrimaryError``, a ``ConnectionFailure``
subclass, with or without a label), ``CursorNotFound`` (43), and any other
server error only if it carries the ``ResumableChangeStreamError`` label;
there is no longer a by-code list for old servers. It resumes at most once
per ``try_next``, and only a cursor that was open: errors from the first
aggregate go straight to the caller.

Synchronisation: the watcher submits every event of a batch before it sends
the next ``getMore``, so "the server received the next getMore" means "the
hub has everything so far"; the hub here is the real :class:`Hub`, not
started, so what the watcher submitted is read back off its intake queue in
order, and nothing is hidden by the broadcaster's de-duplicating history.
"""

import itertools
import json
import logging
import queue
import threading
import time

import pytest
from mockupdb import MockupDB, OpMsg
from pymongo import MongoClient

from wsproxy.fanout.hub import Announcement, Hub
from wsproxy.stream.source import Backoff, ChangeSource
from wsproxy.transport import codec

from .helpers import scaled, sealer_for_tests, wait_for

DB, COLL = "db", "items"
NS = f"{DB}.{COLL}"
RESUMABLE = ["ResumableChangeStreamError"]


# -- events and tokens ------------------------------------------------------


def token(n):
    """A resume token in the server's shape, numbered so it reads back."""
    return {"_data": f"82{n:08X}"}


def number(tok):
    return int(tok["_data"][2:], 16)


def event(n, op="insert"):
    doc = {"_id": token(n), "operationType": op}
    if op != "invalidate":
        doc.update(
            ns={"db": DB, "coll": COLL},
            documentKey={"_id": n},
            fullDocument={"_id": n, "n": n},
        )
    return doc


def stage(request):
    """The ``$changeStream`` options of an aggregate request, as a dict."""
    pipeline = request["pipeline"]
    assert list(pipeline[0]) == ["$changeStream"], request
    return dict(pipeline[0]["$changeStream"])


# -- the hub's intake, read back ----------------------------------------------


def drain(hub):
    """Everything the watcher submitted since the last drain, in order."""
    items = []
    while True:
        try:
            items.append(hub.intake.get_nowait())
        except queue.Empty:
            return items


def describe(items):
    """``["insert 1", "status reconnecting", "reset", ...]``."""
    out = []
    for item in items:
        if isinstance(item, codec.Change):
            out.append(f"{item.raw['operationType']} {number(item.token)}")
        else:
            assert isinstance(item, Announcement), item
            message = json.loads(item.text)
            out.append(
                " ".join(
                    [message["type"]]
                    + ([message["watcher"]] if "watcher" in message else [])
                )
            )
    return out


# -- the scripted server ------------------------------------------------------


def _answering(request, method):
    """``method`` of ``request`` (a reply or hang-up), noting that it ran."""

    def answer(*args, **kwargs):
        request.answered = True
        return method(*args, **kwargs)

    return answer


class MockPrimary:
    """A MockupDB one-node replica-set primary. Handshakes, heartbeats,
    killCursors, endSessions and listCollections are answered automatically;
    aggregate and getMore requests queue up for the test to answer with
    :meth:`expect`."""

    def __init__(self):
        self.server = MockupDB(request_timeout=scaled(10))
        self.server.run()
        address = self.server.address_string
        self.hello = {
            "ismaster": True,
            "isWritablePrimary": True,
            "secondary": False,
            "setName": "rs",
            "setVersion": 1,
            "hosts": [address],
            "primary": address,
            "me": address,
            "minWireVersion": 0,
            "maxWireVersion": 17,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48000000,
            "maxWriteBatchSize": 100000,
            "logicalSessionTimeoutMinutes": 30,
        }
        self.server.autoresponds(self._housekeeping)
        self._cursor_ids = iter(range(101, 10**6))
        self._popped = []  # so teardown can answer what a failed test left

    @property
    def uri(self):
        return self.server.uri

    def _housekeeping(self, request):
        name = (request.command_name or "").lower()
        if name in ("ismaster", "hello"):
            return request.replies(self.hello)
        if name == "killcursors":
            return request.replies(cursorsKilled=list(request["cursors"]))
        if name == "endsessions":
            return request.replies()
        if name == "listcollections":
            # The watcher's one look for the watched collection
            # (wsproxy.stream.scopecheck): it exists.
            return request.replies(
                cursor={
                    "id": 0,
                    "ns": f"{DB}.$cmd.listCollections",
                    "firstBatch": [{"name": COLL, "type": "collection"}],
                }
            )
        return False

    def expect(self, name, timeout=10):
        """The next queued request, which must be a ``name`` command."""
        request = self.server.receives(timeout=scaled(timeout))
        assert request is not None, "the mock server stopped"
        self._track(request)
        assert request.command_name == name, f"expected {name}, got {request!r}"
        if name == "aggregate":
            assert request["aggregate"] == COLL and request.namespace == DB
        return request

    def _track(self, request):
        """Note when ``request`` gets its reply (or hang-up)."""
        request.answered = False
        for name in ("_replies", "hangup"):
            setattr(request, name, _answering(request, getattr(request, name)))
        self._popped.append(request)

    def open_cursor(self, request, events=(), pbrt=None):
        """Answer an aggregate with a new cursor; returns its id."""
        cursor_id = next(self._cursor_ids)
        events = list(events)
        if pbrt is None:
            pbrt = events[-1]["_id"] if events else token(0)
        request.replies(
            cursor={
                "id": cursor_id,
                "ns": NS,
                "firstBatch": events,
                "postBatchResumeToken": pbrt,
            }
        )
        return cursor_id

    def expect_getmore(self, cursor_id, timeout=10):
        request = self.expect("getMore", timeout)
        assert request["getMore"] == cursor_id, request
        assert request["collection"] == COLL
        return request

    def waiting_on(self, cursor_id, timeout=10):
        """Wait until the watcher sends a getMore on ``cursor_id``, and
        leave it queued, unanswered (teardown answers it): the watcher
        submits a whole batch before asking for the next, so from here on
        the hub holds everything the watcher has to publish."""
        assert self.server.got(timeout=scaled(timeout)), (
            f"no request within {scaled(timeout)}s"
        )
        assert self.server.got(OpMsg("getMore", cursor_id), timeout=0), (
            f"the next request is not a getMore on cursor {cursor_id}"
        )

    @staticmethod
    def batch(request, events=(), pbrt=None, cursor_id=None):
        """Answer a getMore (the cursor stays open unless cursor_id=0)."""
        events = list(events)
        if pbrt is None:
            pbrt = events[-1]["_id"] if events else None
        cursor = {
            "id": request["getMore"] if cursor_id is None else cursor_id,
            "ns": NS,
            "nextBatch": events,
        }
        if pbrt is not None:
            cursor["postBatchResumeToken"] = pbrt
        request.replies(cursor=cursor)

    def quiesce(self):
        """Answer everything from now on (and anything already queued) with
        an idle, empty reply, so a watcher blocked on the server can stop."""

        def idle(request):
            name = request.command_name
            if name == "getMore":
                self.batch(request)
            elif name == "aggregate":
                self.open_cursor(request)
            else:
                request.replies()
            return True

        self.server.autoresponds(idle)
        for request in self._popped:  # left unanswered by a failed test
            if not request.answered:
                idle(request)
        while self.server.got(timeout=0):
            idle(self.server.receives(timeout=scaled(1)))

    def stop(self):
        self.server.stop()


@pytest.fixture
def mock():
    server = MockPrimary()
    yield server
    server.stop()


@pytest.fixture
def client(mock):
    client = MongoClient(
        mock.uri,
        directConnection=True,
        serverSelectionTimeoutMS=int(scaled(5000)),
        connectTimeoutMS=int(scaled(5000)),
    )
    yield client
    client.close()


@pytest.fixture
def hub():
    return Hub()


@pytest.fixture
def start_source(mock, client, hub):
    """Factory: a started ChangeSource on db.items; stopped at teardown."""
    sources = []

    def start(**kw):
        kw.setdefault("max_await_ms", 50)
        kw.setdefault("backoff", Backoff(initial=0.01, cap=0.05))
        kw.setdefault("sealer", sealer_for_tests())
        source = ChangeSource(client[DB][COLL], hub, **kw)
        sources.append(source)
        source.start()
        return source

    yield start
    mock.quiesce()
    for source in sources:
        thread = source._thread
        source.stop(timeout=scaled(5))
        assert thread is None or not thread.is_alive(), "watcher did not stop"


@pytest.fixture
def source_log(caplog):
    caplog.set_level(logging.INFO, logger="wsproxy.source")
    return caplog


def logged(caplog, level, text):
    return [
        r
        for r in caplog.records
        if r.name == "wsproxy.source" and r.levelno == level and text in r.getMessage()
    ]


# -- 1, 2, 3 (labelled), 5: the driver resumes by itself ----------------------


def _fail(code, errmsg, labels=None):
    def reply(request):
        kwargs = {"errorLabels": labels} if labels else {}
        request.command_err(code=code, errmsg=errmsg, **kwargs)

    return reply


def _hang_up(request):
    request.hangup()


DRIVER_RESUMES = [
    pytest.param(
        _fail(10107, "not primary", RESUMABLE), id="10107-NotWritablePrimary-labelled"
    ),
    # No label needed: PyMongo raises 10107 as NotPrimaryError, which is a
    # ConnectionFailure, and every ConnectionFailure is resumable.
    pytest.param(_fail(10107, "not primary"), id="10107-NotWritablePrimary-unlabelled"),
    # Resumable by its exception class, CursorNotFound, label or not.
    pytest.param(_fail(43, "cursor id 101 not found"), id="43-CursorNotFound"),
    pytest.param(
        _fail(11601, "operation was interrupted", RESUMABLE),
        id="11601-Interrupted-labelled",
    ),
    pytest.param(_hang_up, id="connection-dropped"),
]


@pytest.mark.parametrize("break_getmore", DRIVER_RESUMES)
def test_driver_resumes_from_the_last_token(mock, hub, start_source, break_getmore):
    """PyMongo resumes inside try_next with resumeAfter = the last token
    (strictly, the batch's postBatchResumeToken, which the server sets to
    the last event's token here); the watcher never sees an error, keeps
    its state, and publishes each event exactly once, in order."""
    source = start_source()

    first = mock.expect("aggregate")
    assert stage(first) == {}
    cursor = mock.open_cursor(first, [event(1), event(2)])

    break_getmore(mock.expect_getmore(cursor))

    resume = mock.expect("aggregate")
    assert stage(resume) == {"resumeAfter": token(2)}
    cursor = mock.open_cursor(resume, [event(3)])

    mock.batch(mock.expect_getmore(cursor), [event(4)])
    mock.waiting_on(cursor)

    assert describe(drain(hub)) == ["insert 1", "insert 2", "insert 3", "insert 4"]
    assert source.resume_token == token(4)
    assert (source.state, source.errors, source.reconnects) == ("connected", 0, 0)


# -- 3 (unlabelled): the watcher reopens by itself ----------------------------

WATCHER_REOPENS = [
    pytest.param(
        _fail(11601, "operation was interrupted"),
        "operation was interrupted",
        id="11601-Interrupted-unlabelled",
    ),
    # The server ends the cursor without an invalidate event.
    pytest.param(
        lambda request: MockPrimary.batch(request, cursor_id=0),
        "closed the change stream",
        id="cursor-closed-by-server",
    ),
]


@pytest.mark.parametrize("break_getmore, message", WATCHER_REOPENS)
def test_watcher_reopens_from_its_last_token(
    mock, hub, start_source, source_log, break_getmore, message
):
    """An error PyMongo does not resume from reaches the watcher: it logs
    it, says "reconnecting", backs off and reopens with resumeAfter = its
    last token; events before and after are published once, in order."""
    source = start_source()

    cursor = mock.open_cursor(mock.expect("aggregate"), [event(1), event(2)])
    break_getmore(mock.expect_getmore(cursor))

    reopen = mock.expect("aggregate")
    assert stage(reopen) == {"resumeAfter": token(2)}
    assert source.state == "reconnecting"
    cursor = mock.open_cursor(reopen, [event(3)])
    mock.waiting_on(cursor)

    assert describe(drain(hub)) == [
        "insert 1",
        "insert 2",
        "status reconnecting",
        "status connected",
        "insert 3",
    ]
    assert (source.state, source.errors, source.reconnects) == ("connected", 1, 1)
    assert logged(source_log, logging.WARNING, message)


def test_watcher_reopens_from_the_post_batch_token_seen_while_idle(
    mock, hub, start_source
):
    """While idle the watcher keeps the server's postBatchResumeToken, and
    reopens from it rather than from the last event."""
    source = start_source()

    cursor = mock.open_cursor(mock.expect("aggregate"), [event(1)])
    mock.batch(mock.expect_getmore(cursor), [], pbrt=token(7))
    _fail(11601, "operation was interrupted")(mock.expect_getmore(cursor))

    reopen = mock.expect("aggregate")
    assert stage(reopen) == {"resumeAfter": token(7)}
    cursor = mock.open_cursor(reopen, [event(8)])
    mock.waiting_on(cursor)

    assert describe(drain(hub)) == [
        "insert 1",
        "status reconnecting",
        "status connected",
        "insert 8",
    ]
    assert source.resume_token == token(8)


def test_error_on_the_drivers_resume_attempt_reaches_the_watcher(
    mock, hub, start_source
):
    """PyMongo resumes once per try_next: when its resume aggregate fails
    too (here a labelled but not retryable-read error), the watcher reopens
    from its own last token."""
    source = start_source()

    cursor = mock.open_cursor(mock.expect("aggregate"), [event(1), event(2)])
    _fail(43, "cursor not found")(mock.expect_getmore(cursor))

    resume = mock.expect("aggregate")
    assert stage(resume) == {"resumeAfter": token(2)}
    _fail(11601, "operation was interrupted", RESUMABLE)(resume)

    reopen = mock.expect("aggregate")
    assert stage(reopen) == {"resumeAfter": token(2)}
    cursor = mock.open_cursor(reopen, [event(3)])
    mock.waiting_on(cursor)

    assert describe(drain(hub)) == [
        "insert 1",
        "insert 2",
        "status reconnecting",
        "status connected",
        "insert 3",
    ]
    assert (source.errors, source.reconnects) == (1, 1)


# -- 4: history lost ----------------------------------------------------------


@pytest.mark.parametrize(
    "code, errmsg",
    [
        (286, "ChangeStreamHistoryLost: resume point no longer in the oplog"),
        (280, "ChangeStreamFatalError: cannot resume stream"),
        (260, "InvalidResumeToken: bad token"),
        # A token the server does not read as one (SecantusDB's FailedToParse):
        # the same policy as a client's catch-up (wsproxy/stream/errorpolicy.py).
        (9, "resume token is not a valid resume token"),
    ],
)
def test_history_lost_on_resume_resets_and_reopens_from_now(
    mock, hub, start_source, source_log, code, errmsg
):
    """The driver's resume attempt fails with a history-lost code: the
    watcher drops its token, announces a reset that makes the hub forget
    its history, and reopens with no resumeAfter/startAfter at all."""
    source = start_source()

    cursor = mock.open_cursor(mock.expect("aggregate"), [event(1), event(2)])
    _fail(43, "cursor not found")(mock.expect_getmore(cursor))

    resume = mock.expect("aggregate")
    assert stage(resume) == {"resumeAfter": token(2)}
    _fail(code, errmsg, ["NonResumableChangeStreamError"])(resume)

    fresh = mock.expect("aggregate")
    assert stage(fresh) == {}  # no resumeAfter, startAfter or startAt...
    assert source.resume_token is None
    cursor = mock.open_cursor(fresh, [event(50)])
    mock.waiting_on(cursor)

    items = drain(hub)
    assert describe(items) == [
        "insert 1",
        "insert 2",
        "reset",
        "status reconnecting",
        "status connected",
        "insert 50",
    ]
    reset = items[2]
    assert reset.forget_history is True
    assert json.loads(reset.text) == {
        "type": "reset",
        "lost": True,
        "reason": "the proxy lost its place in the change stream",
    }
    assert not any(
        getattr(item, "forget_history", False) for item in items if item is not reset
    )
    assert source.resume_token == token(50)
    assert (source.state, source.errors) == ("connected", 1)
    assert logged(source_log, logging.ERROR, "cannot resume")


def test_history_lost_on_getmore_resets_too(mock, hub, start_source):
    """A slow stream can fall off the oplog mid-stream: the server fails the
    getMore itself with 286 (labelled non-resumable); same reset."""
    source = start_source()

    cursor = mock.open_cursor(mock.expect("aggregate"), [event(1)])
    _fail(286, "ChangeStreamHistoryLost", ["NonResumableChangeStreamError"])(
        mock.expect_getmore(cursor)
    )

    fresh = mock.expect("aggregate")
    assert stage(fresh) == {}
    cursor = mock.open_cursor(fresh, [event(60)])
    mock.waiting_on(cursor)

    items = drain(hub)
    assert describe(items) == [
        "insert 1",
        "reset",
        "status reconnecting",
        "status connected",
        "insert 60",
    ]
    assert items[1].forget_history is True
    assert source.resume_token == token(60)


# -- 6: repeated failures back off --------------------------------------------


class AggregateFailures:
    """Fail every aggregate with ``code``, recording when each arrived."""

    def __init__(self, mock, code, errmsg, labels=None):
        self.times = []
        self._lock = threading.Lock()
        self._reply = _fail(code, errmsg, labels)
        mock.server.autoresponds(self._handle)

    def _handle(self, request):
        if request.command_name != "aggregate":
            return False
        with self._lock:
            self.times.append(time.monotonic())
        self._reply(request)
        return True

    def snapshot(self):
        with self._lock:
            return list(self.times)


def test_repeated_failures_back_off_instead_of_spinning(mock, hub, start_source):
    """Every aggregate fails (11601 labelled resumable; PyMongo does not
    resume a stream it never opened): the gaps between attempts grow as the
    backoff says, so a second holds only a handful of attempts; the state
    stays "reconnecting" and clients hear about it once."""
    failures = AggregateFailures(mock, 11601, "operation was interrupted", RESUMABLE)
    backoff = Backoff(initial=0.05, cap=0.4)
    window = 1.0
    source = start_source(backoff=backoff)

    def past_window():
        times = failures.snapshot()
        return len(times) >= 2 and times[-1] - times[0] > window and times

    times = wait_for(past_window, 10, "an attempt 1s after the first")
    in_window = [t for t in times if t - times[0] <= window]
    assert len(in_window) < 15, times
    for k, (a, b) in enumerate(itertools.pairwise(times)):
        least = min(backoff.cap, backoff.initial * 2**k) / 2
        assert b - a >= least, (k, b - a, least)
    assert source.state == "reconnecting" and not source.connected
    assert source.errors >= len(times) - 1
    assert describe(drain(hub)) == ["status reconnecting"]


def test_fatal_errors_wait_the_backoff_cap(mock, hub, start_source, source_log):
    """13 Unauthorized is FATAL: every retry waits the full cap (not the
    growing backoff, which would start at 10ms), state is "failed"."""
    failures = AggregateFailures(mock, 13, "not authorized on db")
    backoff = Backoff(initial=0.01, cap=0.2)
    source = start_source(backoff=backoff)

    def four_attempts():
        times = failures.snapshot()
        return len(times) >= 4 and times

    times = wait_for(four_attempts, 10, "four aggregate attempts")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= backoff.cap for gap in gaps), gaps
    assert source.state == "failed"
    assert describe(drain(hub)) == ["status reconnecting"]
    assert logged(source_log, logging.ERROR, "not authorized on db")


# -- 7: invalidate ------------------------------------------------------------


def test_invalidate_is_delivered_then_the_watcher_starts_after_it(
    mock, hub, start_source
):
    """The invalidate event is published like any other, then the watcher
    opens a new stream at once with startAfter = the invalidate's token."""
    source = start_source()

    cursor = mock.open_cursor(mock.expect("aggregate"), [event(1)])
    mock.batch(
        mock.expect_getmore(cursor),
        [event(2, "drop"), event(3, "invalidate")],
        cursor_id=0,
    )

    again = mock.expect("aggregate")
    assert stage(again) == {"startAfter": token(3)}
    cursor = mock.open_cursor(again, [event(4)])
    mock.waiting_on(cursor)

    assert describe(drain(hub)) == ["insert 1", "drop 2", "invalidate 3", "insert 4"]
    assert source.resume_token == token(4)
    assert (source.state, source.errors, source.reconnects) == ("connected", 0, 1)


def test_error_before_the_first_event_after_invalidate_keeps_start_after(
    mock, hub, start_source
):
    """Until an event arrives on the new stream, a reopen must still use
    startAfter (the server refuses resumeAfter an invalidate token)."""
    source = start_source()

    mock.open_cursor(mock.expect("aggregate"), [event(1, "invalidate")])
    again = mock.expect("aggregate")
    assert stage(again) == {"startAfter": token(1)}
    cursor = mock.open_cursor(again, pbrt=token(1))
    _fail(11601, "operation was interrupted")(mock.expect_getmore(cursor))

    reopen = mock.expect("aggregate")
    assert stage(reopen) == {"startAfter": token(1)}
    cursor = mock.open_cursor(reopen, [event(2)])
    mock.waiting_on(cursor)

    assert describe(drain(hub)) == [
        "invalidate 1",
        "status reconnecting",
        "status connected",
        "insert 2",
    ]
    assert source.resume_token == token(2)
