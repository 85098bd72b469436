"""A catch-up (wsproxy/stream/catchup.py): its error policy, against the
real PyMongo driver.

A client resuming from an id this worker no longer holds gets a catch-up: a
change stream of its own, opened with ``resumeAfter`` its token. The same
MockupDB primary as ``test_source.py`` scripts what that stream
meets, and a real :class:`~wsproxy.fanout.connection.ClientConnection`
(its peer never reads) shows what the client is told. Each class of error from
:mod:`wsproxy.stream.errorpolicy` has one answer:

* history lost (the position is gone): a ``reset``, then the live feed;
* fatal (the deployment refuses): closed with 1011, nothing lost, no reset,
  logged at ERROR;
* transient (the network, an election, a shutdown): closed with 1013,
  nothing lost, no reset.
"""

import json
import logging
import socket
import threading
import types

import pytest
from pymongo import MongoClient
from wsproto.frame_protocol import FrameProtocol

from wsproxy import Principal, protocol
from wsproxy.fanout.connection import ClientConnection
from wsproxy.fanout.hub import Hub
from wsproxy.fanout.subscription import EVERYTHING
from wsproxy.limits.throttle import KeyedSlots
from wsproxy.stream.catchup import (
    FATAL_CLOSE,
    RESET_REASON,
    TRANSIENT_CLOSE,
    CatchUp,
    CatchUpInputs,
    catch_up,
)
from wsproxy.stream.source import ChangeSource
from wsproxy.transport import codec
from wsproxy.transport.websocket import GuardedSocket

from .helpers import scaled, sealer_for_tests, wait_for

# The watcher's scripted primary and its tools.
from .test_source import (
    COLL,
    DB,
    RESUMABLE,
    MockPrimary,
    _fail,
    _hang_up,
    event,
    stage,
    token,
)

SEALER = sealer_for_tests()
CLIENT_TOKEN = token(5)  # the client's last event


# -- the server and the client -------------------------------------------------


@pytest.fixture
def mock():
    server = MockPrimary()
    yield server
    server.stop()


@pytest.fixture
def driver(mock):
    """PyMongo, connected to the scripted primary."""
    client = MongoClient(
        mock.uri,
        directConnection=True,
        serverSelectionTimeoutMS=int(scaled(5000)),
        connectTimeoutMS=int(scaled(5000)),
    )
    yield client
    client.close()


