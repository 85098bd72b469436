"""Fail closed (issue 10): nothing one client does can hold up the others.
No client work under the hub's lock, connections rate-limited per principal
or address, catch-ups bounded per principal, in time and in bytes; and the
seams stay exact."""

import json

import pytest
from websockets.exceptions import InvalidStatus

from .helpers import WSClient, sealer_for_tests

# ---------------------------------------------------------------------------
# Resuming from history holds the hub's lock for no client-controlled work
# (hub.py), and the seam stays exact.


class _Recorder:
    """A hub member that records frames; ``wants`` may be made to block."""

    max_messages, max_bytes = 1000, 1 << 30
    deflate_bits = None

    def __init__(self, wants=None):
        import threading

        from wsproxy.fanout.subscription import EVERYTHING
        from wsproxy.transport.codec import Shape

        self.frames = []
        self.closed = None
        self.got = threading.Condition()

        class Sub:
            hide = ()

            def decide(self, change):
                return Shape.CHANGE if wants is None or wants(change) else None

            def frame(self, change, deflate_bits=None, shape=None):
                return EVERYTHING.frame(change)

        self.subscription = Sub()

    def prepare(self, change, sub=None):
        import types

        sub = sub or self.subscription
        if sub.decide(change) is None:
            return None
        return types.SimpleNamespace(data=sub.frame(change))

    def offer_item(self, item):
        return self.offer(item.data)

    def queue(self, items):
        frames = [bytes(getattr(i, "data", i)) for i in items if i is not None]
        with self.got:
            self.frames.extend(frames)
            self.got.notify_all()
        return len(frames)

    def on_change(self, change):
        return self.subscription.decide(change) is not None and self.offer(
            self.subscription.frame(change)
        )

    def offer(self, data):
        with self.got:
            self.frames.append(bytes(data))
            self.got.notify_all()
        return True

    on_reset = offer

    def on_changes(self, changes):
        return sum(1 for change in changes if self.on_change(change))

    def preload(self, frames):
        with self.got:
            self.frames.extend(bytes(f) for f in frames)
            self.got.notify_all()

    def request_close(self, code, reason):
        self.closed = (code, reason)

    def wait_for(self, count, timeout=5):
        return self.wait_until(lambda frames: len(frames) >= count, timeout)

    def wait_until(self, predicate, timeout=5):
        from .helpers import scaled

        with self.got:
            assert self.got.wait_for(lambda: predicate(self.frames), scaled(timeout)), (
                len(self.frames)
            )
        return self.frames


def _numbered(i):
    from wsproxy.transport import codec

    return codec.Change(
        {
            "_id": {"_data": f"82{i:08X}"},
            "operationType": "insert",
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": i},
            "fullDocument": {"i": i},
        },
        sealer_for_tests(),
    )


def _hello(mode):
    from wsproxy.transport import codec

    return codec.control_message("hello", resume=mode)


def test_a_slow_filter_replaying_history_does_not_hold_up_the_others():
    import threading

    from wsproxy.fanout.hub import Hub
    from wsproxy.transport import codec

    from .helpers import scaled

    hub = Hub(history_size=100)
    hub.start()
    stop = threading.Event()
    entered, release = threading.Event(), threading.Event()
    try:
        bystander = _Recorder()
        hub.register(bystander, None, _hello)
        events = [_numbered(i) for i in range(40)]
        for change in events[:20]:
            hub.submit(change, stop)
        bystander.wait_for(21)

        # The resuming client's filter blocks on its first event, as a
        # costly filter over a long history would.
        def slow(change):
            entered.set()
            assert release.wait(scaled(10))
            return True

        slow_client = _Recorder(wants=slow)
        result = []
        joiner = threading.Thread(
            target=lambda: result.append(
                hub.register(slow_client, events[9].id, _hello)
            ),
            name="test-joiner",
        )
        joiner.start()
        assert entered.wait(scaled(5))
        # Meanwhile the broadcaster keeps publishing to everyone else.
        for change in events[20:30]:
            hub.submit(change, stop)
        bystander.wait_for(31)
        release.set()
        joiner.join(scaled(5))
        assert result == ["history"]
        for change in events[30:]:
            hub.submit(change, stop)
        # The seam: 10..39, each once, in order, after the hello.
        frames = slow_client.wait_for(31)
        assert frames == [codec.frame(_hello("history"))] + [
            e.frame for e in events[10:]
        ]
        assert len(hub) == 2
    finally:
        release.set()
        hub.stop()


