"""No event lost or duplicated: client reconnects (to the same or another
proxy process), proxy restarts, and the database killed mid-burst."""

import signal
import threading
import urllib.parse

import pymongo
import pytest
from pymongo.errors import DuplicateKeyError, PyMongoError

from .helpers import (
    WSClient,
    metric,
    scaled,
    scrape,
    sealer_for_tests,
    server_env,
    wait_for,
)

BURST = 2000


def _env(uri, db, coll, **extra):
    return server_env(uri, db, coll, selection_ms=3000, **extra)


class Writer(threading.Thread):
    """Inserts documents numbered 0..count-1, in order, retrying through
    outages; an insert that went through before an error counts once."""

    def __init__(self, uri, db, coll, count):
        super().__init__(name="test-writer")
        self.client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=30000)
        self.coll = self.client[db][coll]
        self.count = count
        self.error = None
        self.written = 0
        self._progress = threading.Condition()

    def run(self):
        try:
            i = 0
            while i < self.count:
                try:
                    self.coll.insert_one({"_id": i, "seq": i})
                except DuplicateKeyError:
                    pass  # written before the connection dropped
                except PyMongoError:
                    continue
                i += 1
                with self._progress:
                    self.written = i
                    self._progress.notify_all()
        except Exception as exc:  # noqa: BLE001 - surfaced by join()
            self.error = exc
        finally:
            self.client.close()
            with self._progress:
                self.written = self.count
                self._progress.notify_all()

    def wait_written(self, count):
        with self._progress:
            assert self._progress.wait_for(
                lambda: self.written >= min(count, self.count), scaled(60)
            )

    def finish(self):
        self.join(scaled(120))
        assert not self.is_alive(), "the writer did not finish"
        assert self.error is None, self.error


def _connect(url, last_id):
    query = urllib.parse.urlencode({"resume_after": last_id}) if last_id else ""
    client = WSClient(url + ("?" + query if query else ""))
    hello = client.recv()
    assert hello["type"] == "hello"
    return client, hello["resume"]


