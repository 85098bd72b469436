"""The Python client (wsproxy.client) against the real gunicorn: exactly
once and in order across cut connections and a server restart, refusals
with the server's reasons, subscribe, reset."""

import inspect
import re
import threading

import pytest
from bson import ObjectId

from wsproxy import client as wsclient
from wsproxy import protocol
from wsproxy.client import (
    CLOSE_POLICY,
    AuthenticationRequired,
    Change,
    Refused,
    Reset,
    WSProxyClient,
)
from wsproxy.protocol import CloseCode

from .helpers import TcpProxy, scaled, sealer_for_tests, server_env, wait_for

BURST = 2000
CUTS = 10
WINDOW = 100  # the writer runs at most this far ahead of the reader


class PacedWriter(threading.Thread):
    """Inserts documents numbered 0..count-1, never more than WINDOW ahead
    of what the reader has consumed, so that every disconnect happens
    with changes in flight (not after the burst is over)."""

    def __init__(self, items, count):
        super().__init__(name="test-writer")
        self.items = items
        self.count = count
        self.written = self.consumed = 0
        self.error = None
        self.changed = threading.Condition()

    def run(self):
        try:
            for n in range(self.count):
                with self.changed:
                    while n - self.consumed >= WINDOW:
                        self.changed.wait(scaled(30))
                self.items.insert_one({"_id": n, "seq": n})
                with self.changed:
                    self.written = n + 1
                    self.changed.notify_all()
        except Exception as exc:  # noqa: BLE001 - surfaced by finish()
            self.error = exc
            with self.changed:
                self.written = self.count
                self.changed.notify_all()

    def consume(self, n):
        with self.changed:
            self.consumed = n
            self.changed.notify_all()

    def wait_written(self, n):
        with self.changed:
            self.changed.wait_for(lambda: self.written >= n, scaled(30))

    def finish(self):
        self.join(scaled(60))
        assert not self.is_alive() and self.error is None, self.error


def _ws(url):
    return url.replace("http://", "ws://") + "/ws"


def _connected(feed, timeout=10):
    """Until the client has its hello (it connects on first use)."""
    wait_for(
        lambda: feed.receive(timeout=scaled(0.05)) is None and feed.hello,
        timeout,
        "the client's hello",
    )


def test_every_close_code_has_a_policy():
    assert {int(c) for c in CloseCode} <= set(CLOSE_POLICY)
    assert {int(c) for c in protocol.LocalCloseCode} <= set(CLOSE_POLICY)
    assert set(CLOSE_POLICY.values()) <= set(protocol.ClientAction)


def test_the_clients_policy_and_backoff_are_the_wire_contracts():
    # Taken from wsproxy.protocol, not copied.
    assert wsclient.CLOSE_POLICY is protocol.CLOSE_POLICY
    assert wsclient.REFUSAL_ACTION is protocol.REFUSAL_ACTION
    for name in ("MAX_IMMEDIATE", "BUSY_FLOOR", "STABLE_AFTER"):
        assert getattr(wsclient, name) is getattr(protocol, name)
    parameters = inspect.signature(WSProxyClient).parameters
    assert parameters["backoff_initial"].default == protocol.BACKOFF_INITIAL
    assert parameters["backoff_max"].default == protocol.BACKOFF_MAX
    # Its heartbeat is the bytes it always sent.
    assert wsclient._PING == '{"type": "ping"}'


@pytest.mark.heavy
def test_two_thousand_inserts_across_ten_cuts_and_a_restart_arrive_once_in_order(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    env = server_env(mongo.uri, db, coll, selection_ms=3000)
    server = gunicorn(env)
    proxy = TcpProxy(server.port)
    writer = PacedWriter(mongo_client[db][coll], BURST)
    feed = WSProxyClient(_ws(proxy.url), backoff_initial=0.05, backoff_max=0.5)
    seen, items, releases = [], [], []
    every = BURST // (CUTS + 5)
    cuts = restarts = 0
    next_at, cut_on = every, 0  # cut again after `every` more, on a new connection
    try:
        _connected(feed)
        writer.start()

        def release_later(target):
            # The network stays away while more are written; meanwhile the
            # client's attempts fail (the proxy closes them at once).
            writer.wait_written(target)
            proxy.held = False

        for item in feed:
            items.append(item)
            if not isinstance(item, Change):
                continue
            seq = item.event["fullDocument"]["seq"]
            assert seq == len(seen), f"expected {len(seen)}, got {seq}"
            seen.append(seq)
            writer.consume(len(seen))
            if len(seen) == BURST:
                break
            # The client reads what it had buffered before noticing a cut:
            # the next cut waits for a new connection.
            if len(seen) < next_at or feed.stats["connections"] == cut_on:
                continue
            next_at, cut_on = len(seen) + every, feed.stats["connections"]
            if cuts == CUTS // 2 and not restarts:
                # The server restarts: a new one behind the proxy, then the
                # old one stops (SIGTERM: 1001 to its clients).
                second = gunicorn(env)
                proxy.target_port = second.port
                server.stop()
                restarts += 1
            elif cuts < CUTS:
                proxy.held = cuts % 2 == 0
                proxy.cut()
                if proxy.held:
                    release = threading.Thread(
                        target=release_later,
                        name="test-release",
                        args=(min(len(seen) + WINDOW, BURST),),
                    )
                    release.start()
                    releases.append(release)
                cuts += 1
        writer.finish()
    finally:
        feed.close()
        for release in releases:
            release.join(scaled(30))
        proxy.close()
    assert seen == list(range(BURST))
    assert not [i for i in items if not isinstance(i, Change)]  # no reset
    assert (cuts, restarts) == (CUTS, 1)
    # Every cut and the restart made it reconnect, resuming each time.
    assert feed.stats["connections"] >= CUTS + 2
    assert feed.stats["attempts"] > feed.stats["connections"]  # some failed
    assert feed.hello["resume"] in ("history", "catch-up")


@pytest.fixture
def host(mongo, namespace, gunicorn):
    db, _ = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "HOSTAPP_DB": db,
        },
        app="tests.hostapp:app",
    )
    return server, db


