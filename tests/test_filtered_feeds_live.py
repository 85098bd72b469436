"""Filtered feeds tell the whole truth, as both clients keep it: a plain
feed (not a snapshot) with a filter on document fields, kept by the
Python client's LiveDocuments (in this process) and the browser's (in
Chromium), starting on an empty collection under random writes, ends
holding exactly the database's matching documents. Through the tenant
host app (each tenant's row filter on fullDocument.tenant, its secret
field hidden), with and without a client filter of its own; on a
collection with pre-images (deletes and leaves decided by the event:
"exact") and on one without (decided by what each connection was sent:
"tracked")."""

import json
import random
import threading
import urllib.parse

import pytest

from wsproxy.client import LiveDocuments, WSProxyClient

from .helpers import WSClient, scaled, server_env, wait_for

APP = "tests.tenantapp:app"
IDS = 80  # documents the writer works on (well under WSPROXY_TRACKED_DOCS)
WRITES = 600
OPEN = {"fullDocument.status": "open"}
MARKERS = {"a": "zz-marker-a", "b": "zz-marker-b"}


def tenant_server(gunicorn, mongo, db, mode):
    env = {
        "WSPROXY_MONGODB_URI": mongo.uri,
        "WSPROXY_WATCH": db,
        "WSPROXY_MAX_AWAIT_MS": "100",
        "TENANT_DB": db,
    }
    if mode == "exact":
        env["WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE"] = "whenAvailable"
    server = gunicorn(env, app=APP)

    def deletes():
        # The watcher looks at the collections once it is connected, just
        # after /readyz says so.
        probe = WSClient(
            server.ws_url(), additional_headers={"Authorization": "Bearer token-a"}
        )
        try:
            return probe.recv_type("hello")["deletes"]
        finally:
            probe.close()

    wait_for(lambda: deletes() == mode, 10, f"hello saying deletes: {mode}")
    return server


def random_writes(items, seed, count=WRITES):
    """Inserts, updates that move a document between tenants or in and out
    of "open", replaces and deletes, on IDS documents; how many of each."""
    rnd = random.Random(seed)
    present = set()
    done = {"insert": 0, "update": 0, "replace": 0, "delete": 0}

    def new(n, v):
        return {
            "_id": n,
            "tenant": rnd.choice("ab"),
            "status": rnd.choice(["open", "closed"]),
            "v": v,
            "secret": f"s{rnd.randrange(10**6)}",
        }

    for v in range(1, count + 1):
        n = rnd.randrange(IDS)
        if n not in present:
            items.insert_one(new(n, v))
            present.add(n)
            op = "insert"
        else:
            op = rnd.choice(["update", "update", "update", "replace", "delete"])
            if op == "update":
                change = rnd.choice(
                    [
                        {"tenant": rnd.choice("ab")},
                        {"status": rnd.choice(["open", "closed"])},
                        {
                            "tenant": rnd.choice("ab"),
                            "status": rnd.choice(["open", "closed"]),
                        },
                    ]
                )
                items.update_one({"_id": n}, {"$set": {**change, "v": v}})
            elif op == "replace":
                items.replace_one({"_id": n}, new(n, v))
            else:
                items.delete_one({"_id": n})
                present.discard(n)
        done[op] += 1
    # The last writes: one marker per tenant, in every view of it. A client
    # holding its marker has applied everything before it.
    for tenant, marker in MARKERS.items():
        items.insert_one({"_id": marker, "tenant": tenant, "status": "open", "v": 0})
    return done


def expected(items, tenant, client_filter):
    query = {"tenant": tenant}
    if client_filter:
        query["status"] = "open"
    return {LiveDocuments.key(d["_id"]): d for d in items.find(query, {"secret": 0})}


class Follower(threading.Thread):
    """One Python client's LiveDocuments, on its own thread, until it
    holds its tenant's marker."""

    def __init__(self, url, tenant, ns, client_filter):
        super().__init__(name=f"test-follower-{tenant}", daemon=True)
        self.tenant = tenant
        self.client_filter = client_filter
        self.feed = WSProxyClient(
            url, token=f"token-{tenant}", ns=ns, filter=OPEN if client_filter else None
        )
        self.live = LiveDocuments(self.feed)
        self.removed = {"delete": 0, "leave": 0}
        self.live.on("remove", self._removed)
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error = None

    def _removed(self, event):
        self.removed[event.reason] += 1

    def run(self):
        try:
            while not self.done.is_set():
                self.feed.receive(timeout=scaled(0.2))
                if not self.live.loading:
                    self.ready.set()  # connected: its hello came
                if self.live.get(MARKERS[self.tenant]) is not None:
                    self.done.set()
        except Exception as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc
            self.done.set()
        finally:
            self.feed.close()


START_IN_BROWSER = """async ([module, views]) => {
  const m = await import(module);
  window.views = {};
  for (const [name, options] of Object.entries(views)) {
    const feed = new m.WsproxyClient(options);
    const live = new m.LiveDocuments(feed);
    const removed = { delete: 0, leave: 0 };
    live.on('remove', ({ reason }) => { removed[reason]++; });
    window.views[name] = { feed, live, removed };
    feed.connect();
  }
}"""