def test_resumes_from_history_racing_the_broadcaster_see_no_gap_or_repeat():
    import random
    import threading

    from wsproxy.fanout.hub import Announcement, Hub
    from wsproxy.transport import codec

    # The history holds every event: a joiner that a busy machine slows
    # down still finds its id (the race is with publishing, not eviction).
    hub = Hub(history_size=1000)
    hub.start()
    stop = threading.Event()
    events = [_numbered(i) for i in range(600)]
    status = Announcement(codec.control_message("status", watcher="x"))
    try:
        anchor = _Recorder()
        hub.register(anchor, None, _hello)
        for change in events[:200]:
            hub.submit(change, stop)
        anchor.wait_for(201)
        joined = []

        def join_many():
            rng = random.Random(7)
            for _ in range(60):
                client = _Recorder()
                after = rng.randrange(100, 200)
                assert hub.register(client, events[after].id, _hello) == "history"
                joined.append((after, client))

        joiner = threading.Thread(target=join_many, name="test-joiners")
        joiner.start()
        for i, change in enumerate(events[200:], 200):
            hub.submit(change, stop)
            if i == 400:
                hub.submit(status, stop)
        joiner.join()
        anchor.wait_for(402)
        frame_of = {e.frame: i for i, e in enumerate(events)}
        last = events[-1].frame
        for after, client in joined:
            # Until the last event, not a count: a joiner that got in after
            # the status (a slowed-down joiner thread) resumed from the
            # history, which has no status, and gets one frame fewer.
            frames = client.wait_until(lambda frames: last in frames)[1:]
            numbers = [frame_of.get(f, "status") for f in frames]
            changes = [n for n in numbers if n != "status"]
            assert changes == list(range(after + 1, len(events))), after
            if "status" in numbers:  # where the live feed had it
                assert numbers[numbers.index("status") - 1] == 400
    finally:
        hub.stop()


# ---------------------------------------------------------------------------
# Connections per principal or address (throttle.py; its buckets and slots
# on their own: tests/test_throttle.py).


def test_too_many_connections_get_429_before_the_upgrade(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_CONNECT_RATE": "0.01",
            "WSPROXY_CONNECT_BURST": "3",
        }
    )
    near = {"source_address": ("127.0.0.1", 0)}
    bystander = WSClient(server.ws_url(), source_address=("127.0.0.2", 0))
    assert bystander.recv()["type"] == "hello"
    for _ in range(3):
        WSClient(server.ws_url(), **near).close()
    with pytest.raises(InvalidStatus) as info:
        WSClient(server.ws_url(), **near)
    response = info.value.response
    assert response.status_code == 429
    assert "too many connections" in json.loads(response.body)["error"]
    assert int(response.headers["Retry-After"]) >= 1
    # Another address is not held to that one's budget, and nobody
    # connected lost anything.
    WSClient(server.ws_url(), source_address=("127.0.0.3", 0)).close()
    mongo_client[db][coll].insert_one({"n": 1})
    assert bystander.recv_type("change")["event"]["fullDocument"]["n"] == 1
    bystander.close()


# ---------------------------------------------------------------------------
# The attack, end to end: reconnects resuming from a full history with the
# costliest legal filter, for 10 s, against the default limits.

ATTACK_SECONDS = 10
PREFILL = 1000  # a full history (WSPROXY_HISTORY_SIZE)


def _costly_filter(max_query_chars=3700):
    """As many terms as fit in a URL gunicorn accepts (its request line is
    4094 bytes): each walks an array of sub-documents and compares."""
    import urllib.parse

    terms, best = [], None
    while True:
        terms.append({"fullDocument.items.sku": {"$gt": "~", "$lt": "!"}})
        text = json.dumps({"$or": terms}, separators=(",", ":"))
        if len(urllib.parse.quote_plus(text)) > max_query_chars:
            return best
        best = text