def collect(urls, total, reconnects, writer, while_away=None):
    """Start ``writer`` once connected, then read its ``total`` numbered
    inserts, dropping the connection ``reconnects`` times and resuming each
    time, going round ``urls``; ``while_away()`` runs between a drop and
    the reconnect."""
    seen, modes, last_id = [], [], None
    every = max(total // (reconnects + 1), 1)
    client, _ = _connect(urls[0], None)
    # Only now: a client with no resume id gets what happens after it joined.
    writer.start()
    drops = 0
    while len(seen) < total:
        message = client.recv(timeout=30)
        if message["type"] == "reset":
            raise AssertionError(f"unexpected reset: {message}")
        if message["type"] != "change":
            continue
        seq = message["event"]["fullDocument"]["seq"]
        # Fail at the first gap or repeat, not after a 30 s wait.
        assert seq == len(seen), f"expected {len(seen)}, got {seq} ({modes})"
        seen.append(seq)
        last_id = message["id"]
        if drops < reconnects and len(seen) >= every * (drops + 1):
            client.drop()
            drops += 1
            if while_away:
                while_away()
            client, mode = _connect(urls[drops % len(urls)], last_id)
            modes.append(mode)
    client.close()
    return seen, modes


def _first_client(server):
    client = WSClient(server.ws_url())
    assert client.recv()["type"] == "hello"
    return client


@pytest.mark.heavy
@pytest.mark.parametrize("history", [1000, 20], ids=["history", "catch-up"])
def test_twenty_reconnects_during_a_burst_lose_and_repeat_nothing(
    mongo, namespace, gunicorn, history
):
    db, coll = namespace
    server = gunicorn(_env(mongo.uri, db, coll, WSPROXY_HISTORY_SIZE=history))
    writer = Writer(mongo.uri, db, coll, BURST)

    def away_for_50_writes():
        # Long enough away that a 20-event history no longer covers it.
        writer.wait_written(writer.written + 50)

    seen, modes = collect(
        [server.ws_url()],
        BURST,
        reconnects=20,
        writer=writer,
        while_away=away_for_50_writes,
    )
    writer.finish()
    assert seen == list(range(BURST))
    assert len(modes) == 20
    if history == 20:
        # A history that small cannot serve every resume: MongoDB did.
        assert "catch-up" in modes


@pytest.mark.heavy
def test_reconnecting_to_another_proxy_process_loses_and_repeats_nothing(
    mongo, namespace, gunicorn
):
    db, coll = namespace
    env = _env(mongo.uri, db, coll)
    first, second = gunicorn(env), gunicorn(env)
    writer = Writer(mongo.uri, db, coll, BURST)
    seen, modes = collect(
        [first.ws_url(), second.ws_url()], BURST, reconnects=20, writer=writer
    )
    writer.finish()
    assert seen == list(range(BURST))
    assert len(modes) == 20


def test_a_restarted_proxy_resumes_clients_from_mongodb(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    env = _env(mongo.uri, db, coll)
    server = gunicorn(env)
    client = _first_client(server)
    items = mongo_client[db][coll]
    items.insert_many([{"_id": i, "seq": i} for i in range(10)])
    last = client.changes(10)[-1]["id"]
    client.close()
    server.stop()
    items.insert_many([{"_id": i, "seq": i} for i in range(10, 20)])
    restarted = gunicorn(env)
    client, mode = _connect(restarted.ws_url(), last)
    assert mode == "catch-up"
    items.insert_many([{"_id": i, "seq": i} for i in range(20, 25)])
    got = [m["event"]["fullDocument"]["seq"] for m in client.changes(15)]
    assert got == list(range(10, 25))
    client.close()


def test_a_restarted_proxy_resumes_clients_from_the_history_it_reads_back(
    mongo, mongo_client, namespace, gunicorn
):
    """A worker that starts reads the last WSPROXY_HISTORY_PREFILL seconds
    back into its history: the clients of a worker that was restarted (or
    killed) resume from it, not each from MongoDB, and nothing is lost or
    repeated; a client that connects without resuming gets none of it."""
    db, coll = namespace
    env = _env(mongo.uri, db, coll, WSPROXY_HISTORY_PREFILL=60)
    server = gunicorn(env)
    client = _first_client(server)
    items = mongo_client[db][coll]
    items.insert_many([{"_id": i, "seq": i} for i in range(10)])
    last = client.changes(10)[-1]["id"]
    client.close()
    server.stop(signal.SIGKILL)
    items.insert_many([{"_id": i, "seq": i} for i in range(10, 20)])
    restarted = gunicorn(env)
    plain = _first_client(restarted)
    client, mode = _connect(restarted.ws_url(), last)
    assert mode == "history"
    items.insert_many([{"_id": i, "seq": i} for i in range(20, 25)])
    got = [m["event"]["fullDocument"]["seq"] for m in client.changes(15)]
    assert got == list(range(10, 25))
    # Live only: the five inserted after it connected, nothing read back.
    got = [m["event"]["fullDocument"]["seq"] for m in plain.changes(5)]
    assert got == list(range(20, 25))
    client.close()
    plain.close()
    assert "resume: catch-up" not in restarted.output()


def test_the_history_read_back_asks_the_client_of_any_watch_scope(mongo_client):
    """Where the read-back starts is the server's time, asked of the
    MongoClient of what is watched: the deployment, a database (whose
    unknown attributes are collections: its "database" is one) or a
    collection."""
    from wsproxy.stream.source import _client_of, watch_target

    for scope in ("", "somedb", "somedb.items"):
        target = watch_target(mongo_client, scope)
        assert _client_of(target) is mongo_client, scope


def test_a_token_the_server_cannot_resume_from_gets_a_reset_then_live(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(_env(mongo.uri, db, coll))
    # Sealed with the servers' key, but no such position.
    forged = sealer_for_tests().seal({"_data": "82" + "00" * 40})
    client, mode = _connect(server.ws_url(), forged)
    assert mode == "catch-up"
    reset = client.recv_type("reset", timeout=10)
    assert reset["lost"] is True and "resume" in reset["reason"]
    mongo_client[db][coll].insert_one({"_id": 1, "seq": 1})
    assert client.recv_type("change")["event"]["fullDocument"]["seq"] == 1
    client.close()


@pytest.mark.heavy
def test_killing_the_database_mid_burst_loses_and_repeats_nothing(own_mongo, gunicorn):
    db, coll = "burst", "items"
    server = gunicorn(_env(own_mongo.uri, db, coll))
    clients = [_first_client(server) for _ in range(3)]
    writer = Writer(own_mongo.uri, db, coll, BURST)
    writer.start()
    writer.wait_written(BURST // 3)  # well into the burst
    own_mongo.kill()
    own_mongo.start()
    writer.finish()
    for client in clients:
        got = []
        while len(got) < BURST:
            message = client.recv(timeout=30)
            assert message["type"] != "reset", message
            if message["type"] == "change":
                got.append(message["event"]["fullDocument"]["seq"])
        assert got == list(range(BURST))
        client.close()


def test_a_catch_up_on_a_quiet_collection_joins_the_live_feed(
    mongo, mongo_client, namespace, gunicorn
):
    """Nothing is written after the reconnect, so the replay and the live
    feed never meet at an event: the catch-up must still end (it holds one
    of the few catch-up slots), and the next write arrive exactly once."""
    db, coll = namespace
    env = _env(mongo.uri, db, coll)
    first = gunicorn(env)
    client = _first_client(first)
    items = mongo_client[db][coll]
    items.insert_many([{"_id": i, "seq": i} for i in range(5)])
    last = client.changes(5)[1]["id"]  # resume from seq 1
    client.close()
    other = gunicorn(env)  # its history does not have that id
    client, mode = _connect(other.ws_url(), last)
    assert mode == "catch-up"
    got = [m["event"]["fullDocument"]["seq"] for m in client.changes(3)]
    assert got == [2, 3, 4]
    wait_for(
        lambda: metric(scrape(other), "wsproxy_catchups_active") == 0,
        15,
        "the idle catch-up to hand over to the live feed",
    )
    items.insert_one({"_id": 5, "seq": 5})
    assert client.changes(1)[0]["event"]["fullDocument"]["seq"] == 5
    with pytest.raises(AssertionError, match="no message"):
        client.recv_type("change", timeout=1)  # and only once
    client.close()


def test_a_client_gone_during_catch_up_frees_its_slot(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    env = _env(mongo.uri, db, coll, WSPROXY_HISTORY_SIZE=1)
    server = gunicorn(env)
    client = _first_client(server)
    items = mongo_client[db][coll]
    items.insert_many([{"_id": i, "seq": i} for i in range(5)])
    first_id = client.changes(5)[0]["id"]
    client.close()
    again, mode = _connect(server.ws_url(), first_id)
    assert mode == "catch-up"
    again.drop()
    wait_for(
        lambda: metric(scrape(server), "wsproxy_catchups_active") == 0,
        15,
        "the catch-up of a vanished client to end",
    )