class RecordingClient(ClientConnection):
    """A real Client whose peer never reads. Remembers every frame it
    accepted, even those a close then drops from its outbox."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accepted = []

    def preload(self, frames):
        frames = list(frames)
        self.accepted.extend(frames)
        super().preload(frames)

    def _frames_locked(self, items):
        # Every frame offered (offer(), on_changes() and queue() alike), as
        # chosen; the accepted ones are kept below.
        self._chosen = super()._frames_locked(items)
        self._queued = False
        return self._chosen

    def _append_locked(self, frames, bounded=True):
        handed = super()._append_locked(frames, bounded)
        self._queued = True
        self.accepted.extend(frames[:handed])
        return handed

    def _offer_items(self, items, sub):
        self._chosen, self._queued = [], False
        handed = super()._offer_items(items, sub)
        if not self._queued:  # written at once
            self.accepted.extend(self._chosen[: handed or 0])
        return handed

    def messages(self):
        """What it accepted, as the peer would read it."""
        reader = FrameProtocol(client=True, extensions=[])
        reader.receive_bytes(b"".join(self.accepted))
        return [json.loads(f.payload) for f in reader.received_frames()]

    def described(self):
        """``["reset", "insert 6", ...]``."""
        out = []
        for message in self.messages():
            if message["type"] == "change":
                event = message["event"]
                out.append(f"{event['operationType']} {event['fullDocument']['n']}")
            else:
                out.append(message["type"])
        return out


@pytest.fixture
def peer():
    ours, theirs = socket.socketpair()
    conn = types.SimpleNamespace(
        sock=GuardedSocket(ours, 10),
        wake=threading.Event(),
        deflate_bits=None,
        deflate_takeover=False,
    )
    peer = RecordingClient(
        conn,
        max_messages=1000,
        max_bytes=1 << 20,
        ping_interval=0,
        close_timeout=1,
        subscription=EVERYTHING,
        remote_addr="10.1.1.1",
    )
    peer.principal = Principal("ada")
    yield peer
    ours.close()
    theirs.close()


# -- the catch-up ---------------------------------------------------------------


def inputs(open_stream):
    hub = Hub()
    return CatchUpInputs(
        open_stream=open_stream,
        submit=hub.submit,
        published_through=lambda: hub.published_through,
        watcher_caught_up_as_of=lambda: None,
        sealer=SEALER,
        slots=threading.BoundedSemaphore(1),
        slots_per_key=KeyedSlots(1),
        stopping=threading.Event(),
        slot_wait=scaled(1),
        time_limit=scaled(60),
    )


class Run:
    """One catch-up of ``peer`` from CLIENT_TOKEN, in its own thread."""

    def __init__(self, inputs, peer):
        self.inputs = inputs
        self.peer = peer
        self.member = CatchUp(peer, 1000)
        self.thread = threading.Thread(
            target=catch_up,
            args=(inputs, self.member, SEALER.seal(CLIENT_TOKEN)),
            name="test-catchup",
        )

    def live(self, n):
        """The broadcaster offers live event ``n`` to the catch-up."""
        return self.member.on_change(codec.Change(event(n), SEALER))

    def finished(self):
        self.thread.join(scaled(10))
        return not self.thread.is_alive()

    def slots_free(self):
        """Both of the catch-up's slots were given back."""
        if not self.inputs.slots.acquire(blocking=False):
            return False
        self.inputs.slots.release()
        return self.inputs.slots_per_key.in_use(("principal", "ada")) == 0


@pytest.fixture
def run(mock, driver, peer):
    runs = []

    def start():
        # A real ChangeSource's stream (its watcher is not started).
        source = ChangeSource(driver[DB][COLL], Hub(), sealer=SEALER, max_await_ms=50)
        runs.append(Run(inputs(source.open_stream), peer))
        runs[-1].thread.start()
        return runs[-1]

    yield start
    mock.quiesce()
    for each in runs:
        each.inputs.stopping.set()
        assert each.finished(), "the catch-up did not end"


def opening(mock):
    """The catch-up's first aggregate: from the client's token, in small
    batches."""
    request = mock.expect("aggregate")
    assert stage(request) == {"resumeAfter": CLIENT_TOKEN}
    assert request["cursor"] == {"batchSize": 16}
    return request


@pytest.fixture
def resume_log(caplog):
    caplog.set_level(logging.INFO, logger="wsproxy.resume")
    return caplog


def logged(caplog, level, text):
    return [
        r
        for r in caplog.records
        if r.name == "wsproxy.resume" and r.levelno == level and text in r.getMessage()
    ]


def assert_closed_without_reset(run, close):
    assert run.finished()
    assert run.peer._close_request == close
    assert "reset" not in run.peer.described()
    assert not run.member.spliced
    assert run.slots_free()


# -- history lost: a reset, then live ----------------------------------------

HISTORY_LOST = [
    pytest.param(
        286,
        "ChangeStreamHistoryLost: resume point no longer in the oplog",
        id="286-ChangeStreamHistoryLost",
    ),
    pytest.param(
        280,
        "cannot resume stream; the resume token was not found",
        id="280-ChangeStreamFatalError",
    ),
    pytest.param(260, "InvalidResumeToken", id="260-InvalidResumeToken"),
    # What SecantusDB says for a token it cannot read (FailedToParse).
    pytest.param(
        9, "resume token is not a valid resume token", id="9-FailedToParse-token"
    ),
    # MongoDB's own parse of a token (resume_token.cpp).
    pytest.param(40649, "invalid empty resume token", id="40649-empty-token"),
]


