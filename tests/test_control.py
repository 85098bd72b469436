"""What a client is told and may ask after the upgrade, and what a browser
can learn of a refused one: hello's watcher state, the JSON admission
decision, and subscribe messages. Unit tests first (fakes, no sockets),
then the real gunicorn."""

import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pymongo
import pytest
from bson import ObjectId
from websockets.exceptions import ConnectionClosed

from wsproxy.errors import ClientError
from wsproxy.fanout.subscription import EVERYTHING, Subscription
from wsproxy.http.control import Control, subscription_args
from wsproxy.transport import codec

from .helpers import WSClient, http_get, refused, scaled, server_env, wait_for
from .test_connection import make_client

# ---------------------------------------------------------------- units


def test_subscribe_fields_read_as_the_url_query_would():
    args = subscription_args(
        {
            "type": "subscribe",
            "ns": "a.b,a.c",
            "ops": ["insert", "delete"],
            "filter": {"fullDocument._id": {"$oid": "0" * 24}},
        }
    )
    assert args.getlist("ns") == ["a.b,a.c"]
    assert args.getlist("ops") == ["insert", "delete"]
    assert json.loads(args["filter"]) == {"fullDocument._id": {"$oid": "0" * 24}}
    assert list(subscription_args({"type": "subscribe", "ns": None})) == []
    # An empty list is nothing, which parse refuses: never everything.
    assert subscription_args({"type": "subscribe", "ops": []}).getlist("ops") == [""]
    for bad, why in [
        ({"resume_after": "x"}, "unknown field"),
        ({"access_token": "x"}, "unknown field"),
        ({"ns": 3}, "a string or a list"),
        ({"ops": ["insert", 1]}, "a string or a list"),
        ({"filter": 7}, "a JSON object"),
    ]:
        with pytest.raises(ClientError, match=why):
            subscription_args({"type": "subscribe", **bad})


class FakeConnection:
    """What Control uses of a ClientConnection."""

    id = 0

    def __init__(self):
        self.sent = []  # parsed replies, in order
        self.subscription = EVERYTHING
        self.closed = None
        self.woken = 0

    @property
    def closing(self):
        return self.closed is not None

    def send_text(self, text):
        self.sent.append(json.loads(text))

    def offer(self, data):
        self.sent.append(_unframe(data))
        return True

    def replace_subscription(self, subscription, reply):
        self.subscription = subscription
        self.sent.append(_unframe(reply))
        return True

    def request_close(self, code, reason):
        self.closed = (code, reason)

    def wake(self):
        self.woken += 1


