"""Live documents (snapshot=1) against the real gunicorn and SecantusDB:
clients that take their snapshot while a writer changes the collection end
with exactly the database's contents, with and without a filter whose
field the writer changes, with hidden fields, across resets and across
reconnects to two proxy processes."""

import random
import re
import threading
import urllib.request

import pytest
from bson import json_util

from wsproxy.client import Change, Leave, LiveDocuments, Snapshot, WSProxyClient

from .helpers import refused, scaled, server_env, wait_for

DOCS = 2000
CLIENTS = 30
STEP = 25  # writes between two clients' snapshots
SENTINEL = "zz-sentinel"


class RandomWriter(threading.Thread):
    """Random inserts, updates, replaces and deletes over ``_id``s
    0..1.2*DOCS, one at a time, until stopped. ``status`` flips between
    open and closed (so documents enter and leave a filter on it);
    ``secret`` and ``meta.token`` are what the hiding tests hide; ``v``,
    set by every write to the write's number, only ever grows."""

    def __init__(self, items, seed):
        super().__init__(name="test-random-writer", daemon=True)
        self.items = items
        self.random = random.Random(seed)
        self.present = set(range(DOCS))
        self.log = []  # (_id, v, op) of every write, logged before it is made
        self.writes = 0
        self.error = None
        self.stopping = threading.Event()
        self.progress = threading.Condition()

    @staticmethod
    def document(n, rnd, v=0):
        return {
            "_id": n,
            "v": v,
            "n": rnd.randrange(1000),
            "status": rnd.choice(["open", "closed"]),
            "secret": f"s{rnd.randrange(10**6)}",
            "meta": {"token": rnd.randrange(10**6), "x": rnd.randrange(9)},
        }

    def seed(self):
        rnd = random.Random(1)
        self.items.insert_many([self.document(n, rnd) for n in range(DOCS)])

    def run(self):
        rnd = self.random
        try:
            while not self.stopping.is_set():
                n = rnd.randrange(int(DOCS * 1.2))
                v = self.writes + 1
                if n not in self.present:
                    self.log.append((n, v, "insert"))
                    self.items.insert_one(self.document(n, rnd, v))
                    self.present.add(n)
                else:
                    op = rnd.choice(["update", "update", "replace", "delete"])
                    self.log.append((n, v, op))
                    if op == "update":
                        self.items.update_one(
                            {"_id": n},
                            {
                                "$set": {
                                    "status": rnd.choice(["open", "closed"]),
                                    "meta.token": rnd.randrange(10**6),
                                    "v": v,
                                },
                                "$inc": {"n": 1},
                            },
                        )
                    elif op == "replace":
                        doc = self.document(n, rnd, v)
                        self.items.replace_one({"_id": n}, doc)
                    else:
                        self.items.delete_one({"_id": n})
                        self.present.discard(n)
                with self.progress:
                    self.writes += 1
                    self.progress.notify_all()
        except Exception as exc:  # noqa: BLE001 - surfaced by stop()
            self.error = exc
            with self.progress:
                self.progress.notify_all()

    def last_writes(self, before):
        """_id -> (v, op) of its last write with a ``v`` below ``before``
        (the seeded documents: (0, "insert"))."""
        last = {n: (0, "insert") for n in range(DOCS)}
        for n, v, op in list(self.log):
            if v < before:
                last[n] = (v, op)
        return last

    def wait_writes(self, count):
        with self.progress:
            assert self.progress.wait_for(
                lambda: self.writes >= count or self.error, scaled(60)
            )
        assert self.error is None, self.error

    def stop(self):
        self.stopping.set()
        self.join(scaled(30))
        assert not self.is_alive() and self.error is None, self.error