@pytest.mark.parametrize("code, errmsg", HISTORY_LOST)
def test_a_lost_position_gets_a_reset_then_the_live_feed(
    mock, run, resume_log, code, errmsg
):
    catching_up = run()
    request = opening(mock)
    # Published while the catch-up waits on the server: held for later.
    assert catching_up.live(10) is False
    _fail(code, errmsg, ["NonResumableChangeStreamError"])(request)

    wait_for(lambda: catching_up.member.spliced, 10, "the reset")
    assert catching_up.live(11) is True  # the live feed, straight through
    assert catching_up.finished()
    assert catching_up.peer.described() == ["reset", "insert 10", "insert 11"]
    assert catching_up.peer.messages()[0] == {
        "type": "reset",
        "lost": True,
        "reason": RESET_REASON,
    }
    assert not catching_up.peer.closing
    assert catching_up.slots_free()
    assert logged(resume_log, logging.INFO, "cannot resume")


def test_falling_off_the_oplog_mid_replay_gets_a_reset_after_the_events(mock, run):
    """The replay's getMore fails with 286 (a slow catch-up outrun by the
    oplog): what was replayed stays delivered, then the reset, then the
    live feed."""
    catching_up = run()
    cursor = mock.open_cursor(opening(mock), [event(6), event(7)])
    catching_up.live(10)
    _fail(286, "ChangeStreamHistoryLost", ["NonResumableChangeStreamError"])(
        mock.expect_getmore(cursor)
    )

    wait_for(lambda: catching_up.member.spliced, 10, "the reset")
    assert catching_up.finished()
    assert catching_up.peer.described() == [
        "insert 6",
        "insert 7",
        "reset",
        "insert 10",
    ]


# -- fatal: 1011, nothing lost ------------------------------------------------

FATAL = [
    pytest.param(
        13,
        'not authorized on db to execute command { aggregate: "items" ... }',
        id="13-Unauthorized",
    ),
    pytest.param(
        8000,
        "user is not allowed to do action [changeStream] on [db.items]",
        id="8000-AtlasError",
    ),
    pytest.param(
        40573,
        "The $changeStream stage is only supported on replica sets",
        id="40573-not-a-replica-set",
    ),
]


@pytest.mark.parametrize("code, errmsg", FATAL)
def test_a_refusal_closes_with_1011_saying_nothing_was_lost(
    mock, run, resume_log, code, errmsg
):
    catching_up = run()
    _fail(code, errmsg)(opening(mock))

    wait_for(lambda: catching_up.peer.closing, 10, "the close")
    assert_closed_without_reset(catching_up, FATAL_CLOSE)
    code_sent, reason = FATAL_CLOSE
    assert code_sent == protocol.CloseCode.INTERNAL_ERROR == 1011
    assert "nothing was lost" in reason and "retry later" in reason
    assert errmsg not in reason  # the driver's text stays in the log
    assert logged(resume_log, logging.ERROR, errmsg)


def test_a_refusal_mid_replay_closes_with_1011_after_the_events(mock, run, resume_log):
    """A role revoked while the client catches up: the getMore fails with
    13 (not resumable: PyMongo raises it at once). The close comes after
    what was replayed; the client resumes after the last event it got."""
    catching_up = run()
    cursor = mock.open_cursor(opening(mock), [event(6)])
    _fail(13, "not authorized on db")(mock.expect_getmore(cursor))

    wait_for(lambda: catching_up.peer.closing, 10, "the close")
    assert_closed_without_reset(catching_up, FATAL_CLOSE)
    assert catching_up.peer.described() == ["insert 6"]
    assert logged(resume_log, logging.ERROR, "not authorized on db")


# -- transient: 1013, nothing lost --------------------------------------------


class EveryAggregate:
    """Answer every aggregate from now on with ``reply``, counting them
    (PyMongo retries a failed first aggregate once by itself)."""

    def __init__(self, mock, reply):
        self.count = 0
        self._reply = reply
        mock.server.autoresponds(self._handle)

    def _handle(self, request):
        if request.command_name != "aggregate":
            return False
        self.count += 1
        self._reply(request)
        return True