def _unframe(data):
    """The JSON of one unmasked server text frame."""
    data = bytes(data)
    length = data[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return json.loads(data[start:])


class FakeHub:
    """Barriers run when the test says (the broadcaster's next pass)."""

    def __init__(self):
        self.barriers = []

    def submit(self, item, stopping):
        self.barriers.append(item)
        return True

    def run_barriers(self):
        while self.barriers:
            self.barriers.pop(0).callback()

    def reroute(self, member, subscription=None):
        pass  # every change reaches every fake client


def _parse(args):
    if "ns" in args and args["ns"] == "forbidden":
        raise ClientError("ns: forbidden is not granted", status=403)
    return Subscription(namespaces=args.getlist("ns") or None)


def _control(watcher="connected"):
    hub = FakeHub()
    state = {"watcher": watcher}
    control = Control(
        _parse, hub=hub, stopping=threading.Event(), watcher=lambda: state["watcher"]
    )
    return control, hub, state


def test_ping_and_subscribe_are_answered_in_order():
    control, _, _ = _control()
    conn = FakeConnection()
    control.on_message(conn, '{"type": "ping"}')
    control.on_message(conn, '{"type": "subscribe", "ns": "shop.orders"}')
    control.on_message(conn, '{"type": "subscribe", "ns": "forbidden"}')
    assert [m["type"] for m in conn.sent] == ["pong", "subscribed", "error"]
    assert conn.sent[2]["reason"] == "ns: forbidden is not granted"
    # The refused one left the previous subscription in place.
    assert conn.subscription.namespaces == {"shop.orders"}
    assert conn.closed is None
    control.on_message(conn, '{"type": "unsubscribe"}')
    assert conn.closed[0] == 1008 and "ping and subscribe" in conn.closed[1]


def test_a_message_too_deep_to_read_closes_with_a_reason():
    # Whatever depth json.loads (or json.dumps of the filter) gives up at
    # on this thread's stack: a 1008, never an exception (1011).
    for depth in range(700, 1100):
        control, _, _ = _control()
        conn = FakeConnection()
        control.on_message(
            conn,
            '{"type": "subscribe", "filter": '
            + '{"a": ' * depth
            + "1"
            + "}" * depth
            + "}",
        )
        assert conn.closed in (None, (1008, "message is nested too deep"))
        control.on_message(conn, "[" * depth + "]" * depth)
        assert conn.closed[0] == 1008


class FakeCatchUp:
    spliced = False


def test_during_a_catch_up_subscribe_waits_for_the_hand_over():
    control, hub, _ = _control()
    conn = FakeConnection()
    control.catchup = catchup = FakeCatchUp()
    control.on_message(conn, '{"type": "ping"}')  # nothing waits: now
    control.on_message(conn, '{"type": "subscribe", "ns": "a.b"}')
    control.on_message(conn, '{"type": "ping"}')  # after the subscribe
    control.on_message(conn, '{"type": "subscribe", "ns": "forbidden"}')
    assert [m["type"] for m in conn.sent] == ["pong"]
    # Not spliced: it keeps looking while something waits.
    assert control.on_wake(conn) is not None and not hub.barriers
    catchup.spliced = True
    assert control.on_wake(conn) is not None
    assert len(hub.barriers) == 1  # one barrier, however many wakes
    control.on_wake(conn)
    assert len(hub.barriers) == 1 and conn.sent == [{"type": "pong"}]
    hub.run_barriers()  # the broadcaster passed it
    assert conn.woken == 1
    assert control.on_wake(conn) is None
    assert [m["type"] for m in conn.sent] == ["pong", "subscribed", "pong", "error"]
    assert conn.subscription.namespaces == {"a.b"}
    # From now on, straight away.
    control.on_message(conn, '{"type": "subscribe", "ns": "c.d"}')
    assert conn.sent[-1]["type"] == "subscribed"
    assert conn.subscription.namespaces == {"c.d"}


def test_too_many_messages_while_catching_up_close_the_connection():
    control, _, _ = _control()
    conn = FakeConnection()
    control.catchup = FakeCatchUp()
    for _ in range(40):
        control.on_message(conn, '{"type": "subscribe"}')
        if conn.closing:
            break
    assert conn.closed == (1008, "too many messages while resuming")


@pytest.mark.parametrize(
    "then, told", [("connected", ["connected"]), ("reconnecting", [])]
)
def test_a_client_told_starting_hears_when_the_watcher_connects(then, told):
    control, hub, state = _control(watcher="starting")
    conn = FakeConnection()
    assert control.told("starting") == "starting"
    assert control.on_wake(conn) is not None  # polls while starting
    assert not hub.barriers
    state["watcher"] = then
    assert control.on_wake(conn) is None
    hub.run_barriers()
    # "reconnecting" was announced by the watcher itself (starting ->
    # reconnecting is a loss); only starting -> connected is silent.
    assert [m["watcher"] for m in conn.sent if m["type"] == "status"] == told
    assert control.on_wake(conn) is None and not hub.barriers


def test_a_client_told_connected_polls_nothing():
    control, hub, _ = _control()
    assert control.told("connected") == "connected"
    assert control.on_wake(FakeConnection()) is None and not hub.barriers


class _Swapping:
    """A subscription whose filter runs while the handler thread replaces
    it: the race between the broadcaster and a subscribe, made certain."""

    def __init__(self, client, replacement, reply):
        self.client, self.replacement, self.reply = client, replacement, reply

    tracks = False
    snapshot = None
    hide = ()
    key = None

    def decide(self, change):
        self.client.replace_subscription(self.replacement, self.reply)
        return codec.Shape.CHANGE

    def frame(self, change, deflate_bits=None, shape=None):
        return codec.frame('{"type": "change", "by": "old"}')


class _Only:
    def __init__(self, wanted):
        self.wanted = wanted

    tracks = False
    snapshot = None
    hide = ()
    key = None

    def decide(self, change):
        return codec.Shape.CHANGE if self.wanted else None

    def frame(self, change, deflate_bits=None, shape=None):
        return codec.frame('{"type": "change", "by": "new"}')


@pytest.mark.parametrize("new_wants", [True, False])
def test_a_change_judged_by_a_replaced_subscription_is_judged_again(new_wants):
    client, peer = make_client()
    reply = codec.frame('{"type": "subscribed"}')
    client.subscription = _Swapping(client, _Only(new_wants), reply)
    change = object()
    assert client.on_change(change) is new_wants
    client.offer(codec.frame('{"type": "marker"}'))
    thread = threading.Thread(target=client.run, args=(lambda c, m: None,))
    thread.start()
    try:
        expected = [{"type": "subscribed"}]
        if new_wants:
            expected.append({"type": "change", "by": "new"})
        expected.append({"type": "marker"})
        peer.read_until(lambda: len(peer.messages) >= len(expected), 5, "the frames")
        assert peer.messages == expected
    finally:
        client.request_close(1000, "done")
        thread.join(scaled(5))


# ---------------------------------------------------------- the real server


def _decision(server, query="", headers=None):
    status, body = http_get(
        server.ws_url(query).replace("ws://", "http://"),
        headers={"Accept": "application/json", **(headers or {})},
    )
    return status, json.loads(body)


def test_hello_says_whether_the_database_is_there(own_mongo, gunicorn):
    server = gunicorn(server_env(own_mongo.uri, "shop", "orders"))
    client = WSClient(server.ws_url())
    assert client.recv()["watcher"] == "connected"
    own_mongo.kill()
    assert client.recv_type("status", 15)["watcher"] == "reconnecting"
    # A client that arrives now is told at once, not only on a change.
    late = WSClient(server.ws_url())
    hello = late.recv()
    assert hello["type"] == "hello" and hello["watcher"] == "reconnecting"
    own_mongo.start()
    for c in (client, late):
        status = c.recv_type("status", 30)
        assert status == {"type": "status", "watcher": "connected", "detail": ""}
        c.close()


def test_a_client_of_a_starting_watcher_hears_when_it_connects(own_mongo, gunicorn):
    own_mongo.kill()
    server = gunicorn(
        server_env(own_mongo.uri, "shop", "orders", selection_ms=60000), ready=False
    )
    client = WSClient(server.ws_url())
    assert client.recv()["watcher"] == "starting"
    own_mongo.start()
    # starting -> connected is not announced by the watcher: the
    # connection itself tells its client.
    assert client.recv_type("status", 30)["watcher"] == "connected"
    server.wait_ready()
    client.close()


def test_the_admission_decision_as_json(mongo, mongo_client, namespace, gunicorn):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll, WSPROXY_MAX_CLIENTS=1))
    assert _decision(server) == (200, {"ok": True})
    assert _decision(server, f"ns={db}.{coll}&ops=insert") == (200, {"ok": True})
    assert _decision(server, 'filter={"a":{"$regex":"x"}}')[0] == 400
    status, body = _decision(server, 'filter={"a":{"$regex":"x"}}')
    assert body["status"] == 400 and "$regex" in body["error"]
    assert _decision(server, "ns=elsewhere") == (
        400,
        {
            "error": f"ns: elsewhere is outside the watched scope {db}.{coll}",
            "status": 400,
        },
    )
    assert _decision(server, "resume_after=forged") == (
        400,
        {"error": "resume_after: not a resume token", "status": 400},
    )
    assert _decision(server, "bogus=1")[1]["error"] == "unknown parameter 'bogus'"
    assert _decision(server, headers={"Origin": "http://evil.example"}) == (
        403,
        {"error": "origin http://evil.example is not allowed", "status": 403},
    )
    assert _decision(server, headers={"Host": "rebound.example"})[0] == 400
    # A real id resumes.
    reader = WSClient(server.ws_url())
    reader.recv()
    mongo_client[db][coll].insert_one({"n": 1})
    change_id = reader.recv_type("change")["id"]
    # The worker is full (WSPROXY_MAX_CLIENTS=1): the decision says so,
    # and checking took no slot.
    status, body = _decision(server, f"resume_after={change_id}")
    assert (status, body) == (
        503,
        {"error": "this worker is full; retry", "status": 503},
    )
    reader.close()
    wait_for(lambda: server.readyz()[1]["clients"] == 0, 5, "the client gone")
    assert _decision(server, f"resume_after={change_id}") == (200, {"ok": True})
    for _ in range(5):
        _decision(server)
    assert server.readyz()[1]["clients"] == 0
    resumed = WSClient(server.ws_url(f"resume_after={change_id}"))
    assert resumed.recv()["resume"] == "history"
    resumed.close()
    # Without Accept: application/json it is still 426 (*/* is not enough).
    assert http_get(server.url + "/ws", headers={"Accept": "*/*"})[0] == 426
    assert http_get(server.url + "/ws")[0] == 426


