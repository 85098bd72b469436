"""Snapshot subscriptions in the browser: LiveDocuments and the page's
Documents view, in Chromium. First against a scripted fake WebSocket (the
protocol's rules, message by message, with no server), then end to end
against the real gunicorn and SecantusDB."""

import json
import os
import pathlib
from urllib.parse import urlsplit

from bson import ObjectId

from .helpers import TcpProxy, scaled, server_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = pathlib.Path(
    os.environ.get("WSPROXY_TEST_ARTIFACTS", ROOT / "test-artifacts")
)
STATIC = ROOT / "static"
TEMPLATE = ROOT / "wsproxy" / "templates" / "wsproxy" / "index.html"
MODULE = "/wsproxy-static/wsproxy-client.js"
SITE = "http://wsproxy.test"

# Replaces WebSocket: every socket opens at once and is kept in
# window.sockets; a test feeds it server messages with deliver(...) and
# reads what the client sent in .sent.
FAKE_SOCKETS = """(() => {
  window.sockets = [];
  class FakeSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      window.sockets.push(this);
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        if (this.onopen) this.onopen({});
      }, 0);
    }
    send(text) { this.sent.push(text); }
    close() { this.readyState = 3; }
    deliver(...messages) {
      for (const m of messages) this.onmessage({ data: JSON.stringify(m) });
    }
    lose(code) {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason: '' });
    }
  }
  window.WebSocket = FakeSocket;
})()"""


def serve_site(page):
    """The page (at /) and its assets at http://wsproxy.test/, with no
    server; any other path is an empty page."""

    def handle(route):
        path = urlsplit(route.request.url).path
        if path.startswith("/wsproxy-static/"):
            name = path.rsplit("/", 1)[1]
            kind = "text/css" if name.endswith(".css") else "text/javascript"
            route.fulfill(body=(STATIC / name).read_bytes(), content_type=kind)
        elif path == "/":
            html = (
                TEMPLATE.read_text()
                .replace("{{ ws_path }}", "/ws")
                .replace("{{ static_base }}", "/wsproxy-static/")
            )
            route.fulfill(body=html, content_type="text/html")
        else:
            route.fulfill(
                body="<!doctype html><title>t</title>", content_type="text/html"
            )

    page.route(f"{SITE}/**", handle)


def wait_js(page, expression, arg=None, timeout=5.0):
    page.wait_for_function(expression, arg=arg, timeout=scaled(timeout) * 1000)


def oid(n):
    return {"$oid": f"{n:024x}"}


def key(n):
    return json.dumps(oid(n), separators=(",", ":"))


def doc(i, **fields):
    return {"_id": oid(i), **fields}


def change(op, n, full=None, **extra):
    event = {
        "operationType": op,
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": oid(n)},
        **extra,
    }
    if op in ("insert", "update", "replace"):
        event["fullDocument"] = full
    return {"type": "change", "id": f"id-{op}-{n}", "event": event}


HELLO = {
    "type": "hello",
    "worker": 1,
    "watch": "shop.orders",
    "resume": "snapshot",
    "watcher": "connected",
}


# ------------------------------------------------------- the library's rules

START_LIVE = """async ([module, options]) => {
  const m = await import(module);
  window.feed = new m.WsproxyClient(options);
  window.live = new m.LiveDocuments(feed);
  window.log = [];
  for (const t of ['loading', 'snapshot', 'upsert', 'remove']) {
    live.on(t, (d) => log.push([t, t === 'snapshot' ? d.documents.size : d.key ?? null,
                                d.reason ?? null, d.detail ?? null]));
  }
  feed.connect();
}"""


def held(page):
    """The documents LiveDocuments holds, in order: [[key, doc], ...]."""
    return page.evaluate("[...live.documents.entries()]")


def deliver(page, *messages, socket=-1):
    page.evaluate("([i, ms]) => sockets.at(i).deliver(...ms)", [socket, list(messages)])


