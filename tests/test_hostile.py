"""Malformed and hostile input: each gets its exact status or close code and
reason, the worker survives, and a well-behaved client connected the whole
time keeps receiving every event."""

import json
import socket
import urllib.parse

import pymongo
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .helpers import (
    Gunicorn,
    WSClient,
    http_get,
    raw_upgrade,
    scaled,
    sealer_for_tests,
    wait_for,
)

DB, COLL = "hostile", "items"


@pytest.fixture(scope="module")
def server(mongo):
    client = pymongo.MongoClient(mongo.uri)
    client.drop_database(DB)
    client.close()
    server = Gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": DB,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_CLIENT_MESSAGE_RATE": "5",
            "WSPROXY_MAX_FILTER_BYTES": "2048",
            "WSPROXY_CLIENT_MESSAGE_BURST": "10",
        }
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def writes(mongo):
    client = pymongo.MongoClient(mongo.uri)
    yield client[DB][COLL]
    client.close()


@pytest.fixture(scope="module")
def bystander(server):
    """Connected through the whole table; checked when the module is done,
    whichever tests ran, in whatever order: never disconnected."""
    client = WSClient(server.ws_url())
    assert client.recv()["type"] == "hello"
    yield client
    try:
        client.ws.ping().wait(scaled(5))
    except ConnectionClosed:
        pytest.fail("the well-behaved client was disconnected")
    client.close()


def _q(**params):
    return urllib.parse.urlencode(params)


DEEP = {"a": 1}
for _ in range(12):
    DEEP = {"$and": [DEEP]}

# (query string, status, reason fragment): refused before the upgrade.
BEFORE_UPGRADE = [
    (_q(filter="{not json"), 400, "filter is not valid JSON"),
    (_q(filter="[1, 2]"), 400, "filter must be a JSON object"),
    (_q(filter='"text"'), 400, "filter must be a JSON object"),
    (_q(filter="null"), 400, "filter must be a JSON object"),
    (_q(filter='{"$where": "sleep(1000)"}'), 400, "unsupported operator $where"),
    (_q(filter='{"$function": {"body": "x"}}'), 400, "unsupported operator $function"),
    (_q(filter='{"$expr": {"$eq": [1, 1]}}'), 400, "unsupported operator $expr"),
    (
        _q(filter='{"a": {"$accumulator": {}}}'),
        400,
        "unsupported operator $accumulator",
    ),
    (_q(filter='{"a": {"$regex": "^x"}}'), 400, "unsupported operator $regex"),
    (
        _q(filter='{"a": {"$elemMatch": {"b": 1}}}'),
        400,
        "unsupported operator $elemMatch",
    ),
    (_q(filter='{"$nor": [{"a": 1}]}'), 400, "unsupported operator $nor"),
    (_q(filter='{"a": {"$foo": 1}}'), 400, "unsupported operator $foo"),
    (_q(filter='{"a": {"$in": 5}}'), 400, "$in needs a list"),
    (_q(filter='{"a": {"$nin": "x"}}'), 400, "$nin needs a list"),
    (_q(filter='{"a": {"$exists": "yes"}}'), 400, "$exists"),
    (_q(filter='{"$and": []}'), 400, "$and"),
    (_q(filter='{"$or": {"a": 1}}'), 400, "$or"),
    (_q(filter='{"a": {"$not": 5}}'), 400, "$not"),
    (_q(filter='{"": 1}'), 400, "filter"),
    (_q(filter='{"a..b": 1}'), 400, "filter"),
    (_q(filter='{"a": {"$gt": 1, "b": 2}}'), 400, "filter"),
    (_q(filter='{"a": {"$oid": "not-an-oid"}}'), 400, "filter"),
    (_q(filter=json.dumps({"a": "x" * 2500})), 400, "filter too large"),
    # Over gunicorn's request-line limit: refused before the app sees it.
    (_q(filter=json.dumps({"a": "x" * 5000})), 414, "Request Line is too large"),
    (_q(filter=json.dumps(DEEP)), 400, "nested too deep"),
    (_q(filter=json.dumps({"a": {"$in": list(range(500))}})), 400, "filter"),
    (_q(filter="{}") + "&" + _q(filter="{}"), 400, "filter: give it once"),
    ("filter=%FF%FE", 400, "filter"),
    (_q(ns=""), 400, "ns: empty"),
    (_q(ns="a b"), 400, "is not 'db' or 'db.coll'"),
    (_q(ns="other.items"), 400, "outside the watched scope"),
    (_q(ns="other"), 400, "outside the watched scope"),
    (_q(ns=",".join(f"{DB}.c{i}" for i in range(40))), 400, "more than 32"),
    (_q(ns="x" * 300), 400, "is not 'db' or 'db.coll'"),
    (_q(ops="explode"), 400, "unknown operation type 'explode'"),
    (_q(ops=","), 400, "ops: empty"),
    (_q(fliter="{}"), 400, "unknown parameter 'fliter'"),
    (_q(resume_after="not a token"), 400, "resume_after"),
    (_q(resume_after="ab" * 5000), 414, "Request Line is too large"),
    (_q(resume_after="b64:%%%"), 400, "resume_after"),
    (_q(resume_after="b64:AAAA"), 400, "resume_after"),
    # A crafted (unsealed) token, well-formed as MongoDB writes them.
    (_q(resume_after="82" + "AB" * 40), 400, "resume_after: not a resume token"),
]