def test_the_decision_costs_one_token_of_the_connect_budget(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(
        server_env(
            mongo.uri, db, coll, WSPROXY_CONNECT_RATE="0.01", WSPROXY_CONNECT_BURST="4"
        )
    )
    reader = WSClient(server.ws_url(), source_address=("127.0.0.2", 0))
    reader.recv()
    mongo_client[db][coll].insert_many([{"n": i} for i in range(200)])
    first = reader.changes(200)[0]["id"]  # all 200 are in the history now
    # A resume from history through this filter would cost 1 + 200 events
    # x 3,000 bytes / 100,000 = 7 tokens (the whole burst); asking
    # whether it would be admitted costs one, as a plain connection does.
    costly = "filter=" + urllib.parse.quote(
        json.dumps({"n": {"$ne": "x" * 3000}}, separators=(",", ":"))
    )
    for _ in range(3):
        assert _decision(server, f"resume_after={first}&{costly}") == (
            200,
            {"ok": True},
        )
    assert _decision(server)[0] == 200
    status, body = _decision(server)
    assert status == 429 and "too many connections" in body["error"]
    assert refused(server.ws_url())[0] == 429  # one budget for both
    reader.close()


def test_the_decision_for_the_authorizer_and_other_origins(mongo, namespace, gunicorn):
    db, _ = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "HOSTAPP_DB": db,
            "WSPROXY_ALLOWED_ORIGINS": "http://app.example",
        },
        app="tests.hostapp:app",
    )
    assert _decision(server) == (
        401,
        {"error": "authentication required", "status": 401},
    )
    bearer = {"Authorization": "Bearer token-shop"}
    assert _decision(server, headers={"Authorization": "Bearer nope"}) == (
        403,
        {"error": "unknown token", "status": 403},
    )
    assert _decision(server, headers=bearer) == (200, {"ok": True})
    assert _decision(server, f"ns={db}.other", headers=bearer) == (
        403,
        {"error": f"ns: {db}.other is not granted", "status": 403},
    )
    assert _decision(server, headers={"Authorization": "Bearer token-nothing"}) == (
        403,
        {"error": "no namespaces are granted", "status": 403},
    )
    # A page of the allowed origin may read the answer (and send its token
    # after a preflight); another origin may not.
    url = server.url + "/ws"
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "Origin": "http://app.example"}
    )
    try:
        urllib.request.urlopen(request, timeout=scaled(5))
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
        assert exc.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert exc.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in exc.headers["Vary"]
    else:
        raise AssertionError("not refused")
    preflight = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    with urllib.request.urlopen(preflight, timeout=scaled(5)) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert resp.headers["Access-Control-Allow-Headers"] == "Authorization"
    foreign = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "GET",
        },
    )
    with urllib.request.urlopen(foreign, timeout=scaled(5)) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    status, body = _decision(server, headers={"Origin": "http://evil.example"})
    assert status == 403


