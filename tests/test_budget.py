"""What one principal may hold in a worker (wsproxy/limits/budget.py): its
connections, the cost of its filters, its snapshots and compression
contexts; tried through a two-tenant host app (tests/tenantapp.py) on
the real gunicorn."""

import json
import time
import urllib.parse

import pytest
from werkzeug.datastructures import MultiDict

from wsproxy import access
from wsproxy.fanout.subscription import parse
from wsproxy.limits.budget import Budgets
from wsproxy.limits.throttle import KeyedRateLimit, Throttled
from wsproxy.transport.compression import SharedContexts

from .helpers import WSClient, http_get, refused, scaled, wait_for

APP = "tests.tenantapp:app"


def _sub(filter=None, principal=access.ANYONE):
    args = MultiDict({"filter": filter} if filter else {})
    return parse(args, scope="", principal=principal)


def _costly(n, items=60):
    """A legal filter of about 180 terms: a compound $nin that compares
    every array element with every listed sub-document."""
    return json.dumps(
        {
            "fullDocument.items": {
                "$nin": [{"s": f"{n}.{i}", "q": i} for i in range(items)]
            }
        },
        separators=(",", ":"),
    )


# -- the ledger ---------------------------------------------------------------


def test_connections_beyond_a_principals_share_are_refused():
    budgets = Budgets(max_connections=2, max_terms=100)
    first = budgets.reserve("a", _sub())
    budgets.reserve("a", _sub())
    with pytest.raises(Throttled, match="WSPROXY_MAX_CLIENTS_PER_PRINCIPAL"):
        budgets.reserve("a", _sub())
    budgets.reserve("b", _sub())  # another principal has its own share
    budgets.release(first)
    budgets.release(first)  # once only
    budgets.reserve("a", _sub())
    assert budgets.held("a") == (2, 0)


def test_a_filter_is_charged_once_however_many_connections_hold_it():
    budgets = Budgets(max_connections=100, max_terms=10)
    spelled = [
        '{"fullDocument.x": {"$in": [1, 2, 3]}}',
        '{ "fullDocument.x" :{"$in":[1,2,3]} }',
    ]
    held = [budgets.reserve("a", _sub(spelled[i % 2])) for i in range(20)]
    assert budgets.held("a") == (20, 5)  # one subscription, 5 terms
    with pytest.raises(Throttled, match="WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL"):
        budgets.reserve("a", _sub('{"fullDocument.y": {"$in": [1, 2, 3, 4]}}'))
    for reservation in held:
        budgets.release(reservation)
    assert budgets.held("a") == (0, 0)


def test_a_subscribe_over_the_budget_keeps_the_old_subscription():
    budgets = Budgets(max_connections=10, max_terms=6)
    reservation = budgets.reserve("a", _sub('{"fullDocument.x": 1}'))
    with pytest.raises(Throttled):
        budgets.replace(reservation, _sub(_costly(1, items=3)))
    assert budgets.held("a") == (1, 1)
    budgets.replace(reservation, _sub('{"fullDocument.y": {"$in": [1, 2]}}'))
    assert budgets.held("a") == (1, 4)


def test_spellings_of_one_filter_are_one_subscription():
    a = _sub('{"fullDocument.total": {"$gte": {"$numberDecimal": "10"}}}')
    b = _sub('{ "fullDocument.total" : { "$gte" : {"$numberDecimal":"10"} } }')
    assert a.key == b.key
    assert a.key != _sub('{"fullDocument.total": {"$gte": 10}}').key


def test_shared_contexts_are_bounded_per_principal():
    """Issue 20: 64 filters differing in white space made 64 contexts, each
    compressing every event on the broadcaster, and left none for others."""
    contexts = SharedContexts(max_contexts=64, per_principal=3)
    joined = [
        contexts.join(_sub('{"fullDocument.x":' + " " * i + "1}"), 15, "attacker")
        for i in range(64)
    ]
    assert len({id(c) for c in joined}) == 1 and len(contexts._contexts) == 1
    distinct = [
        contexts.join(_sub(f'{{"fullDocument.x": {i}}}'), 15, "attacker")
        for i in range(2, 10)
    ]
    assert sum(c is not None for c in distinct) == 2  # 3 in all
    assert contexts.join(_sub('{"fullDocument.x": 99}'), 15, "other") is not None
    # Joining one that exists costs nothing.
    assert contexts.join(_sub('{"fullDocument.x": 1}'), 15, "third") is joined[0]