@pytest.mark.parametrize("query, status, reason", BEFORE_UPGRADE)
def test_refused_before_the_upgrade(server, bystander, writes, query, status, reason):
    with pytest.raises(InvalidStatus) as info:
        WSClient(server.ws_url() + "?" + query)
    response = info.value.response
    assert response.status_code == status
    if status == 414:
        assert reason in response.body.decode()
    else:
        assert reason in json.loads(response.body)["error"]
    _bystander_still_receives(bystander, writes)


def test_a_foreign_origin_is_refused(server, bystander, writes):
    with pytest.raises(InvalidStatus) as info:
        WSClient(server.ws_url(), origin="https://evil.example")
    assert info.value.response.status_code == 403
    _bystander_still_receives(bystander, writes)


def test_a_plain_get_is_told_to_upgrade(server, bystander, writes):
    status, body = http_get(server.url + "/ws")
    assert status == 426 and b"WebSocket endpoint" in body
    _bystander_still_receives(bystander, writes)


def _send_and_expect_close(server, send):
    client = WSClient(server.ws_url())
    assert client.recv()["type"] == "hello"
    try:
        send(client.ws)
    except ConnectionClosed:
        pass  # the server was quicker to close than the client to send
    return client.wait_closed(timeout=10)


def _ping_flood(ws, count):
    try:
        for _ in range(count):
            ws.ping()
    except ConnectionClosed:
        pass


def _unfinished(ws, count):
    """One text message that never ends: empty continuation frames."""
    try:
        ws.send(iter(["{"] + [""] * count))
    except ConnectionClosed:
        pass


def _flood(ws, count):
    """Valid control messages, faster than allowed; the server may close
    before the last ones are sent."""
    try:
        for _ in range(count):
            ws.send('{"type": "ping"}')
    except ConnectionClosed:
        pass


# (how to misbehave after the upgrade, close code, reason fragment)
AFTER_UPGRADE = [
    (lambda ws: ws.send(b"\x00\x01binary"), 1003, "binary messages"),
    (lambda ws: ws.send("not json"), 1008, "message is not JSON"),
    (lambda ws: ws.send('{"type": "unsubscribe"}'), 1008, "unknown message type"),
    (lambda ws: ws.send("[1, 2, 3]"), 1008, "unknown message type"),
    (lambda ws: ws.send('"ping"'), 1008, "unknown message type"),
    (lambda ws: ws.send("x" * 5000), 1009, "too big"),
    (lambda ws: ws.send(["x" * 3000, "y" * 3000]), 1009, "too big"),
    (lambda ws: ws.send(b"\xff\xfe\xfd", text=True), 1007, ""),
    (lambda ws: _flood(ws, 60), 1008, "too many frames"),
    (lambda ws: _ping_flood(ws, 60), 1008, "too many frames"),
    (lambda ws: _unfinished(ws, 200), 1008, "too many"),
    # 3,000 characters, 6,000 bytes: the limit is in bytes.
    (lambda ws: ws.send("é" * 3000), 1009, "too big"),
    # Deeper than json.loads can follow (RecursionError): was 1011 and a
    # traceback.
    (lambda ws: ws.send("[" * 2000 + "]" * 2000), 1008, "message is nested too deep"),
    (
        lambda ws: ws.send(
            '{"type": "subscribe", "filter": {"a": ' + "[" * 1900 + "]" * 1900 + "}}"
        ),
        1008,
        "message is nested too deep",
    ),
]