def _numbered(client, count, timeout=10.0):
    """The next ``count`` messages that are changes or the subscribe
    reply, as (kind, n) pairs."""
    seen = []
    while len(seen) < count:
        message = client.recv(timeout)
        if message["type"] == "change":
            event = message["event"]
            seen.append((event["operationType"], event["documentKey"]["_id"]))
        elif message["type"] in ("subscribed", "error"):
            seen.append((message["type"], message.get("reason")))
    return seen


@pytest.mark.heavy
@pytest.mark.parametrize("resume", ["none", "catch-up"])
def test_subscribe_switches_the_feed_at_one_point_without_a_gap(
    mongo, mongo_client, namespace, gunicorn, resume
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll, WSPROXY_HISTORY_SIZE=2))
    items = mongo_client[db][coll]
    query = "ops=insert"
    if resume == "catch-up":
        # An id older than the worker's history: replayed from MongoDB.
        first = WSClient(server.ws_url())
        first.recv()
        items.insert_many([{"_id": -i} for i in range(1, 40)])
        query += "&resume_after=" + first.recv_type("change")["id"]
        first.close()
    client = WSClient(server.ws_url(query))
    assert client.recv()["resume"] == resume
    stop = threading.Event()

    def write():
        n = 0
        while not stop.is_set() and n < 2000:
            items.insert_one({"_id": n})
            items.delete_one({"_id": n})
            n += 1

    writer = threading.Thread(target=write, name="test-writer")
    writer.start()
    try:
        seen = _numbered(client, 10)
        client.ws.send(json.dumps({"type": "subscribe", "ops": ["delete"]}))
        while ("subscribed", None) not in seen:
            seen += _numbered(client, 1)
        seen += _numbered(client, 10)
    finally:
        stop.set()
        writer.join()
    split = seen.index(("subscribed", None))
    before, after = seen[:split], seen[split + 1 :]
    if resume == "catch-up":
        replayed = [n for op, n in before if n < 0]
        assert replayed == list(range(-2, -40, -1))  # after the first
        before = [(op, n) for op, n in before if n >= 0]
    assert {op for op, _ in before} <= {"insert"}
    assert {op for op, _ in after} == {"delete"}
    inserts = [n for _, n in before]
    deletes = [n for _, n in after]
    assert inserts == list(range(len(inserts)))
    assert deletes == list(range(deletes[0], deletes[0] + len(deletes)))
    # One split point in the stream: insert n, delete n, insert n+1...
    last_insert = inserts[-1] if inserts else -1
    assert deletes[0] in (last_insert, last_insert + 1)
    client.close()