class Follower(threading.Thread):
    """One client: takes a snapshot, applies every item to a
    LiveDocuments, until it holds the sentinel in its final form."""

    def __init__(self, urls, ns, start_at=None, writer=None, **subscription):
        super().__init__(name="test-follower", daemon=True)
        self.urls = urls
        self.ns = ns
        self.start_at = start_at
        self.writer = writer
        self.subscription = subscription
        self.docs = LiveDocuments()
        self.seen_docs = []  # every document received, to check hiding
        self.snapshots = 0
        self.leaves = 0
        self.error = None
        self.got_snapshot = threading.Event()
        self.done = threading.Event()
        self.reconnects = []  # writes counts at which to reconnect
        self.fresh = False  # whether this connection's snapshot came
        # key -> the last write (its "v") the client has passed for it:
        # the write of each change received, and after a snapshot the
        # last write before the first change that follows it.
        self.floors = {}
        self.regressions = []  # a document received older than that
        self._unchecked = None  # the last snapshot, until a change follows
        self.feed = None

    def _connect(self, url):
        return WSProxyClient(url, ns=self.ns, snapshot=True, **self.subscription)

    def run(self):
        try:
            if self.start_at is not None:
                self.writer.wait_writes(self.start_at)
            urls = list(self.urls)
            feed = self._connect(urls[0])
            turn = 0
            while not self.done.is_set():
                if (
                    self.reconnects
                    and self.fresh
                    and self.writer.writes >= self.reconnects[0]
                ):
                    # Reconnect to the next proxy process: a fresh snapshot.
                    # (Not before the last one came: a follower that fell
                    # behind the writer would reconnect twice in a row.)
                    self.reconnects.pop(0)
                    self.fresh = False
                    feed.close()
                    turn += 1
                    feed = self._connect(urls[turn % len(urls)])
                item = feed.receive(timeout=scaled(0.2))
                if item is None:
                    continue
                self.apply(item)
            feed.close()
        except Exception as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc
            self.done.set()

    def apply(self, item):
        if isinstance(item, Snapshot):
            self.snapshots += 1
            self.fresh = True
            self.seen_docs.extend(item.documents)
            for doc in item.documents:
                self._state(doc)
            # Unfiltered, every change after the snapshot is sent: the
            # first one tells where the snapshot stands (see _check).
            if self.writer is not None and not self.subscription.get("filter"):
                self._unchecked = item.documents
            self.got_snapshot.set()
        elif isinstance(item, Change):
            for field in ("fullDocument", "updateDescription"):
                if item.event.get(field):
                    self.seen_docs.append(item.event[field])
            written = _written(item.event)
            if self._unchecked is not None:
                if written is not None:  # (a delete does not say)
                    self._check(self._unchecked, written)
                self._unchecked = None
            if isinstance(item.event.get("fullDocument"), dict):
                self._state(item.event["fullDocument"], written)
            if written is not None:
                key = LiveDocuments.key(item.event["documentKey"]["_id"])
                self.floors[key] = max(written, self.floors.get(key, 0))
        elif isinstance(item, Leave):
            self.leaves += 1
        self.docs.apply(item)
        sentinel = self.docs.documents.get(LiveDocuments.key(SENTINEL))
        if sentinel is not None and sentinel.get("n") == -1:
            self.done.set()

    # A document's state (its "v") is never older than what the client has
    # passed. Not "never older than a state received before": a change's
    # fullDocument by updateLookup is the document when the stream looked
    # it up, which may be after later changes to it (MongoDB's semantics;
    # SecantusDB looks up a backlog of events at once), so an update may
    # bring v=657 and the replace after it its own v=634 (seen under
    # load: test_hidden_fields_... regressions [('1244', 657, 634)], the
    # update being the write v=590).

    def _state(self, doc, written=0):
        key = LiveDocuments.key(doc.get("_id"))
        v = doc.get("v", 0)
        floor = max(self.floors.get(key, 0), written or 0)
        if v < floor:
            self.regressions.append((key, floor, v))

    def _check(self, docs, first):
        """The snapshot ``docs`` and the first change after it, the write
        ``first``: the snapshot reflects every write before that one (the
        live feed brings the rest), so each document is at least at its
        last write before it (later, by updateLookup, or gone if that was
        an update: looked up after a delete), or absent if that was a
        delete (unless the snapshot already has ``first``'s own write)."""
        held = {LiveDocuments.key(d["_id"]): d.get("v", 0) for d in docs}
        for n, (v, op) in self.writer.last_writes(first).items():
            key = LiveDocuments.key(n)
            got = held.get(key)
            if op == "delete":
                wrong = got is not None and got < first
            elif got is None:
                wrong = op != "update"
            else:
                wrong = got < v
            if wrong:
                self.regressions.append((key, f"{op} v={v} before {first}", got))
            self.floors[key] = max(v, self.floors.get(key, 0))


def _written(event):
    """The "v" of the write a change is (its own, not its fullDocument's
    by updateLookup), or None (a delete, the sentinel)."""
    op = event.get("operationType")
    if op in ("insert", "replace"):
        doc = event.get("fullDocument")
        return doc.get("v") if isinstance(doc, dict) else None
    if op == "update":
        fields = (event.get("updateDescription") or {}).get("updatedFields")
        return fields.get("v") if isinstance(fields, dict) else None
    return None