def test_live_documents_follow_the_protocols_rules(browser_page):
    page = browser_page
    page.add_init_script(FAKE_SOCKETS)
    serve_site(page)
    page.goto(f"{SITE}/healthz")
    page.evaluate(
        START_LIVE,
        [
            MODULE,
            {
                "snapshot": True,
                "ns": "shop.orders",
                "filter": {"fullDocument.n": {"$gte": 0}},
                "sort": "-fullDocument.n",
                "limit": 50,
                "resumeAfter": "old-id",
                "pingIntervalMs": 0,
            },
        ],
    )
    wait_js(page, "sockets.length === 1 && feed._openedAt > 0")
    url = page.evaluate("sockets[0].url")
    assert "snapshot=1" in url and "limit=50" in url
    assert "sort=-fullDocument.n" in url and "ns=shop.orders" in url
    # A snapshot starts afresh: no position is sent.
    assert "resume_after" not in url

    deliver(
        page,
        HELLO,
        {"type": "snapshot", "docs": [doc(3, n=3), doc(2, n=2)]},
        {"type": "snapshot", "docs": [doc(1, n=1)]},
    )
    # Nothing is held until the snapshot ends.
    assert held(page) == [] and page.evaluate("live.loading") is True
    deliver(page, {"type": "snapshot_end", "id": "s1", "count": 3, "complete": True})
    assert [k for k, _ in held(page)] == [key(3), key(2), key(1)]
    assert page.evaluate(
        "([id]) => [live.loading, live.complete, live.get(id).n]", [oid(2)]
    ) == [False, True, 2]

    deliver(
        page,
        change("update", 2, doc(2, n=20)),  # whole document replaces
        change("update", 3, None),  # deleted since: removed
        change("insert", 4, doc(4, n=4)),
        change("delete", 1),
        {"type": "leave", "id": "l4", "documentKey": {"_id": oid(4)}},
        change("delete", 99),  # not held: nothing happens
        {"type": "status", "watcher": "connected", "detail": ""},
        {"type": "pong"},
    )
    assert held(page) == [[key(2), doc(2, n=20)]]
    assert page.evaluate("log") == [
        ["loading", None, None, None],
        ["snapshot", 3, "snapshot", None],
        ["upsert", key(2), None, "update"],
        ["remove", key(3), "delete", "update"],
        ["upsert", key(4), None, "insert"],
        ["remove", key(1), "delete", "delete"],
        ["remove", key(4), "leave", "filter"],
    ]
    page.evaluate("log.length = 0")

    # A reset keeps the old documents until the fresh snapshot ends.
    deliver(
        page,
        {"type": "reset", "lost": True, "reason": "x"},
        {"type": "snapshot", "docs": [doc(5, n=5)]},
    )
    assert [k for k, _ in held(page)] == [key(2)]
    deliver(page, {"type": "snapshot_end", "id": None, "count": 1, "complete": False})
    assert held(page) == [[key(5), doc(5, n=5)]]
    assert page.evaluate("live.complete") is False

    deliver(page, change("replace", 5, doc(5, n=6)))
    assert page.evaluate("live.size") == 1
    for op in ("drop", "rename", "dropDatabase", "invalidate"):
        deliver(page, change("insert", 7, doc(7)))
        deliver(
            page, {"type": "change", "id": f"c-{op}", "event": {"operationType": op}}
        )
        assert held(page) == [], op
    assert page.evaluate(
        "log.filter(([t]) => t === 'snapshot').map((e) => e.slice(2))"
    ) == [
        ["snapshot", None],
        ["clear", "drop"],
        ["clear", "rename"],
        ["clear", "dropDatabase"],
        ["clear", "invalidate"],
    ]
    assert not page.script_errors