TRANSIENT = [
    pytest.param(_fail(10107, "not primary"), id="10107-NotWritablePrimary"),
    pytest.param(
        _fail(11600, "interrupted at shutdown"), id="11600-InterruptedAtShutdown"
    ),
    pytest.param(
        _fail(91, "the server is in quiesce mode"), id="91-ShutdownInProgress"
    ),
    pytest.param(_fail(189, "primary stepped down"), id="189-PrimarySteppedDown"),
    pytest.param(
        _fail(262, "operation exceeded time limit"), id="262-ExceededTimeLimit"
    ),
    pytest.param(
        _fail(11601, "operation was interrupted", RESUMABLE),
        id="11601-Interrupted-labelled",
    ),
    pytest.param(_fail(12345, "a code nobody has named"), id="unknown-code"),
    pytest.param(_hang_up, id="connection-dropped"),
]


@pytest.mark.parametrize("reply", TRANSIENT)
def test_a_transient_error_closes_with_1013_saying_nothing_was_lost(
    mock, run, resume_log, reply
):
    catching_up = run()
    failing = EveryAggregate(mock, reply)

    wait_for(lambda: catching_up.peer.closing, 10, "the close")
    assert_closed_without_reset(catching_up, TRANSIENT_CLOSE)
    assert 1 <= failing.count <= 2  # the driver's one retry, no loop
    code, reason = TRANSIENT_CLOSE
    assert code == protocol.CloseCode.TRY_AGAIN == 1013
    assert "nothing was lost" in reason
    assert logged(resume_log, logging.WARNING, "catch-up failed")
    assert not logged(resume_log, logging.ERROR, "")


def test_a_dropped_connection_mid_replay_closes_with_1013_after_the_events(mock, run):
    """The getMore's connection drops; PyMongo resumes from the last event
    by itself, and when that fails too the client is closed with 1013
    after the events replayed so far (it resumes after the last it got)."""
    catching_up = run()
    cursor = mock.open_cursor(opening(mock), [event(6), event(7)])
    _hang_up(mock.expect_getmore(cursor))
    resume = mock.expect("aggregate")
    assert stage(resume) == {"resumeAfter": token(7)}
    EveryAggregate(mock, _hang_up)
    _hang_up(resume)

    wait_for(lambda: catching_up.peer.closing, 10, "the close")
    assert_closed_without_reset(catching_up, TRANSIENT_CLOSE)
    assert catching_up.peer.described() == ["insert 6", "insert 7"]


def test_what_the_driver_resumes_from_never_reaches_the_client(mock, run):
    """A dropped getMore the driver's own resume recovers from: the client
    sees only the events, once each, in order."""
    catching_up = run()
    cursor = mock.open_cursor(opening(mock), [event(6)])
    _hang_up(mock.expect_getmore(cursor))
    resume = mock.expect("aggregate")
    assert stage(resume) == {"resumeAfter": token(6)}
    cursor = mock.open_cursor(resume, [event(7)])
    mock.waiting_on(cursor)

    assert catching_up.peer.described() == ["insert 6", "insert 7"]
    assert not catching_up.peer.closing


# -- and what is not a database error ------------------------------------------


def test_a_bug_closes_with_1011_internal_error(peer, resume_log):
    """Not a PyMongoError: logged with its traceback, "internal error"."""

    def broken(**kwargs):
        raise ZeroDivisionError("a bug")

    catching_up = Run(inputs(broken), peer)
    catching_up.thread.run()  # here, in this thread
    assert peer._close_request == (protocol.CloseCode.INTERNAL_ERROR, "internal error")
    assert "reset" not in peer.described()
    assert catching_up.slots_free()
    [record] = logged(resume_log, logging.ERROR, "catch-up failed")
    assert record.exc_info[0] is ZeroDivisionError
