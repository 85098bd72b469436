"""Failure paths found by reading the code (issue "The edges", 5), each
checked where it lives: the hub, a catch-up, a snapshot, the metrics."""

import pytest

from wsproxy.fanout.hub import Hub

from .test_hub import FakeClient, hello

# -------------------------------------------------- a catch-up that cannot start


def test_a_catch_up_thread_that_cannot_start_leaves_nothing_in_the_hub():
    """At ~1,100 threads a new one may fail to start: the stand-in that was
    already in the hub must leave with it, or it counts toward
    WSPROXY_MAX_CLIENTS for good."""
    hub = Hub()
    client = FakeClient()
    stand_in = FakeClient()

    def catch_up(_client):
        def start():
            raise RuntimeError("can't start new thread")

        return stand_in, start

    with pytest.raises(RuntimeError, match="can't start new thread"):
        with hub.subscribe(client, "not-in-history", hello, catch_up):
            pytest.fail("the block must not run")
    assert len(hub) == 0 and hub.clients() == []


# ------------------------------------------- the watcher's reset mid-catch-up


class _CatchingUpClient(FakeClient):
    max_bytes = 1 << 20


def _reset_frame():
    from wsproxy.transport import codec

    return codec.frame(codec.control_message("reset", lost=True, reason="x"))


def _payload(frame):
    """The text of one unmasked, uncompressed server frame."""
    length, start = frame[1] & 0x7F, 2
    if length == 126:
        length, start = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == start + length
    return frame[start:].decode()


def _kinds(frames):
    import json

    return [
        (m["type"], m.get("event", {}).get("fullDocument", {}).get("i"))
        for m in (json.loads(_payload(f)) for f in frames)
    ]


def test_the_watchers_reset_mid_catch_up_arrives_in_stream_order():
    """Replay has delivered 1; the live feed brings 3, then the watcher
    loses its place (reset), then 10. The replay then reads 2 and meets
    the seam at 3: the client gets 1, 2, 3, reset, 10, the reset where the
    live feed's gap is, not ahead of 2 and 3."""
    from wsproxy.stream.catchup import CatchUp

    from .test_hub import change

    client = _CatchingUpClient()
    catchup = CatchUp(client, buffer_limit=100)
    assert catchup.deliver(change(1))
    catchup.on_change(change(3))
    catchup.on_reset(_reset_frame())
    catchup.on_change(change(10))
    assert _kinds(client.frames) == [("change", 1)]
    assert catchup.deliver(change(2))
    assert not catchup.deliver(change(3))  # the seam
    assert _kinds(client.frames) == [
        ("change", 1),
        ("change", 2),
        ("change", 3),
        ("reset", None),
        ("change", 10),
    ]


def test_a_reset_the_catch_up_read_past_is_not_sent():
    """The replay meets the live feed after the watcher's reset: it read
    on without a gap, so the client is told of none. (The live feed was
    behind the client: 0 is older than its token, never replayed.)"""
    from wsproxy.stream.catchup import CatchUp

    from .test_hub import change

    client = _CatchingUpClient()
    catchup = CatchUp(client, buffer_limit=100)
    catchup.on_change(change(0))
    catchup.on_reset(_reset_frame())
    catchup.on_change(change(10))
    for i in (1, 2, 3, 4):
        assert catchup.deliver(change(i))
    assert not catchup.deliver(change(10))  # the seam, after the reset
    assert _kinds(client.frames) == [
        ("change", 1),
        ("change", 2),
        ("change", 3),
        ("change", 4),
        ("change", 10),
    ]
    # Spliced: a later reset goes straight through, in order.
    catchup.on_reset(_reset_frame())
    assert _kinds(client.frames)[-1] == ("reset", None)


# ---------------------------------- a snapshot's slow getMore stalls no other


def test_a_slow_getmore_does_not_stall_other_snapshots():
    """Snapshot A's getMore goes unanswered; snapshot B, on the same
    worker and the same slice lock, reads all of its documents meanwhile:
    the lock is held for CPU work only, never across a round trip."""
    import threading
    import time
    import types

    from pymongo import MongoClient

    from wsproxy.access.documentquery import DocumentQuery
    from wsproxy.live import snapshot

    from .helpers import scaled
    from .test_source import MockPrimary

    mock = MockPrimary()
    client = MongoClient(
        mock.uri, directConnection=True, serverSelectionTimeoutMS=int(scaled(5000))
    )
    inputs = types.SimpleNamespace(
        slice_lock=threading.Lock(),
        published_at=lambda: 0.0,
        broadcaster_idle=threading.Event(),
    )
    inputs.broadcaster_idle.set()
    deadline = time.monotonic() + scaled(60)

    def query(coll):
        return DocumentQuery("db", coll, {}, (("_id", 1),), 1000)

    def docs(first, count):
        return [{"_id": i} for i in range(first, first + count)]

    results = {}

    def read(name):
        results[name] = snapshot.read(
            client, query(name), deadline, snapshot.Pacer(inputs)
        )

    a = threading.Thread(target=read, args=("a",), name="test-snapshot-a")
    b = threading.Thread(target=read, args=("b",), name="test-snapshot-b")
    try:
        a.start()
        find = mock.server.receives(timeout=scaled(10))
        assert find.command_name == "find" and find["find"] == "a"
        find.replies(cursor={"id": 123, "ns": "db.a", "firstBatch": docs(0, 40)})
        slow = mock.server.receives(timeout=scaled(10))
        assert slow.command_name == "getMore" and slow["getMore"] == 123

        b.start()
        # (Nothing arrives here while a holds the slice lock in its getMore:
        # b sends its find only once it has the lock.)
        find = mock.server.receives(timeout=scaled(10))
        assert find.command_name == "find" and find["find"] == "b"
        find.replies(cursor={"id": 0, "ns": "db.b", "firstBatch": docs(0, 100)})
        b.join(scaled(5))
        assert not b.is_alive(), "snapshot b waited for a's getMore"
        assert [d["_id"] for d in results["b"][0]] == list(range(100))

        slow.replies(cursor={"id": 0, "ns": "db.a", "nextBatch": docs(40, 10)})
        a.join(scaled(10))
        assert not a.is_alive()
        assert [d["_id"] for d in results["a"][0]] == list(range(50))
        assert results["a"][1] is True  # complete
    finally:
        mock.quiesce()
        a.join(scaled(10))
        if b.ident is not None:
            b.join(scaled(10))
        client.close()
        mock.stop()