def test_a_reconnect_takes_a_fresh_snapshot_and_keeps_the_old_meanwhile(browser_page):
    page = browser_page
    page.add_init_script(FAKE_SOCKETS)
    serve_site(page)
    page.goto(f"{SITE}/healthz")
    page.evaluate(
        START_LIVE,
        [MODULE, {"snapshot": True, "ns": "shop.orders", "pingIntervalMs": 0}],
    )
    wait_js(page, "sockets.length === 1 && feed._openedAt > 0")
    deliver(
        page,
        HELLO,
        {"type": "snapshot", "docs": [doc(1), doc(2)]},
        {"type": "snapshot_end", "id": "s1", "count": 2, "complete": True},
        change("insert", 3, doc(3)),
    )
    assert page.evaluate("[live.size, feed.lastId]") == [3, "id-insert-3"]
    # The server restarts (1001: reconnect at once).
    page.evaluate("sockets[0].lose(1001)")
    wait_js(page, "sockets.length === 2 && feed._openedAt > 0")
    assert "resume_after" not in page.evaluate("sockets[1].url")
    deliver(page, HELLO)
    assert page.evaluate("[live.loading, live.size]") == [True, 3]
    # No snapshot message at all: nothing matches any more.
    deliver(page, {"type": "snapshot_end", "id": "s2", "count": 0, "complete": True})
    assert page.evaluate("[live.loading, live.size]") == [False, 0]

    # Another collection: a new connection (a snapshot is only taken when
    # one opens), not a subscribe message.
    page.evaluate(
        "void (window.switched = feed.subscribe({snapshot: true, ns: 'shop.other'}))"
    )
    wait_js(page, "sockets.length === 3 && feed._openedAt > 0")
    assert page.evaluate("sockets[1].sent") == []
    assert "ns=shop.other" in page.evaluate("sockets[2].url")
    deliver(page, dict(HELLO, watch="shop"))
    assert page.evaluate("switched.then((s) => [s.ns, s.snapshot])") == [
        ["shop.other"],
        True,
    ]
    # A plain subscription keeps its three fields.
    assert page.evaluate(
        """(module) => import(module).then((m) => [
      m.normalizeSubscription({ns: 'a.b'}),
      m.normalizeSubscription({snapshot: 1, ns: 'a.b', sort: 'x, -y', limit: '5'})
    ])""",
        MODULE,
    ) == [
        {"ns": ["a.b"], "ops": None, "filter": None},
        {
            "ns": ["a.b"],
            "ops": None,
            "filter": None,
            "snapshot": True,
            "sort": ["x", "-y"],
            "limit": 5,
        },
    ]
    assert not page.script_errors


# ------------------------------------------------- the page, fake sockets


def _row(k):
    return f"#docs-rows tr[data-key='{k}']"


def _cell(k, field):
    return f"{_row(k)} td[data-field='{field}']"