def test_a_rate_limit_can_be_charged_after_the_fact():
    now = [0.0]
    rate = KeyedRateLimit(10, 20, clock=lambda: now[0])
    rate.charge("a", 35)  # a costly read: the bucket goes into debt
    assert rate.take("a") == pytest.approx(1.6)  # 16 tokens short
    now[0] += 1.6
    assert rate.take("a") == 0.0
    rate.charge("b", 1000)  # at most a burst below empty
    now[0] += 4.1
    assert rate.take("b") == 0.0


# -- through the server ---------------------------------------------------------


@pytest.fixture
def tenants(mongo, namespace, gunicorn):
    def start(**env):
        db, _ = namespace
        settings = {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "TENANT_DB": db,
            "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL": None,
        }  # the default
        settings.update({k: str(v) for k, v in env.items()})
        return gunicorn(settings, app=APP)

    return start


def _as(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def test_one_tenant_cannot_fill_the_worker(tenants):
    """Issue 20: one tenant held all 300 connections; the other got 503
    while /readyz said ready."""
    server = tenants(WSPROXY_MAX_CLIENTS=6)
    mine = [WSClient(server.ws_url(), **_as("token-a")) for _ in range(3)]
    status, reason = refused(server.ws_url(), **_as("token-a2"))
    assert status == 429 and "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL" in reason
    theirs = [WSClient(server.ws_url(), **_as("token-b")) for _ in range(3)]
    for client in mine + theirs:
        assert client.recv()["type"] == "hello"
    status, body = server.readyz()
    assert status == 503 and body["full"] is True and body["clients"] == 6
    assert refused(server.ws_url(), **_as("token-admin"))[0] == 503
    mine.pop().close()
    wait_for(lambda: server.readyz()[0] == 200, 10, "room again")
    assert server.readyz()[1]["full"] is False
    for client in mine + theirs:
        client.close()


def test_costly_filters_are_charged_to_their_principal(
    tenants, mongo_client, namespace
):
    server = tenants(WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL=200)
    db, coll = namespace
    costly = _costly(1)
    url = server.ws_url(urllib.parse.urlencode({"filter": costly}))
    # The same costly filter, however often and however spelled, is
    # judged once per change: charged once.
    same = [WSClient(url, **_as("token-a")) for _ in range(5)]
    respelled = json.dumps(json.loads(costly), separators=(", ", " : "))
    same.append(
        WSClient(
            server.ws_url(urllib.parse.urlencode({"filter": respelled})),
            **_as("token-a2"),
        )
    )
    another = server.ws_url(urllib.parse.urlencode({"filter": _costly(2)}))
    status, reason = refused(another, **_as("token-a"))
    assert status == 429 and "WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL" in reason
    other_tenant = WSClient(another, **_as("token-b"))  # its own share
    # A subscribe is charged the same way, and keeps its subscription.
    client = same[0]
    assert client.recv()["type"] == "hello"
    client.ws.send(json.dumps({"type": "subscribe", "filter": _costly(3)}))
    answer = client.recv_type("error")
    assert "WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL" in answer["reason"]
    mongo_client[db][coll].insert_one(
        {"tenant": "a", "items": [{"sku": "x", "qty": 1}]}
    )
    for each in same:
        assert each.recv_type("change")["event"]["fullDocument"]["tenant"] == "a"
    for each in same + [other_tenant]:
        each.close()


def test_a_subscribe_costs_a_token_of_the_connect_budget(tenants):
    server = tenants(WSPROXY_CONNECT_RATE=1, WSPROXY_CONNECT_BURST=5)
    client = WSClient(server.ws_url(), **_as("token-a"))
    assert client.recv()["type"] == "hello"
    answers = []
    for i in range(8):
        client.ws.send(
            json.dumps({"type": "subscribe", "filter": {"fullDocument.n": i}})
        )
        answers.append(client.recv())
    kinds = [a["type"] for a in answers]
    assert kinds.count("subscribed") == 4  # the connection took one token
    assert all(
        "too many subscriptions" in a["reason"] for a in answers if a["type"] == "error"
    )
    client.close()


def test_the_system_collections_are_never_streamed_or_read(
    mongo, namespace, gunicorn, mongo_client
):
    """Issue 20: ?snapshot=1&ns=local.oplog.rs returned raw oplog entries,
    hidden fields included, to a client of the whole deployment."""
    db, coll = namespace
    mongo_client[db][coll].insert_one({"secret": "TOP-SECRET-VALUE"})
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": "",
            "WSPROXY_HIDE_FIELDS": "secret",
        }
    )
    for query in (
        "snapshot=1&ns=local.oplog.rs",
        "ns=local",
        "snapshot=1&ns=admin.system.users",
        "ns=admin",
        "snapshot=1&ns=config.transactions",
        "ns=config.chunks",
        f"snapshot=1&ns={db}.system.profile",
        f"ns={db}.system.views",
    ):
        status, reason = refused(server.ws_url(query))
        assert status == 403 and "never streamed" in reason, query
    client = WSClient(server.ws_url())
    assert client.recv()["type"] == "hello"
    client.ws.send(json.dumps({"type": "subscribe", "ns": "local.oplog.rs"}))
    assert "never streamed" in client.recv_type("error")["reason"]
    client.close()