# Request headers no client library sends: refused with 400 and a reason
# before anything else happens (authorization included).
BAD_HANDSHAKES = [
    ({"Origin": "http://a,http://b"}, "malformed"),
    ({"Origin": "http://127.0.0.1:99999"}, "malformed"),
    ({"Origin": "http://host:port.evil"}, "malformed"),
    ({"Origin": "http://user@127.0.0.1"}, "malformed"),
    ({"Sec-WebSocket-Key": None}, "Sec-WebSocket-Key"),
    ({"Sec-WebSocket-Key": "short"}, "Sec-WebSocket-Key"),
    ({"Sec-WebSocket-Version": "8"}, "Sec-WebSocket-Version must be 13"),
    ({"Sec-WebSocket-Version": None}, "Sec-WebSocket-Version must be 13"),
    # wsproto reads window bits with int(): a 500 and a traceback.
    (
        {"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=abc"},
        "Sec-WebSocket-Extensions: server_max_window_bits must be an integer",
    ),
    (
        {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits=1x"},
        "Sec-WebSocket-Extensions: client_max_window_bits must be an integer",
    ),
    (
        {
            "Sec-WebSocket-Extensions": (
                "x-other, permessage-deflate; client_max_window_bits="
            )
        },
        "client_max_window_bits must be an integer",
    ),
    (
        {"Sec-WebSocket-Extensions": "permessage-deflate; x=\u00e9"},
        "Sec-WebSocket-Extensions must be ASCII",
    ),
    # DNS rebinding: another site's name, pointed at this loopback server.
    (
        {"Host": "attacker.example:{port}", "Origin": "http://attacker.example:{port}"},
        "host attacker.example",
    ),
    ({"Host": "attacker.example"}, "is not allowed"),
]


@pytest.mark.parametrize("headers, reason", BAD_HANDSHAKES)
def test_bad_handshakes_are_400_with_a_reason(
    server, bystander, writes, headers, reason
):
    headers = {k: v.format(port=server.port) if v else v for k, v in headers.items()}
    logged = len(server.output())
    status, got = raw_upgrade(server.port, headers)
    assert status == 400 and reason in got
    assert "Traceback" not in server.output()[logged:]
    _bystander_still_receives(bystander, writes)


def test_credentials_in_the_query_never_reach_the_log(server):
    http_get(server.url + "/ws?access_token=SECRET-one")  # 426
    raw_upgrade(server.port, {}, path="/ws?access_token=SECRET-two&x=1")
    raw_upgrade(
        server.port,
        {"Origin": "http://elsewhere.example"},
        path="/ws?access_token=SECRET-three",
    )  # 403
    http_get(server.url + "/healthz?access_token=SECRET-four")
    wait_for(
        lambda: "GET /healthz" in server.output(), 5, "the last request to be logged"
    )
    assert "SECRET" not in server.output()


FORGED = "2026-01-01 [CRITICAL] forged"


def test_client_text_never_starts_a_line_of_the_log(server):
    # A refusal's reason quotes the filter path, the namespace, a
    # subscribe's; the access log the percent-decoded URL path.
    for query in (
        _q(filter=json.dumps({"\n" + FORGED: {"$foo": 1}})),
        _q(ns=f"{DB}.\n{FORGED}"),
    ):
        status, reason = raw_upgrade(server.port, {}, path="/ws?" + query)
        assert status == 400 and FORGED in reason
    client = WSClient(server.ws_url())
    client.recv()
    client.ws.send(
        json.dumps({"type": "subscribe", "filter": {"\r\n" + FORGED: {"$foo": 1}}})
    )
    assert FORGED in client.recv_type("error")["reason"]
    client.close()
    http_get(server.url + "/nothing%0A" + urllib.parse.quote(FORGED))
    wait_for(
        lambda: "GET /nothing" in server.output(), 5, "the last request to be logged"
    )
    lines = server.output().splitlines()
    assert not [line for line in lines if line.startswith(FORGED)]
    assert sum("\\n" + FORGED in line for line in lines) >= 3


def test_loopback_names_are_allowed_hosts(server):
    for host in ("localhost", "127.0.0.1", "[::1]"):
        status, _ = raw_upgrade(
            server.port,
            {"Host": f"{host}:{server.port}", "Origin": f"http://{host}:{server.port}"},
        )
        assert status == 101


# Every route of wsproxy's blueprint, not only the WebSocket (the demo app
# serves the page at /).
EVERY_ROUTE = ["/", "/wsproxy-static/app.js", "/metrics", "/healthz", "/readyz", "/ws"]
PLAIN_GET = {
    "Upgrade": None,
    "Connection": None,
    "Sec-WebSocket-Version": None,
    "Sec-WebSocket-Key": None,
}


@pytest.mark.parametrize("path", EVERY_ROUTE)
def test_every_route_refuses_a_rebound_host(server, path):
    status, reason = raw_upgrade(
        server.port, {**PLAIN_GET, "Host": f"attacker.example:{server.port}"}, path=path
    )
    assert status == 400 and reason == (
        "host attacker.example is not allowed; see WSPROXY_ALLOWED_HOSTS"
    )
    status, _ = raw_upgrade(
        server.port, {**PLAIN_GET, "Host": f"localhost:{server.port}"}, path=path
    )
    assert status == (426 if path == "/ws" else 200)


@pytest.mark.parametrize("send, code, reason", AFTER_UPGRADE)
def test_closed_after_the_upgrade(server, bystander, writes, send, code, reason):
    logged = len(server.output())
    got_code, got_reason = _send_and_expect_close(server, send)
    assert got_code == code
    assert reason in got_reason
    assert "Traceback" not in server.output()[logged:]
    _bystander_still_receives(bystander, writes)


def test_a_ping_message_gets_a_pong(server):
    client = WSClient(server.ws_url())
    client.recv()
    client.ws.send('{"type": "ping"}')
    assert client.recv_type("pong")["type"] == "pong"
    client.close()


def test_a_sealed_token_the_server_cannot_resume_from_gets_a_reset(
    server, bystander, writes
):
    # Sealed with the servers' key, but no such position in the oplog.
    unresumable = sealer_for_tests().seal({"_data": "82" + "AB" * 40})
    client = WSClient(server.ws_url(_q(resume_after=unresumable)))
    assert client.recv()["resume"] == "catch-up"
    assert client.recv_type("reset", timeout=10)["lost"] is True
    _bystander_still_receives(bystander, writes)
    assert client.recv_type("change")["type"] == "change"
    client.close()


def test_garbage_instead_of_a_handshake(server, bystander, writes):
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        raw.settimeout(scaled(5))
        assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    _bystander_still_receives(bystander, writes)


def test_the_worker_is_full(mongo, namespace, gunicorn):
    db, coll = namespace
    full = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_CLIENTS": "2",
            # Both from one address: its share is the whole worker.
            "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL": "2",
        }
    )
    keep = [WSClient(full.ws_url()) for _ in range(2)]
    for client in keep:
        client.recv()
    with pytest.raises(InvalidStatus) as info:
        WSClient(full.ws_url())
    assert info.value.response.status_code == 503
    assert info.value.response.headers["Retry-After"] == "5"
    for client in keep:
        client.close()