def test_the_documents_view_draws_the_state_in_place(browser_page):
    page = browser_page
    page.add_init_script(FAKE_SOCKETS)
    serve_site(page)
    page.goto(f"{SITE}/")
    wait_js(page, "sockets.length === 1")
    deliver(page, HELLO, socket=0)
    page.wait_for_selector("body[data-state=live]", timeout=scaled(5000))
    assert page.locator("#documents").get_attribute("data-state") == "off"
    page.click("#documents > summary")
    # The server watches one collection: it is the default.
    assert page.input_value("#d-ns") == "shop.orders"
    page.fill("#d-ns", "nodot")
    page.click("#docs-show")
    assert "db.coll" in page.inner_text("#docs-error")
    page.fill("#d-ns", "shop.orders")
    page.fill("#d-filter", '{"fullDocument.n": {"$gte": 0}}')
    page.click("#docs-show")
    wait_js(page, "sockets.length === 2")
    assert "snapshot=1" in page.evaluate("sockets[1].url")
    assert "docs=shop.orders" in page.url and "docs_filter=" in page.url

    wide = doc(3, n=3, **{f"f{i}": i for i in range(14)})
    hostile = doc(2, n=2, name="<img src=x onerror=window.pwned=1>")
    first = doc(1, n=1, status="open")
    deliver(page, HELLO, {"type": "snapshot", "docs": [first, hostile]})
    page.wait_for_selector("#documents[data-state=loading]", timeout=scaled(2000))
    deliver(
        page,
        {"type": "snapshot", "docs": [wide]},
        {"type": "snapshot_end", "id": "s", "count": 3, "complete": True},
    )
    page.wait_for_selector("#documents[data-state=live]", timeout=scaled(2000))
    assert page.inner_text("#documents-count") == "3"
    keys = page.eval_on_selector_all(
        "#docs-rows tr", "rs => rs.map((r) => r.dataset.key)"
    )
    assert keys == [key(1), key(2), key(3)]
    heads = page.eval_on_selector_all(
        "#docs-head th", "hs => hs.map((h) => h.textContent)"
    )
    assert heads == ["_id", "n", "status", "name", *[f"f{i}" for i in range(8)]]
    assert "first 12 fields" in page.inner_text("#docs-foot")
    # Values are text: the hostile one shows as typed, nothing runs.
    assert page.inner_text(_cell(key(2), "name")) == json.dumps(hostile["name"])
    assert page.locator("#docs-rows img").count() == 0
    assert page.inner_text(_cell(key(1), "_id")) == f'ObjectId("{1:024x}")'

    # A changed field: its cell alone changes and flashes.
    deliver(page, change("update", 1, doc(1, n=10, status="open")))
    page.wait_for_selector(f"{_cell(key(1), 'n')}.flash", timeout=scaled(2000))
    assert page.inner_text(_cell(key(1), "n")) == "10"
    assert "flash" not in (page.get_attribute(_cell(key(1), "status"), "class") or "")
    deliver(page, change("insert", 4, doc(4, n=4, extra=True)))
    page.wait_for_selector(f"{_row(key(4))}.row-new", timeout=scaled(2000))
    assert page.inner_text("#documents-count") == "4"
    deliver(page, {"type": "leave", "id": "l", "documentKey": {"_id": oid(2)}})
    page.wait_for_selector(_row(key(2)), state="detached", timeout=scaled(2000))
    assert page.inner_text("#documents-count") == "3"

    # A reset: the old rows stay until the fresh snapshot ends; more
    # documents than the view shows are held, and fill rows that free up.
    deliver(page, {"type": "reset", "lost": True, "reason": "x"})
    page.wait_for_selector("#documents[data-state=loading]", timeout=scaled(2000))
    assert page.locator("#docs-rows tr").count() == 3
    many = [doc(i, n=i) for i in range(100, 1105)]
    deliver(
        page,
        {"type": "snapshot", "docs": many[:600]},
        {"type": "snapshot", "docs": many[600:]},
        {"type": "snapshot_end", "id": "s", "count": 1005, "complete": False},
    )
    page.wait_for_selector("#documents[data-state=live]", timeout=scaled(2000))
    assert page.locator("#docs-rows tr").count() == 1000
    assert page.inner_text("#documents-count") == "1,005"
    foot = page.inner_text("#docs-foot")
    assert "Showing 1,000 of 1,005" in foot and "limit" in foot
    deliver(page, change("delete", 100))
    page.wait_for_selector(_row(key(1100)), timeout=scaled(2000))
    assert page.locator("#docs-rows tr").count() == 1000
    assert page.inner_text("#documents-count") == "1,004"

    deliver(page, {"type": "change", "id": "d", "event": {"operationType": "drop"}})
    page.wait_for_selector("#docs-rows tr", state="detached", timeout=scaled(2000))
    assert page.inner_text("#documents-count") == "0"
    assert "drop" in page.inner_text("#docs-foot")

    page.click("#docs-stop")
    page.wait_for_selector("#documents[data-state=off]", timeout=scaled(2000))
    assert page.evaluate("sockets[1].readyState") == 3
    assert "docs=" not in page.url
    assert page.evaluate("window.pwned") is None
    assert not page.script_errors


def test_a_link_opens_the_documents_view(browser_page):
    page = browser_page
    page.add_init_script(FAKE_SOCKETS)
    serve_site(page)
    linked = json.dumps({"fullDocument.n": 1})
    page.goto(f"{SITE}/?docs=shop.orders&docs_filter={linked}")
    wait_js(page, "sockets.length === 2")
    assert page.evaluate("document.getElementById('documents').open") is True
    url = page.evaluate("sockets[1].url")
    assert "snapshot=1" in url and "fullDocument.n" in url
    # The main feed's hello does not overwrite the linked collection.
    deliver(page, dict(HELLO, watch="shop.other"), socket=0)
    deliver(
        page,
        HELLO,
        {"type": "snapshot_end", "id": None, "count": 0, "complete": True},
        socket=1,
    )
    page.wait_for_selector("#documents[data-state=live]", timeout=scaled(2000))
    assert page.input_value("#d-ns") == "shop.orders"
    assert page.inner_text("#documents-count") == "0"
    assert "No document matches" in page.inner_text("#docs-foot")
    assert not page.script_errors


# --------------------------------------------- the page, against the server


def _key(_id):
    return json.dumps({"$oid": str(_id)}, separators=(",", ":"))


def open_documents(page, ns, filter_text=""):
    page.click("#documents > summary")
    page.fill("#d-ns", ns)
    page.fill("#d-filter", filter_text)
    page.click("#docs-show")
    page.wait_for_selector("#documents[data-state=live]", timeout=scaled(10000))