def test_a_snapshot_of_a_partly_hidden_id_is_refused(tenants):
    """Issue 20: the default _id order of a snapshot followed the hidden
    part of the _id."""
    server = tenants()
    status, reason = refused(
        server.ws_url("snapshot=1&ns=" + _ns(server)), **_as("token-owner-hidden")
    )
    assert status == 403 and "_id" in reason


def _ns(server):
    return server.env["TENANT_DB"] + ".orders"


def test_a_leave_never_shows_a_hidden_part_of_the_key(tenants, mongo_client):
    """Issue 20: a principal hiding _id.owner received {"type": "leave",
    "documentKey": {"_id": {"owner": "mia-SECRET", "k": 3}}}."""
    server = tenants()
    orders = mongo_client[server.env["TENANT_DB"]]["orders"]
    client = WSClient(server.ws_url("ns=" + _ns(server)), **_as("token-owner-hidden"))
    assert client.recv()["type"] == "hello"
    key = {"owner": "mia-SECRET", "k": 3}
    orders.insert_one({"_id": key, "status": "open"})
    inserted = client.recv_type("change")["event"]
    assert inserted["documentKey"] == {"_id": {"k": 3}}
    orders.update_one({"_id": key}, {"$set": {"status": "closed"}})
    leave = client.recv_type("leave")
    assert leave["documentKey"] == {"_id": {"k": 3}}
    assert leave["reason"] == "filter"
    assert "mia-SECRET" not in json.dumps([inserted, leave])
    client.close()


def _stalled_snapshot(server):
    """A snapshot client that never reads (anonymous: charged to its
    address), once its snapshot is being sent."""
    from .helpers import RawPeer

    return RawPeer.connect(
        server.port, rcvbuf=4096, target="/ws?snapshot=1&ns=" + _ns(server)
    )


def _fill(mongo_client, namespace, count=2000):
    """Documents written before the server starts: in its snapshots, never
    in its change stream."""
    orders = mongo_client[namespace[0]]["orders"]
    orders.insert_many(
        [{"tenant": "a", "pad": "x" * 4000, "n": i} for i in range(count)]
    )


def test_one_principal_cannot_take_every_snapshot(tenants, mongo_client, namespace):
    """Issue 20: one principal's sockets that never read, rotated every
    12 s, kept the other tenant's snapshots at 1013."""
    _fill(mongo_client, namespace)
    server = tenants(
        WSPROXY_MAX_SNAPSHOTS=2, WSPROXY_CLOSE_TIMEOUT=1, WSPROXY_SEND_TIMEOUT=60
    )
    first = _stalled_snapshot(server)
    wait_for(
        lambda: "wsproxy_snapshots_active 1.0" in metric_text(server),
        30,
        "the first snapshot",
    )
    second = _stalled_snapshot(server)
    code, reason = second.wait_close(timeout=30)
    assert code == 1013 and "too many snapshots for this client" in reason
    other = WSClient(server.ws_url("snapshot=1&ns=" + _ns(server)), **_as("token-b"))
    assert other.recv(timeout=30)["type"] == "hello"
    assert other.recv_type("snapshot_end", timeout=30)["count"] == 0
    other.close()
    first.close()
    second.close()


def metric_text(server):
    return http_get(server.url + "/metrics")[1].decode()