def test_refusals_come_with_the_servers_reason(host):
    server, db = host
    url = _ws(server.url)
    cases = [
        ({}, AuthenticationRequired, 401, "authentication required"),
        ({"token": "nope"}, Refused, 403, "unknown token"),
        (
            {"token": "token-admin", "filter": {"a": {"$regex": "x"}}},
            Refused,
            400,
            "unsupported operator $regex",
        ),
        (
            {"token": "token-shop", "ns": [f"{db}.secrets"]},
            Refused,
            403,
            f"ns: {db}.secrets is not granted",
        ),
        (
            {"token": "token-admin", "ops": "nope"},
            Refused,
            400,
            "unknown operation type 'nope'",
        ),
    ]
    for kw, error, status, reason in cases:
        feed = WSProxyClient(url, **kw)
        with pytest.raises(error) as info:
            feed.receive(timeout=scaled(10))
        assert info.value.status == status and reason in info.value.reason
        assert feed.stats["attempts"] == 1  # no retry
        feed.close()


def test_a_token_subscribe_and_the_grant(host, mongo_client):
    server, db = host
    with WSProxyClient(_ws(server.url), token=lambda: "token-shop") as feed:
        _connected(feed)
        assert feed.watcher == "connected"
        mongo_client[db].secrets.insert_one({"_id": 0})
        mongo_client[db].orders.insert_one({"_id": 1, "card": "4242"})
        change = feed.receive(timeout=scaled(5))
        assert change.event["ns"] == {"db": db, "coll": "orders"}
        assert change.event["fullDocument"] == {"_id": 1}  # card hidden
        # Refused: the old subscription stays, and so does the connection.
        with pytest.raises(Refused, match="not granted"):
            feed.subscribe(ns=f"{db}.secrets")
        feed.subscribe(ops=["delete"])
        assert feed.subscription["ops"] == ["delete"]
        orders = mongo_client[db].orders
        orders.insert_one({"_id": 2})
        orders.delete_one({"_id": 2})
        change = feed.receive(timeout=scaled(5))
        assert change.event["operationType"] == "delete"
        assert feed.stats["connections"] == 1
        assert "ops=delete" in feed.url


def test_a_message_the_server_closes_for_stops_the_client(host):
    server, _ = host
    with WSProxyClient(_ws(server.url), token="token-admin") as feed:
        _connected(feed)
        # Larger than WSPROXY_MAX_MESSAGE_SIZE: the server closes with 1009,
        # which retrying cannot fix.
        with pytest.raises(Refused) as info:
            feed.subscribe(filter={"a": "x" * 5000})
        assert info.value.code == 1009 and "too big" in info.value.reason
        assert feed.stats["connections"] == 1