def test_documents_view_follows_the_collection_live(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    proxy = TcpProxy(server.port)
    page = browser_page
    items = mongo_client[db][coll]
    present = [ObjectId() for _ in range(3)]
    items.insert_many(
        [{"_id": k, "status": "open", "total": n} for n, k in enumerate(present)]
    )
    try:
        page.goto(proxy.url + "/")
        page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
        # The server watches one collection: the view offers it.
        assert page.input_value("#d-ns") == f"{db}.{coll}"
        open_documents(page, f"{db}.{coll}")
        assert page.inner_text("#documents-count") == "3"
        keys = page.eval_on_selector_all(
            "#docs-rows tr", "rs => rs.map((r) => r.dataset.key)"
        )
        assert keys == [_key(k) for k in present]
        assert page.inner_text(_cell(_key(present[1]), "total")) == "1"

        added = ObjectId()
        items.insert_one({"_id": added, "status": "new", "total": 9})
        page.wait_for_selector(_row(_key(added)), timeout=scaled(5000))
        page.wait_for_function(
            "document.getElementById('documents-count').textContent === '4'",
            timeout=scaled(5000),
        )

        items.update_one({"_id": present[0]}, {"$set": {"status": "paid"}})
        changed = _cell(_key(present[0]), "status")
        page.wait_for_selector(f"{changed}.flash", timeout=scaled(5000))
        assert page.inner_text(changed) == '"paid"'
        untouched = _cell(_key(present[0]), "total")
        assert "flash" not in (page.get_attribute(untouched, "class") or "")

        items.delete_one({"_id": present[2]})
        page.wait_for_selector(
            _row(_key(present[2])), state="detached", timeout=scaled(5000)
        )
        assert page.inner_text("#documents-count") == "3"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-documents.png"), full_page=True)

        # The network goes away, the collection changes meanwhile; back,
        # the view takes a fresh snapshot and shows what is there now.
        proxy.held = True
        proxy.cut()
        page.wait_for_selector(
            "#documents[data-state=reconnecting]", timeout=scaled(10000)
        )
        assert page.locator("#docs-rows tr").count() == 3  # kept meanwhile
        late = ObjectId()
        items.insert_one({"_id": late, "status": "late"})
        items.delete_one({"_id": added})
        proxy.held = False
        page.wait_for_selector(_row(_key(late)), timeout=scaled(35000))
        page.wait_for_selector("#documents[data-state=live]", timeout=scaled(5000))
        keys = page.eval_on_selector_all(
            "#docs-rows tr", "rs => rs.map((r) => r.dataset.key)"
        )
        assert sorted(keys) == sorted(_key(k) for k in (*present[:2], late))
        assert page.inner_text("#documents-count") == "3"
        assert not page.script_errors
    finally:
        proxy.close()


def test_documents_view_drops_a_document_that_stops_matching(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    items = mongo_client[db][coll]
    first, second, closed = ObjectId(), ObjectId(), ObjectId()
    items.insert_many(
        [
            {"_id": first, "status": "open"},
            {"_id": second, "status": "open"},
            {"_id": closed, "status": "closed"},
        ]
    )
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    open_documents(page, f"{db}.{coll}", '{"fullDocument.status": "open"}')
    assert page.inner_text("#documents-count") == "2"
    assert page.locator(_row(_key(closed))).count() == 0
    # (void: evaluate would call the unsubscribe function on() returns)
    page.evaluate("""window.leaves = [];
      void wsproxy.documentsFeed.on('leave', (d) => leaves.push(d.documentKey._id))""")

    items.update_one({"_id": first}, {"$set": {"status": "closed"}})
    page.wait_for_selector(_row(_key(first)), state="detached", timeout=scaled(5000))
    assert page.evaluate("leaves") == [{"$oid": str(first)}]
    assert page.inner_text("#documents-count") == "1"
    # One that starts matching enters.
    items.update_one({"_id": closed}, {"$set": {"status": "open"}})
    page.wait_for_selector(_row(_key(closed)), timeout=scaled(5000))
    assert page.inner_text("#documents-count") == "2"
    assert "docs_filter=" in page.url
    assert not page.script_errors