def test_the_regression_check_allows_update_lookups_and_catches_the_rest():
    """What the followers' check accepts: the failure seen once under load
    (seed 9: the update that is write v=590 of _id 1244 was looked up after
    write 657, and the replace v=634 came after it) is updateLookup, not a
    regression. What it does not: a state older than a change it passed,
    and a snapshot without a write before the first change after it."""

    def change(op, _id, v, doc_v=None):
        event = {"operationType": op, "documentKey": {"_id": _id}}
        if op == "update":
            event["updateDescription"] = {"updatedFields": {"v": v}}
        if op != "delete":
            event["fullDocument"] = {"_id": _id, "v": v if doc_v is None else doc_v}
        return Change(f"id-{v}", event)

    writer = RandomWriter(None, 9)
    writer.log = [
        (1244, 193, "update"),
        (1244, 357, "update"),
        (1244, 590, "update"),
        (1244, 634, "replace"),
        (1244, 657, "update"),
        (7, 658, "delete"),
        (5, 659, "update"),
    ]
    seeded = [{"_id": n, "v": 0} for n in range(DOCS)]
    seen = [
        change("update", 1244, 193),
        change("update", 1244, 357),
        change("update", 1244, 590, doc_v=657),
        change("replace", 1244, 634),
        change("update", 1244, 657),
    ]
    follower = Follower([], "db.items", writer=writer)
    for item in [Snapshot(seeded, True, None), *seen]:
        follower.apply(item)
    assert follower.regressions == []
    # A state older than a write the client passed: the replace again.
    follower.apply(change("replace", 1244, 634))
    assert follower.regressions == [("1244", 657, 634)]
    # A snapshot followed by write 659 holds every write before it.
    good = [d for d in seeded if d["_id"] not in (7, 1244)] + [{"_id": 1244, "v": 657}]
    bad = [d for d in seeded if d["_id"] != 1244] + [{"_id": 1244, "v": 634}]
    for docs, expected in [
        (good, []),
        (
            bad,
            [
                ("7", "delete v=658 before 659", 0),
                ("1244", "update v=657 before 659", 634),
            ],
        ),
    ]:
        follower = Follower([], "db.items", writer=writer)
        follower.apply(Snapshot(docs, True, None))
        follower.apply(change("update", 5, 659))
        assert sorted(follower.regressions) == sorted(expected)


def _write_the_last_write(items):
    """The sentinel, in its final form last: once a client holds it so, it
    has applied everything before it."""
    items.insert_one({"_id": SENTINEL, "n": 0, "status": "open"})
    items.update_one({"_id": SENTINEL}, {"$set": {"n": -1}})


def _expected(items, query, hide_fields=()):
    docs = {}
    for doc in items.find(query):
        if doc["_id"] == SENTINEL:
            continue
        for path in hide_fields:
            head, _, rest = path.partition(".")
            if rest:
                doc.get(head, {}).pop(rest, None)
            else:
                doc.pop(head, None)
        docs[LiveDocuments.key(doc["_id"])] = json_util.loads(
            json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS)
        )
    return docs


def _run_exactness(
    mongo,
    mongo_client,
    namespace,
    gunicorn,
    *,
    query,
    subscription,
    env=(),
    hide_fields=(),
    seed=7,
):
    db, coll = namespace
    items = mongo_client[db][coll]
    writer = RandomWriter(items, seed)
    writer.seed()
    server = gunicorn(server_env(mongo.uri, db, coll, **dict(env)), workers=2)
    url = server.ws_url()
    followers = [
        Follower(
            [url], f"{db}.{coll}", start_at=i * STEP, writer=writer, **subscription
        )
        for i in range(CLIENTS)
    ]
    writer.start()
    for follower in followers:
        follower.start()
    try:
        for follower in followers:
            assert follower.got_snapshot.wait(scaled(60)), follower.error
        # Keep writing a while after the last snapshot, then stop.
        writer.wait_writes(writer.writes + 4 * STEP)
    finally:
        writer.stop()
    _write_the_last_write(items)
    expected = _expected(items, query, hide_fields)
    for follower in followers:
        follower.join(scaled(60))
        assert follower.error is None, follower.error
        assert follower.done.is_set(), "a client never saw the last write"
        # No document went back to a state older than the client had
        # passed (see Follower._state).
        assert follower.regressions == []
        held = dict(follower.docs.documents)
        held.pop(LiveDocuments.key(SENTINEL))
        assert held.keys() == expected.keys()
        for key, doc in expected.items():
            assert held[key] == doc, key
    return writer, followers, server