def test_a_lost_position_is_a_reset_item_then_the_live_feed(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    forged = sealer_for_tests().seal({"_data": "82" + "00" * 40})
    with WSProxyClient(_ws(server.url), resume_after=forged, ejson=False) as feed:
        reset = feed.receive(timeout=scaled(10))
        assert isinstance(reset, Reset) and reset.lost
        mongo_client[db][coll].insert_one({"_id": 1, "seq": 1})
        change = feed.receive(timeout=scaled(5))
        assert change.event["fullDocument"] == {"_id": 1, "seq": 1}
        assert feed.last_id == change.id


def test_a_hello_sent_with_the_handshake_reply_is_not_held_back():
    """A server that writes its first message in the same segment as the
    101 (wsproxy's handler often does): the client must see it at once,
    not when more bytes arrive."""
    import json
    import socket

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    listener = socket.create_server(("127.0.0.1", 0))
    hello = json.dumps(
        {
            "type": "hello",
            "resume": "none",
            "worker": 1,
            "watch": "",
            "watcher": "connected",
        }
    )
    done = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            ws = WSConnection(ConnectionType.SERVER)
            while True:
                ws.receive_data(conn.recv(4096))
                if any(isinstance(e, Request) for e in ws.events()):
                    break
            conn.sendall(ws.send(AcceptConnection()) + ws.send(TextMessage(hello)))
            done.wait(scaled(10))  # then nothing more: no later bytes

    server = threading.Thread(target=serve, name="test-server")
    server.start()
    port = listener.getsockname()[1]
    try:
        with WSProxyClient(f"ws://127.0.0.1:{port}/ws") as feed:
            _connected(feed, timeout=5)
            assert feed.hello["resume"] == "none"
    finally:
        done.set()
        server.join(scaled(10))
        listener.close()


# Field values any document writer can store that look like Extended JSON
# but are not: json_util raised on the first four and skipped the event on
# the others, and a resuming client met the same event again.
NOT_EXTENDED_JSON = [
    {"$oid": "zz"},
    {"$date": {"$numberLong": "999999999999999999"}},
    {"$numberDecimal": "1e99999999"},
    {"$code": "x", "$scope": 5},
    {"$date": "not-a-date"},
    {"$numberLong": "abc"},
    {"$timestamp": {"t": -1, "i": -1}},
    {"$uuid": "nope"},
]


def test_document_content_never_stops_or_skips_the_feed(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    items = mongo_client[db][coll]
    count = len(NOT_EXTENDED_JSON)

    def read_all(feed, n):
        got = [feed.receive(timeout=scaled(5)) for _ in range(n)]
        assert all(isinstance(item, Change) for item in got), got
        return got

    with WSProxyClient(_ws(server.url)) as feed:
        _connected(feed)
        for n, value in enumerate(NOT_EXTENDED_JSON):
            items.insert_one({"_id": n, "v": value, "at": ObjectId("0" * 24)})
        items.insert_one({"_id": count, "v": "after"})
        got = read_all(feed, count + 1)
        docs = [change.event["fullDocument"] for change in got]
        assert [doc["_id"] for doc in docs] == list(range(count + 1))
        assert [doc["v"] for doc in docs[:count]] == NOT_EXTENDED_JSON
        # What does decode still does, beside them.
        assert {type(doc["at"]) for doc in docs[:count]} == {ObjectId}
        assert feed.stats["resets"] == 0
    # A client resuming before them gets them all again.
    with WSProxyClient(_ws(server.url), resume_after=got[0].id) as again:
        assert [c.id for c in read_all(again, count)] == [c.id for c in got[1:]]


def test_messages_that_come_with_the_handshake_and_a_close_are_kept():
    """A server that accepts, sends and closes at once: its messages and
    its close arrive in the same read as the handshake's response (a busy
    client reads late). The client returns the messages, then reconnects
    after the close, as for any connection closed after a while."""
    import base64
    import hashlib
    import json
    import socket

    def frame(opcode, payload):  # unmasked, as a server sends them
        assert len(payload) < 1 << 16
        if len(payload) < 126:
            return bytes([0x80 | opcode, len(payload)]) + payload
        return bytes([0x80 | opcode, 126]) + len(payload).to_bytes(2, "big") + payload

    hello = {
        "type": "hello",
        "worker": 1,
        "watch": "shop.orders",
        "resume": "none",
        "watcher": "connected",
        "deletes": "tracked",
    }

    def change(n):
        return {
            "type": "change",
            "id": f"c{n}",
            "event": {
                "operationType": "insert",
                "ns": {"db": "shop", "coll": "orders"},
                "documentKey": {"_id": n},
                "fullDocument": {"_id": n},
            },
        }

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    connections = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.I)
            if key is None:  # the client asking why (it should not)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                conn.close()
                continue
            connections.append(conn)
            key = key[1]
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            # All in one write: the response, two messages, a 1001 close.
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept
                + b"\r\n\r\n"
                + frame(1, json.dumps(hello).encode())
                + frame(1, json.dumps(change(len(connections))).encode())
                + frame(8, (1001).to_bytes(2, "big") + b"restart")
            )

    server = threading.Thread(target=serve, name="test-closing-server")
    server.start()
    client = WSProxyClient(
        f"ws://127.0.0.1:{listener.getsockname()[1]}/ws",
        ns="shop.orders",
        ping_interval=0,
        backoff_initial=0.01,
    )
    try:
        item = client.receive(timeout=scaled(10))
        assert isinstance(item, Change) and item.id == "c1", item
        assert client.stats["connections"] == 1
        # Then the close: the client reconnects (and gets the same again).
        again = client.receive(timeout=scaled(10))
        assert client.last_close == (1001, "restart")
        assert client.stats["connections"] == 2 and again.id == "c2"
    finally:
        client.close()
        stop.set()
        server.join(scaled(5))
        listener.close()
        for conn in connections:
            conn.close()