# A client reconnecting as fast as it can until the time is up; prints how
# the attempts ended. argv: URL, seconds, open timeout, threads.
_ATTACKER = """
import json, sys, threading, time
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
url, seconds, open_timeout, count = (sys.argv[1], float(sys.argv[2]),
                                     float(sys.argv[3]), int(sys.argv[4]))
end = time.monotonic() + seconds
counts = {"ok": 0, "429": 0, "other": 0}
def attack():
    while time.monotonic() < end:
        try:
            connect(url, compression=None, max_size=None, legacy=True,
                    open_timeout=open_timeout).socket.close()
            counts["ok"] += 1
        except InvalidStatus as exc:
            counts["429" if exc.response.status_code == 429 else "other"] += 1
        except Exception:
            counts["other"] += 1
"""


@pytest.mark.timing  # the bystanders' latency: alone on the machine
def test_a_reconnect_storm_with_a_costly_filter_does_not_freeze_the_worker(
    mongo, mongo_client, namespace, gunicorn
):
    import random
    import urllib.parse

    from . import attack
    from .helpers import scaled

    db, coll = namespace
    server = attack.serve(gunicorn, mongo, db, coll)
    items = mongo_client[db][coll]
    rng = random.Random(10)
    bystanders = attack.connect_bystanders(server)
    items.insert_many([attack.order(-1, rng, pre=i) for i in range(PREFILL)])
    # Early enough that most of the history follows it, late enough that
    # the attack's writes do not evict it: a resume from history.
    resume_ids = [
        client.changes(PREFILL, timeout=30)[200]["id"] for client in bystanders
    ]
    assert len(set(resume_ids)) == 1
    costly = _costly_filter()
    attack_url = server.ws_url(
        urllib.parse.urlencode({"resume_after": resume_ids[0], "filter": costly})
    )
    assert len(urllib.parse.quote_plus(costly)) > 3500  # 3.6 KB in the URL

    report = attack.run(
        server,
        items,
        rng,
        bystanders,
        [
            _ATTACKER + attack.RUN_ATTACKERS,
            attack_url,
            str(ATTACK_SECONDS),
            str(scaled(60)),
            "1",
        ],
        ATTACK_SECONDS,
    )
    assert report.outcomes["ok"] >= 1 and report.outcomes["429"] >= 1
    log = server.output()
    assert "resume: history" in log and "resume: catch-up" not in log
    report.assert_contained(ATTACK_SECONDS)
    for client in bystanders:
        client.close()


# ---------------------------------------------------------------------------
# Catch-up bounds (resume.py): bytes, time, per principal, encoding.


class _Stream:
    """A change stream of ``count`` inserts of ``size`` bytes each."""

    def __init__(self, count, size, ns=lambda i: "orders"):
        self.count, self.size, self.ns = count, size, ns
        self.read = 0
        self.on_read = lambda: None
        self.alive = True  # a cursor the server keeps open

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def try_next(self):
        from bson import Timestamp

        self.on_read()
        if self.read >= self.count:
            return None
        i, self.read = self.read, self.read + 1
        return {
            "_id": {"_data": f"82{i:08X}"},
            "operationType": "insert",
            "clusterTime": Timestamp(1000 + i, 1),
            "ns": {"db": "shop", "coll": self.ns(i)},
            "documentKey": {"_id": i},
            "fullDocument": {"_id": i, "pad": "x" * self.size},
        }


_RESUME_ID = sealer_for_tests().seal({"_data": "82FFFFFFFF"})


def _catch_up_inputs(stream, **config):
    """A catch-up's inputs around ``stream``, with no watcher and a hub
    that is not started."""
    import threading

    from wsproxy.fanout.hub import Hub
    from wsproxy.limits.throttle import KeyedSlots
    from wsproxy.stream.catchup import CatchUpInputs

    settings = {"slot_wait": 0.2, "time_limit": 60.0, **config}
    hub = Hub()
    return CatchUpInputs(
        open_stream=lambda **kw: stream,
        submit=hub.submit,
        published_through=lambda: hub.published_through,
        watcher_caught_up_as_of=lambda: None,
        sealer=sealer_for_tests(),
        stopping=threading.Event(),
        slots=threading.BoundedSemaphore(16),
        slots_per_key=KeyedSlots(2),
        **settings,
    )