@pytest.mark.heavy
def test_every_client_ends_with_the_database_contents(
    mongo, mongo_client, namespace, gunicorn
):
    writer, followers, server = _run_exactness(
        mongo, mongo_client, namespace, gunicorn, query={}, subscription={}
    )
    assert writer.writes >= CLIENTS * STEP
    assert all(f.snapshots == 1 for f in followers)
    # Snapshots overlapped the writes: changes were merged into them.
    merged = [int(n) for n in re.findall(r"(\d+) changes merged", server.output())]
    assert len(merged) == CLIENTS and sum(merged) > 0


@pytest.mark.heavy
def test_documents_enter_and_leave_a_filter_exactly(
    mongo, mongo_client, namespace, gunicorn
):
    _, followers, _ = _run_exactness(
        mongo,
        mongo_client,
        namespace,
        gunicorn,
        query={"status": "open"},
        subscription={"filter": {"fullDocument.status": "open"}},
        seed=8,
    )
    # Documents did leave, without their new (non-matching) content.
    assert sum(f.leaves for f in followers) > 0
    assert all(
        d.get("status") == "open"
        for f in followers
        for d in f.seen_docs
        if "status" in d and "_id" in d
    )


@pytest.mark.heavy
def test_hidden_fields_never_appear_and_the_rest_is_exact(
    mongo, mongo_client, namespace, gunicorn
):
    _, followers, _ = _run_exactness(
        mongo,
        mongo_client,
        namespace,
        gunicorn,
        query={},
        subscription={},
        env={"WSPROXY_HIDE_FIELDS": "secret,meta.token"},
        hide_fields=("secret", "meta.token"),
        seed=9,
    )
    for follower in followers:
        for doc in follower.seen_docs:
            text = json_util.dumps(doc)
            assert "secret" not in text and "token" not in text, text


def _reset(server):
    request = urllib.request.Request(server.url + "/test/reset", method="POST")
    with urllib.request.urlopen(request, timeout=scaled(5)) as response:
        assert response.status == 200