def test_a_snapshot_slot_is_freed_when_its_reader_stops_reading(
    tenants, mongo_client, namespace
):
    """...and a slot held by a reader that stopped reading is given back
    after WSPROXY_SEND_TIMEOUT, not after the whole snapshot time limit."""
    _fill(mongo_client, namespace)
    server = tenants(
        WSPROXY_SEND_TIMEOUT=60,
        WSPROXY_CATCHUP_TIMEOUT=120,
        WSPROXY_OUTBOX_MAX_BYTES=1 << 20,
    )
    stalled = _stalled_snapshot(server)
    started = time.monotonic()
    wait_for(
        lambda: "read nothing of its snapshot" in server.output(),
        30,
        "the stalled reader to be found",
    )
    wait_for(
        lambda: "wsproxy_snapshots_active 0.0" in metric_text(server),
        5,
        "its slot to be free",
    )
    took = time.monotonic() - started
    assert took < scaled(15), took  # 2 s of nothing read, after the read
    stalled.close()


# -- the attack ---------------------------------------------------------------

_ATTACKER = """
import json, sys, threading, time
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
url, seconds, open_timeout, costly, cheap_held, count = (
    sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "costly",
    int(sys.argv[5]), int(sys.argv[6]))
import urllib.parse
end = time.monotonic() + seconds
counts = {"ok": 0, "429": 0, "400": 0, "other": 0}
held = []
lock = threading.Lock()
serial = [0]
def a_filter(n):
    if costly:
        return {"fullDocument.items": {"$nin": [
            {"s": f"{n}.{i}", "q": i} for i in range(60)]}}
    # The same attempts at the same pace, without the cost: the first
    # cheap_held are admitted with a one-term filter, as many as the costly
    # filters' share admits; the rest are refused (400, an unknown
    # operator) after the same parse.
    if n <= cheap_held:
        return {"fullDocument.seq": {"$gte": 0}}
    return {"fullDocument.items": {"$where": [
            {"s": f"{n}.{i}", "q": i} for i in range(60)]}}
def attack():
    while time.monotonic() < end and len(held) < 600:
        with lock:
            serial[0] += 1
            n = serial[0]
        chosen = json.dumps(a_filter(n), separators=(",", ":"))
        try:
            ws = connect(url + "?" + urllib.parse.urlencode({"filter": chosen}),
                         compression=None, max_size=None, legacy=True,
                         open_timeout=open_timeout)
            held.append(ws)
            counts["ok"] += 1
        except InvalidStatus as exc:
            status = str(exc.response.status_code)
            counts[status if status in counts else "other"] += 1
            time.sleep(0.2)  # Retry-After says 5 s; it tries far sooner
        except Exception:
            counts["other"] += 1
    time.sleep(max(0.0, end - time.monotonic()))
"""

# What the costly filters' share admits (1000 terms / 180 per filter).
_HELD = 5


@pytest.mark.timing  # a p99 against its baseline: alone on the machine
def test_one_principals_costly_filters_do_not_slow_the_others(
    mongo, mongo_client, namespace, gunicorn
):
    """Issue 20: 600 connections of one principal, each with a legal 1.9 KB
    filter, pushed the other tenant's bystanders to p99 14.7 s. Its share
    now bounds what its filters cost: the bystanders' p99 stays within 2x
    of a baseline measured in the same run against the same attempts at
    the same pace with cheap filters, so what is compared is the filters'
    cost, not the CPU two busy processes take from the readers of a
    2-core machine (the connect budget's share of that is another test)."""
    import random

    from . import attack

    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL": None,
        }
    )
    items = mongo_client[db][coll]
    rng = random.Random(20)
    script = _ATTACKER + attack.RUN_ATTACKERS

    def attacked_by(kind, seconds):
        bystanders = attack.connect_bystanders(server)
        try:
            return attack.run(
                server,
                items,
                rng,
                bystanders,
                [
                    script,
                    server.ws_url(),
                    str(seconds),
                    str(scaled(30)),
                    kind,
                    str(_HELD),
                    "4",
                ],
                seconds,
            )
        finally:
            for client in bystanders:
                client.close()

    # The baseline needs fewer samples than the attack needs time (its p99
    # is the 10th worst of about 1,000 latencies).
    quiet = attacked_by("cheap", 10)
    report = attacked_by("costly", 20)
    print(
        f"cheap filters p99 {quiet.p99 * 1000:.1f} ms, costly filters "
        f"{report.p99 * 1000:.1f} ms: {quiet.outcomes} {report.outcomes}"
    )
    assert quiet.outcomes["ok"] == _HELD and quiet.outcomes["400"] >= 1
    assert report.outcomes["ok"] >= 1 and report.outcomes["429"] >= 1
    report.assert_contained(20)
    # Below ~20 ms a p99 on this shared 2-core machine is scheduler noise.
    assert report.p99 <= 2 * max(quiet.p99, scaled(0.02)), (quiet.p99, report.p99)