def _stalled_client(subscription, max_messages=1000, max_bytes=1 << 20):
    """A real ClientConnection whose peer never reads (nothing drains its outbox)."""
    import socket
    import threading
    import types

    from wsproxy import Principal
    from wsproxy.fanout.connection import ClientConnection
    from wsproxy.transport.websocket import GuardedSocket

    ours, theirs = socket.socketpair()
    conn = types.SimpleNamespace(
        sock=GuardedSocket(ours, 10),
        wake=threading.Event(),
        deflate_bits=None,
        deflate_takeover=False,
    )
    client = ClientConnection(
        conn,
        max_messages=max_messages,
        max_bytes=max_bytes,
        ping_interval=0,
        close_timeout=1,
        subscription=subscription,
        remote_addr="10.1.1.1",
    )
    client.principal = Principal("ada")
    return client, (ours, theirs)


def _start_catch_up(inputs, member, name="test-catchup"):
    """``catch_up`` from _RESUME_ID on a thread of its own, started."""
    import threading

    from wsproxy.stream.catchup import catch_up

    runner = threading.Thread(
        target=catch_up, args=(inputs, member, _RESUME_ID), name=name
    )
    runner.start()
    return runner


def _closed_by(client, runner, what):
    """Wait until the catch-up closes ``client`` and its thread ends;
    returns the (code, reason) it closed with."""
    from .helpers import scaled, wait_for

    wait_for(lambda: client.closing, 10, what)
    runner.join(scaled(5))
    assert not runner.is_alive()
    return client._close_request


def test_a_stalled_catch_up_is_bounded_in_bytes_and_then_in_time():

    from wsproxy import protocol
    from wsproxy.fanout.subscription import EVERYTHING
    from wsproxy.stream.catchup import CatchUp

    stream = _Stream(count=500, size=100_000)  # 100 KB documents
    inputs = _catch_up_inputs(stream, time_limit=1.0)
    client, sockets = _stalled_client(EVERYTHING, max_bytes=1_000_000)
    member = CatchUp(client, 1000)
    held = []  # the outbox's bytes whenever the replay reads on
    stream.on_read = lambda: held.append(client._outbox_bytes)
    runner = _start_catch_up(inputs, member)
    try:
        # Bounded in time: closed with 1013 once the limit has passed.
        code, reason = _closed_by(client, runner, "the catch-up time limit")
        assert code == protocol.CloseCode.TRY_AGAIN
        assert "catch-up took longer than 1s" in reason
        # ...and in bytes: it read on only while under half the outbox's
        # bytes, so what it held never passed that plus one document.
        assert stream.read <= 7, stream.read
        assert max(held) < 500_000, max(held)
    finally:
        for sock in sockets:
            sock.close()


def test_a_catch_up_stream_the_server_ends_is_not_taken_for_idle():
    # Without an error and without an invalidate there is no telling where
    # the stream stopped: joining the live feed there could skip events.

    from wsproxy import protocol
    from wsproxy.fanout.subscription import EVERYTHING
    from wsproxy.stream.catchup import CatchUp

    stream = _Stream(count=3, size=10)
    stream.on_read = lambda: setattr(stream, "alive", stream.read < 3)
    inputs = _catch_up_inputs(stream)
    client, sockets = _stalled_client(EVERYTHING)
    member = CatchUp(client, 1000)
    runner = _start_catch_up(inputs, member)
    try:
        code, reason = _closed_by(client, runner, "the catch-up to give up")
        assert not member.spliced and member.replayed == 3
        assert code == protocol.CloseCode.TRY_AGAIN
        assert "nothing was lost" in reason
    finally:
        for sock in sockets:
            sock.close()