def test_a_refused_subscribe_keeps_the_connection_and_its_subscription(
    mongo, namespace, gunicorn
):
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
    client = WSClient(server.ws_url(), subprotocols=["bearer", "token-shop"])
    client.recv()
    writer = pymongo.MongoClient(mongo.uri)
    for bad, reason in [
        ({"ns": f"{db}.secrets"}, f"ns: {db}.secrets is not granted"),
        ({"filter": {"a": {"$regex": "x"}}}, "$regex"),
        ({"filter": "{not json"}, "not valid JSON"),
        ({"ops": ["nope"]}, "unknown operation type 'nope'"),
        ({"resume_after": "x"}, "unknown field 'resume_after'"),
    ]:
        client.ws.send(json.dumps({"type": "subscribe", **bad}))
        reply = client.recv_type("error")
        assert reason in reply["reason"], reply
    # The grant (db.orders only) still holds, and so does the connection.
    doc = ObjectId()
    writer[db].secrets.insert_one({"_id": doc})
    writer[db].orders.insert_one({"_id": doc})
    change = client.recv_type("change")
    assert change["event"]["ns"] == {"db": db, "coll": "orders"}
    # Narrowing within the grant works.
    client.ws.send(json.dumps({"type": "subscribe", "ops": "delete"}))
    assert client.recv_type("subscribed")
    writer[db].orders.insert_one({"_id": 1})
    writer[db].orders.delete_one({"_id": 1})
    assert client.recv_type("change")["event"]["operationType"] == "delete"
    writer.close()
    client.close()


def test_subscribes_count_against_the_frame_budget(mongo, namespace, gunicorn):
    db, coll = namespace
    server = gunicorn(
        server_env(
            mongo.uri,
            db,
            coll,
            WSPROXY_CLIENT_MESSAGE_RATE=1,
            WSPROXY_CLIENT_MESSAGE_BURST=5,
        )
    )
    client = WSClient(server.ws_url())
    client.recv()
    try:
        for _ in range(10):
            client.ws.send(json.dumps({"type": "subscribe", "ops": "insert"}))
    except ConnectionClosed:
        pass  # the close (after the burst of 5) may arrive before the tenth
    code, reason = client.wait_closed()
    assert code == 1008 and "too many frames" in reason