# ------------------------------------------------- bytes as written to sockets


class _CountingSocket:
    """A client socket that counts the bytes it receives."""

    def __init__(self, sock):
        self.sock = sock
        self.received = 0

    def recv(self, size):
        data = self.sock.recv(size)
        self.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_bytes_sent_are_the_bytes_written_to_sockets(
    mongo, mongo_client, namespace, gunicorn
):
    """wsproxy_bytes_sent_total is what the client received on the wire:
    the handshake's reply, hello, every change frame, the pongs; not
    "messages handed x their average uncompressed size"."""
    import socket

    from .helpers import RawPeer, metric, scaled, scrape, server_env, wait_for

    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    sock = _CountingSocket(socket.create_connection(("127.0.0.1", server.port)))
    try:
        sock.settimeout(scaled(10))
        peer = RawPeer(sock, host=f"127.0.0.1:{server.port}")
        peer.read_until(lambda: peer.accepted, 10, "the handshake")
        peer.take(1)  # hello
        mongo_client[db][coll].insert_many(
            [{"n": n, "pad": "x" * n} for n in range(50)]
        )
        peer.take(50)
        peer.ping([b"a", b"b"])
        peer.take(2)  # the pongs

        seen = {}

        def counted():
            seen["metric"] = metric(scrape(server), "wsproxy_bytes_sent_total")
            return seen["metric"] == sock.received

        try:
            wait_for(counted, 5, "the bytes written to be counted")
        except AssertionError:
            raise AssertionError(
                f"counted {seen['metric']}, received {sock.received}"
            ) from None
    finally:
        sock.close()


# ------------------------------------ a history backlog beyond the outbox bounds


def test_a_history_backlog_beyond_the_outbox_bounds_is_caught_up_instead():
    """Resuming from history queues the backlog at once; more than the
    outbox bounds hold is left to a catch-up from MongoDB, which follows
    the client's pace (a 4008 would bring the client back with the same
    id, to the same backlog)."""
    import threading

    from .test_hub import change

    hub = Hub(history_size=100)
    hub.start()
    try:
        first = change(0)
        events = [first] + [change(i) for i in range(1, 10)]
        stop = threading.Event()
        for event in events:
            assert hub.submit(event, stop)
        from .helpers import wait_for

        wait_for(lambda: hub.history_length() == 10, 5, "the history")

        small = FakeClient()
        small.max_messages = 5
        assert hub.register(small, first.id, hello) is None
        assert small.frames == [] and hub.clients() == []

        by_bytes = FakeClient()
        by_bytes.max_bytes = sum(len(e.frame) for e in events[1:]) - 1
        assert hub.register(by_bytes, first.id, hello) is None
        assert hub.clients() == []

        fits = FakeClient()
        fits.max_messages = 5
        assert hub.register(fits, events[5].id, hello) == "history"
        assert len(fits.frames) == 1 + 4 and hub.clients() == [fits]
    finally:
        hub.stop()


def test_a_resume_beyond_the_outbox_bounds_replays_every_event_once(
    mongo, mongo_client, namespace, gunicorn
):
    from .helpers import WSClient, server_env

    db, coll = namespace
    server = gunicorn(
        server_env(
            mongo.uri,
            db,
            coll,
            WSPROXY_HISTORY_SIZE=100,
            WSPROXY_OUTBOX_MAX_MESSAGES=10,
        )
    )
    live = WSClient(server.ws_url())
    live.recv()
    mongo_client[db][coll].insert_many([{"n": n} for n in range(30)])
    ids = [c["id"] for c in live.changes(30)]
    near = WSClient(server.ws_url(f"resume_after={ids[-6]}"))
    assert near.recv()["resume"] == "history"
    assert [c["id"] for c in near.changes(5)] == ids[-5:]
    far = WSClient(server.ws_url(f"resume_after={ids[0]}"))
    assert far.recv()["resume"] == "catch-up"
    assert [c["id"] for c in far.changes(29)] == ids[1:]
    mongo_client[db][coll].insert_one({"n": 30})
    for client in (live, near, far):
        assert client.recv_type("change")["event"]["fullDocument"]["n"] == 30
        client.close()