_counter = iter(range(10**6))


def _bystander_still_receives(bystander, writes):
    """One new write reaches the client that did nothing wrong."""
    n = next(_counter)
    writes.insert_one({"probe": n})
    while True:
        message = bystander.recv_type("change", timeout=5)
        if message["event"]["fullDocument"].get("probe") == n:
            return


# ---------------------------------------------------------------------------
# Frame floods under load: four connections that reconnect and flood pings
# or never-finished messages for 10 s, against the default limits.

FLOOD_SECONDS = 10

# argv: port, seconds, mode ("pings" or "fragments"), connections. Prints
# how many connections were made and how many ended in 429 or errors.
_FLOODER = """
import json, socket, sys, threading, time
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, RejectConnection, Request
from wsproto.events import TextMessage
port, seconds, mode, count = (int(sys.argv[1]), float(sys.argv[2]),
                              sys.argv[3], int(sys.argv[4]))
end = time.monotonic() + seconds
counts = {"ok": 0, "429": 0, "other": 0}
def once():
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        conn = WSConnection(ConnectionType.CLIENT)
        sock.sendall(conn.send(Request(host=f"127.0.0.1:{port}",
                                       target="/ws")))
        while True:
            conn.receive_data(sock.recv(65536))
            events = list(conn.events())
            if any(isinstance(e, RejectConnection) for e in events):
                counts["429"] += 1
                return
            if any(isinstance(e, AcceptConnection) for e in events):
                break
        counts["ok"] += 1
        if mode == "pings":
            batch = b"".join(conn.send(Ping(b"%d" % i)) for i in range(200))
        else:
            sock.sendall(conn.send(TextMessage("{", message_finished=False)))
            batch = b"".join(conn.send(TextMessage("", message_finished=False))
                             for _ in range(200))
        while time.monotonic() < end:
            # A send the server holds up (it stops reading a flooder) waits
            # no longer than the attack lasts.
            sock.settimeout(max(0.1, end - time.monotonic()))
            sock.sendall(batch)
def attack():
    while time.monotonic() < end:
        try:
            once()
        except OSError:
            pass
        except Exception:
            counts["other"] += 1
"""


@pytest.mark.timing  # the bystanders' latency: alone on the machine
@pytest.mark.parametrize("mode", ["pings", "fragments"])
def test_frame_floods_do_not_slow_the_others(
    mongo, mongo_client, namespace, gunicorn, mode
):
    import random

    from . import attack

    db, coll = namespace
    server = attack.serve(gunicorn, mongo, db, coll)
    bystanders = attack.connect_bystanders(server)
    report = attack.run(
        server,
        mongo_client[db][coll],
        random.Random(5),
        bystanders,
        [
            _FLOODER + attack.RUN_ATTACKERS,
            str(server.port),
            str(FLOOD_SECONDS),
            mode,
            "4",
        ],
        FLOOD_SECONDS,
    )
    # The flooders kept coming back, and were cut off each time.
    assert report.outcomes["ok"] >= 4, report.outcomes
    assert server.output().count("(code 1008)") >= report.outcomes["ok"] - 4
    report.assert_contained(FLOOD_SECONDS)
    for client in bystanders:
        client.close()