@pytest.mark.parametrize("mode", ["exact", "tracked"])
def test_both_clients_end_with_exactly_the_matching_documents(
    mode, mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    items = mongo_client[db][coll]
    # Empty, with or without pre-images, before the watcher looks.
    if mode == "exact":
        mongo_client[db].create_collection(
            coll, changeStreamPreAndPostImages={"enabled": True}
        )
    else:
        mongo_client[db].create_collection(coll)
    server = tenant_server(gunicorn, mongo, db, mode)
    ns = f"{db}.{coll}"

    followers = [
        Follower(server.ws_url(), tenant, ns, client_filter)
        for tenant, client_filter in (("a", False), ("a", True), ("b", True))
    ]
    page = browser_page
    page.goto(server.url + "/healthz")
    views = {
        "a-open": {"url": "/ws", "token": "token-a", "ns": ns, "filter": OPEN},
        "b": {"url": "/ws", "token": "token-b", "ns": ns},
    }
    page.evaluate(START_IN_BROWSER, ["/wsproxy-static/wsproxy-client.js", views])
    for follower in followers:
        follower.start()
    try:
        for follower in followers:
            assert follower.ready.wait(scaled(10)), follower.error
        page.wait_for_function(
            "Object.values(views).every((v) => !v.live.loading)", timeout=scaled(10000)
        )

        done = random_writes(items, seed={"exact": 21, "tracked": 22}[mode])
        assert min(done.values()) > 0, done

        for follower in followers:
            assert follower.done.wait(scaled(30)), follower.error
            assert follower.error is None, follower.error
        page.wait_for_function(
            f"""views['a-open'].live.get('{MARKERS["a"]}') !== undefined
                && views.b.live.get('{MARKERS["b"]}') !== undefined""",
            timeout=scaled(30000),
        )
    finally:
        for follower in followers:
            follower.done.set()
            follower.join(scaled(10))

    for follower in followers:
        live = follower.live
        assert live.deletes == mode
        held = live.documents
        want = expected(items, follower.tenant, follower.client_filter)
        assert held.keys() == want.keys(), (follower.tenant, follower.client_filter)
        for key, doc in want.items():
            assert held[key] == doc, key
        # Deletes and leaves both took documents away.
        assert follower.removed["delete"] > 0 and follower.removed["leave"] > 0

    for name, tenant, client_filter in (("a-open", "a", True), ("b", "b", False)):
        got = page.evaluate(
            """(name) => { const v = views[name];
                 return [[...v.live.documents], v.live.deletes, v.removed,
                         v.feed.stats.connections]; }""",
            name,
        )
        held, deletes, removed, connections = got
        want = expected(items, tenant, client_filter)
        assert deletes == mode and connections == 1
        assert dict(held) == {k: dict(d) for k, d in want.items()}, name
        assert removed["delete"] > 0 and removed["leave"] > 0, removed
    assert not page.script_errors
    assert all(f.feed.stats["connections"] == 1 for f in followers)


def test_a_filtered_feed_resumes_from_history_past_changes_it_is_not_sent(
    mongo, mongo_client, namespace, gunicorn
):
    """A filtered feed keeps, beside what it is sent, every update and
    delete it is not (one may be about a document sent a moment before,
    and only routing knows): those must not count toward the outbox
    bound that sends a resuming client to MongoDB instead of the worker's
    history. And the delete of a document the backlog itself sends it
    reaches it."""
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll, WSPROXY_OUTBOX_MAX_MESSAGES=50))
    items = mongo_client[db][coll]
    query = "filter=" + urllib.parse.quote(json.dumps(OPEN))
    everything = WSClient(server.ws_url())
    first = WSClient(server.ws_url(query))
    try:
        assert first.recv_type("hello")["resume"] == "none"
        everything.recv_type("hello")
        items.insert_one({"_id": "start", "status": "open"})
        last = first.recv_type("change")["id"]
        first.close()
        items.insert_one({"_id": 0, "status": "open"})
        items.insert_many([{"_id": n, "status": "closed"} for n in range(1, 101)])
        for n in range(1, 101):
            items.update_one({"_id": n}, {"$set": {"v": 1}})
        items.delete_one({"_id": 0})
        items.insert_one({"_id": "marker", "status": "open"})
        # Everything is in the worker's history before the client is back.
        while everything.recv_type("change")["event"]["documentKey"]["_id"] != "marker":
            pass
    finally:
        everything.close()
    again = WSClient(server.ws_url(query + "&resume_after=" + last))
    try:
        assert again.recv_type("hello")["resume"] == "history"
        got = [again.recv_type("change")["event"] for _ in range(3)]
        assert [(e["operationType"], e["documentKey"]["_id"]) for e in got] == [
            ("insert", 0),
            ("delete", 0),
            ("insert", "marker"),
        ]
    finally:
        again.close()