def test_the_replay_encodes_only_what_the_client_is_sent(monkeypatch):

    from wsproxy.fanout.subscription import Subscription
    from wsproxy.stream.catchup import CatchUp
    from wsproxy.transport import codec

    from .helpers import scaled, wait_for

    built = []
    real_frame = codec.frame
    monkeypatch.setattr(
        codec, "frame", lambda text: built.append(1) or real_frame(text)
    )
    # One event in ten is in the client's namespace.
    stream = _Stream(
        count=200, size=1000, ns=lambda i: "orders" if i % 10 == 0 else "other"
    )
    inputs = _catch_up_inputs(stream)
    client, sockets = _stalled_client(Subscription(namespaces={"shop.orders"}))
    member = CatchUp(client, 1000)
    runner = _start_catch_up(inputs, member)
    try:
        wait_for(lambda: stream.read == 200 and member.replayed == 20, 10, "the replay")
    finally:
        inputs.stopping.set()
        runner.join(scaled(5))
        for sock in sockets:
            sock.close()
    assert member.replayed == 20
    assert len(built) == 20, len(built)


def test_a_principal_gets_only_its_share_of_catch_ups():

    from wsproxy import Principal, protocol
    from wsproxy.fanout.subscription import EVERYTHING
    from wsproxy.stream.catchup import CatchUp

    from .helpers import scaled, wait_for

    inputs = _catch_up_inputs(_Stream(count=500, size=100_000))
    runs, clients, sockets = [], [], []
    try:
        for name in ("ada", "ada", "ada", "ken"):
            client, pair = _stalled_client(EVERYTHING, max_bytes=1_000_000)
            client.principal = Principal(name)
            sockets.extend(pair)
            clients.append(client)
            runs.append(
                _start_catch_up(
                    inputs, CatchUp(client, 1000), name=f"test-catchup-{name}"
                )
            )
            if len(runs) == 2:
                wait_for(
                    lambda: inputs.slots_per_key.in_use(("principal", "ada")) == 2,
                    5,
                    "two catch-ups for ada",
                )
        third, other = clients[2], clients[3]
        wait_for(lambda: third.closing, 5, "the third catch-up to be refused")
        code, reason = third._close_request
        assert code == protocol.CloseCode.TRY_AGAIN
        assert "too many catch-ups for this client (limit 2)" in reason
        # Another principal still gets one.
        assert not other.closing
        assert inputs.slots_per_key.in_use(("principal", "ken")) == 1
    finally:
        inputs.stopping.set()
        for run in runs:
            run.join(scaled(5))
        for sock in sockets:
            sock.close()
    assert not inputs.slots_per_key._used


@pytest.mark.heavy
def test_slow_catch_ups_cannot_take_every_slot_or_grow_the_worker(
    mongo, mongo_client, namespace, gunicorn
):
    """One address opens six catch-ups and stops reading: two run (its
    share), the others are refused with 1013; each running one holds at
    most half an outbox; both end at the time limit. Meanwhile another
    client catches up in full and a bystander misses nothing."""
    import psutil

    from .helpers import metric, scaled, scrape, wait_for

    db, coll = namespace
    limit = 8  # WSPROXY_CATCHUP_TIMEOUT
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_HISTORY_SIZE": "20",
            "WSPROXY_CLOSE_TIMEOUT": "2",
            "WSPROXY_PING_INTERVAL": "0",
            "WSPROXY_SEND_TIMEOUT": str(scaled(60)),
            "WSPROXY_CATCHUP_TIMEOUT": str(scaled(limit)),
        }
    )
    worker = psutil.Process(server.worker_pids()[0])
    items = mongo_client[db][coll]
    bystander = WSClient(server.ws_url(), source_address=("127.0.0.3", 0))
    assert bystander.recv()["type"] == "hello"
    pad = "x" * 100_000
    got = []
    for start in range(0, 200, 20):  # 20 MB of 100 KB documents
        items.insert_many([{"seq": i, "pad": pad} for i in range(start, start + 20)])
        got += bystander.changes(20, timeout=30)
    assert [m["event"]["fullDocument"]["seq"] for m in got] == list(range(200))
    first = got[0]["id"]
    rss_before = worker.memory_info().rss

    query = f"resume_after={first}"
    stalled = [
        WSClient(server.ws_url(query), max_queue=4, source_address=("127.0.0.1", 0))
        for _ in range(6)
    ]
    try:

        def refused():
            return [c for c in stalled if c.ws.close_code == 1013]

        wait_for(lambda: len(refused()) == 4, 15, "four of the six to be refused")
        for client in refused():
            assert (
                "too many catch-ups for this client (limit 2)" in client.ws.close_reason
            )
        assert metric(scrape(server), "wsproxy_catchups_active") == 2
        rss_stalled = worker.memory_info().rss

        # Another address catches up in full meanwhile.
        legit = WSClient(server.ws_url(query), source_address=("127.0.0.2", 0))
        assert legit.recv()["resume"] == "catch-up"
        seqs = [
            m["event"]["fullDocument"]["seq"] for m in legit.changes(199, timeout=30)
        ]
        assert seqs == list(range(1, 200))
        items.insert_one({"seq": 200})
        assert legit.recv_type("change")["event"]["fullDocument"]["seq"] == 200
        assert bystander.recv_type("change")["event"]["fullDocument"]["seq"] == 200
        legit.close()

        # Each stalled catch-up held at most half an outbox (4 MiB) of
        # frames; without that bound each held its whole 20 MB backlog.
        grown = (rss_stalled - rss_before) / (1 << 20)
        print(f"\ntwo stalled catch-ups of 20 MB: worker RSS +{grown:.1f} MB")
        assert grown < 30, grown
        # Then the time limit ends them: 1013, resume from the last id.
        wait_for(
            lambda: metric(scrape(server), "wsproxy_catchups_active") == 0,
            limit + 15,
            "the stalled catch-ups to reach their limit",
        )
        for client in stalled:
            if client.ws.close_code is None:
                code, reason = client.wait_closed(timeout=30)
                assert code == 1013, (code, reason)
                assert f"catch-up took longer than {scaled(limit):g}s" in reason
    finally:
        for client in stalled:
            client.drop()
        bystander.close()