@pytest.mark.heavy
def test_a_reset_brings_a_fresh_snapshot_and_the_state_stays_exact(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    items = mongo_client[db][coll]
    writer = RandomWriter(items, 10)
    writer.seed()
    server = gunicorn(server_env(mongo.uri, db, coll), app="tests.resetapp:app")
    url = server.ws_url()
    follower = Follower([url], f"{db}.{coll}", filter={"fullDocument.status": "open"})
    follower.start()
    assert follower.got_snapshot.wait(scaled(30)), follower.error
    writer.start()
    try:
        for round_ in range(3):
            writer.wait_writes((round_ + 1) * 200)
            _reset(server)
            # Each reset's snapshot before the next reset: two resets that
            # come during one snapshot are one fresh snapshot, not two.
            wait_for(
                lambda round_=round_: (
                    follower.snapshots >= round_ + 2 or follower.error
                ),
                60,
                "the reset's snapshot",
            )
        writer.wait_writes(writer.writes + 200)
    finally:
        writer.stop()
    _write_the_last_write(items)
    follower.join(scaled(60))
    assert follower.error is None and follower.done.is_set()
    assert follower.regressions == []
    assert follower.snapshots == 4  # the first, then one per reset
    held = dict(follower.docs.documents)
    held.pop(LiveDocuments.key(SENTINEL))
    assert held == _expected(items, {"status": "open"})


@pytest.mark.heavy
def test_ten_reconnects_between_two_proxies_end_exact(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    items = mongo_client[db][coll]
    writer = RandomWriter(items, 11)
    writer.seed()
    env = server_env(mongo.uri, db, coll)
    first, second = gunicorn(env), gunicorn(env)
    urls = [s.ws_url() for s in (first, second)]
    follower = Follower(
        urls, f"{db}.{coll}", writer=writer, filter={"fullDocument.status": "open"}
    )
    follower.reconnects = [(i + 1) * 100 for i in range(10)]
    follower.start()
    assert follower.got_snapshot.wait(scaled(30)), follower.error
    writer.start()
    try:
        writer.wait_writes(1200)
        # Writing on until the follower has made its ten reconnects (the
        # last at 1,000 writes), however far behind the writer it is.
        wait_for(
            lambda: not follower.reconnects or follower.error,
            60,
            "the follower's reconnects",
        )
    finally:
        writer.stop()
    _write_the_last_write(items)
    follower.join(scaled(60))
    assert follower.error is None and follower.done.is_set()
    assert follower.regressions == []
    assert not follower.reconnects and follower.snapshots == 11
    held = dict(follower.docs.documents)
    held.pop(LiveDocuments.key(SENTINEL))
    assert held == _expected(items, {"status": "open"})


# -- the same rules as the stream ---------------------------------------------


@pytest.fixture
def hostapp(mongo, mongo_client, gunicorn):
    db = "hostapp_documents"
    mongo_client.drop_database(db)
    orders = mongo_client[db].orders
    orders.insert_many(
        [
            {
                "_id": 1,
                "status": "open",
                "card": "4111",
                "customer": {"email": "a@example.com", "name": "A"},
                "confidential": False,
            },
            {
                "_id": 2,
                "status": "paid",
                "card": "4222",
                "customer": {"email": "b@example.com", "name": "B"},
                "confidential": True,
            },
        ]
    )
    mongo_client[db].other.insert_one({"_id": 1})
    server = gunicorn(
        server_env(mongo.uri, db, "orders", HOSTAPP_DB=db, WSPROXY_WATCH=db),
        app="tests.hostapp:app",
    )
    return server, db, orders


def _snapshot(url, token, **subscription):
    with WSProxyClient(url, token=token, snapshot=True, **subscription) as feed:
        item = feed.receive(timeout=scaled(10))
        assert isinstance(item, Snapshot), item
        return item


def test_hidden_fields_and_principal_filters_apply_to_snapshots(hostapp):
    server, db, _ = hostapp
    url = server.ws_url()
    shop = _snapshot(url, "token-shop", ns=f"{db}.orders")
    assert [d["_id"] for d in shop.documents] == [1, 2]
    for doc in shop.documents:
        assert "card" not in doc and "email" not in doc["customer"]
        assert doc["customer"]["name"]
    # The operator's filter narrows the snapshot, on a field it hides.
    public = _snapshot(url, "token-public", ns=f"{db}.orders")
    assert [d["_id"] for d in public.documents] == [1]
    assert "confidential" not in public.documents[0]


def test_snapshot_refusals(hostapp):
    server, db, _ = hostapp
    ws = server.ws_url()
    shop = {"additional_headers": {"Authorization": "Bearer token-shop"}}
    admin = {"additional_headers": {"Authorization": "Bearer token-admin"}}
    # Outside the grant.
    status, reason = refused(f"{ws}?snapshot=1&ns={db}.other", **shop)
    assert status == 403 and "not granted" in reason
    # A client filter or sort on a hidden field would reveal it.
    status, reason = refused(
        f"{ws}?snapshot=1&ns={db}.orders&filter=%7B%22fullDocument.card%22:1%7D", **shop
    )
    assert status == 400 and "hidden" in reason
    status, reason = refused(
        f"{ws}?snapshot=1&ns={db}.orders&sort=-fullDocument.customer.email", **shop
    )
    assert status == 400 and "hidden" in reason
    for query, words in [
        ("snapshot=1", "one collection"),
        (f"snapshot=1&ns={db}", "one collection"),
        (f"snapshot=1&ns={db}.orders&limit=10001", "limit"),
        (f"snapshot=1&ns={db}.orders&limit=0", "limit"),
        (f"snapshot=1&ns={db}.orders&ops=insert", "ops"),
        (f"ns={db}.orders&limit=5", "snapshot=1"),
        (
            f"snapshot=1&ns={db}.orders&filter=%7B%22operationType%22:%22insert%22%7D",
            "document path",
        ),
        (f"snapshot=1&ns={db}.orders&sort=a,b,c,d", "document path"),
        (
            f"snapshot=1&ns={db}.orders&sort=fullDocument.a,fullDocument.b,"
            "fullDocument.c,fullDocument.d",
            "more than 3",
        ),
    ]:
        status, reason = refused(f"{ws}?{query}", **admin)
        assert status == 400 and words in reason, (query, reason)
    # A principal who cannot see _id gets no snapshot.
    status, _ = refused(
        f"{ws}?snapshot=1&ns={db}.orders",
        additional_headers={"Authorization": "Bearer token-keyless"},
    )
    assert status == 403


def test_sort_and_limit_bound_the_snapshot(hostapp):
    server, db, orders = hostapp
    orders.insert_many(
        [{"_id": n, "status": "open", "rank": n % 7} for n in range(10, 40)]
    )
    url = server.ws_url()
    snap = _snapshot(
        url,
        "token-admin",
        ns=f"{db}.orders",
        filter={"fullDocument.status": "open"},
        sort="-fullDocument.rank",
        limit=5,
    )
    ranks = [(d["rank"], d["_id"]) for d in snap.documents]
    top = sorted(
        (
            (d["rank"], d["_id"])
            for d in orders.find({"status": "open", "rank": {"$exists": True}})
        ),
        key=lambda r: (-r[0], r[1]),
    )[:5]
    assert ranks == top and snap.complete is False
    whole = _snapshot(url, "token-admin", ns=f"{db}.orders", limit=100)
    assert len(whole.documents) == 32 and whole.complete is True