def _timed_events(count):
    from bson import Timestamp

    from wsproxy.transport import codec

    sealer = sealer_for_tests()
    return [
        codec.Change(
            {
                "_id": {"_data": f"82{i:08X}"},
                "operationType": "insert",
                "clusterTime": Timestamp(1000 + i, 1),
                "ns": {"db": "shop", "coll": "orders"},
                "documentKey": {"_id": i},
                "fullDocument": {"i": i},
            },
            sealer,
        )
        for i in range(count)
    ]


def test_the_catch_up_seam_is_exact_however_replay_and_live_interleave():
    """The live feed (the broadcaster) and the replay (the catch-up
    thread) race over the same stream from random starting points: the
    client gets every event after its id once, in order."""
    import os
    import random
    import threading
    import types

    from wsproxy.stream.catchup import CatchUp

    events = _timed_events(120)
    rng = random.Random(3)
    for _ in range(150):
        resume_at = rng.randrange(0, 60)  # the client's last event
        live_from = rng.randrange(resume_at + 1, 110)
        client = _Recorder()
        member = CatchUp(client, 1000)
        hub = types.SimpleNamespace(
            published_through=events[live_from - 1].raw["clusterTime"]
            if live_from
            else None
        )
        member.published_through = lambda hub=hub: hub.published_through
        jitter = [rng.random() < 0.3 for _ in events]

        def live(member=member, hub=hub, live_from=live_from, jitter=jitter):
            for i in range(live_from, len(events)):
                hub.published_through = events[i].raw["clusterTime"]
                member.on_change(events[i])
                if jitter[i]:
                    os.sched_yield()

        def replay(member=member, resume_at=resume_at, jitter=jitter):
            for i in range(resume_at + 1, len(events)):
                if not member.deliver(events[i]):
                    return
                if jitter[-i]:
                    os.sched_yield()

        threads = [
            threading.Thread(target=live, name="test-live"),
            threading.Thread(target=replay, name="test-replay"),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert member.spliced
        frame_of = {e.frame: i for i, e in enumerate(events)}
        got = [frame_of[f] for f in client.frames]
        assert got == list(range(resume_at + 1, len(events))), (resume_at, live_from)
        assert not member._live


def test_replayed_events_the_live_feed_has_passed_are_not_remembered():
    from wsproxy.stream.catchup import CatchUp

    events = _timed_events(300)
    member = CatchUp(_Recorder(), 1000)
    # The live feed's place.
    member.published_through = lambda: events[250].raw["clusterTime"]
    for change in events[:260]:
        assert member.deliver(change)
    # Only those at or after the live feed's position could come again.
    assert member._delivered == {e.id for e in events[250:260]}
