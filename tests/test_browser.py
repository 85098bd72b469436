"""The bundled page in a real browser: Debian's Chromium driven by
Playwright, against the real gunicorn process and SecantusDB."""

import json
import os
import pathlib
import re
import urllib.parse

from bson import ObjectId

from .helpers import ROOT, TcpProxy, scaled, server_env

ARTIFACTS = pathlib.Path(
    os.environ.get("WSPROXY_TEST_ARTIFACTS", ROOT / "test-artifacts")
)


def _row(key):
    data_key = json.dumps({"$oid": str(key)}, separators=(",", ":"))
    return f".event-row[data-key='{data_key}']"


def test_page_shows_changes_live_and_after_a_network_cut(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_MAX_AWAIT_MS": "100",
        }
    )
    proxy = TcpProxy(server.port)
    page = browser_page
    try:
        page.goto(proxy.url + "/")
        page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))

        items = mongo_client[db][coll]
        first = ObjectId()
        items.insert_one({"_id": first, "status": "open"})
        page.wait_for_selector(_row(first), timeout=scaled(2000))
        assert page.locator(_row(first)).get_attribute("data-op") == "insert"

        # The network goes away; changes happen meanwhile; it comes back.
        proxy.held = True
        proxy.cut()
        page.wait_for_selector("body[data-state=reconnecting]", timeout=scaled(10000))
        missed = [ObjectId() for _ in range(3)]
        items.insert_many([{"_id": k, "status": "late"} for k in missed])
        items.update_one({"_id": first}, {"$set": {"status": "paid"}})
        proxy.held = False
        for key in missed:
            page.wait_for_selector(_row(key), timeout=scaled(35000))
        page.wait_for_selector(f"{_row(first)}[data-op=update]", timeout=scaled(5000))
        page.wait_for_selector("body[data-state=live]", timeout=scaled(5000))
        # Resumed without loss: no reset, every row exactly once.
        assert page.locator("#reset-banner").is_hidden()
        ids = page.eval_on_selector_all(
            ".event-row", "rows => rows.map(r => r.dataset.id)"
        )
        assert len(ids) == len(set(ids)) == 5
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-live-page.png"), full_page=True)
    finally:
        proxy.close()


def test_page_subscription_controls_become_the_websocket_subscription(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
        }
    )
    page = browser_page
    # A link can preset the view: only deletes in db.coll.
    page.goto(server.url + f"/?ns={db}.{coll}&ops=delete")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    assert f"ns={db}.{coll}" in page.evaluate("wsproxy.feed.url")
    keep, gone = ObjectId(), ObjectId()
    items = mongo_client[db][coll]
    items.insert_many([{"_id": keep}, {"_id": gone}])
    mongo_client[db].other.insert_one({"_id": gone})
    mongo_client[db].other.delete_one({"_id": gone})
    items.delete_one({"_id": gone})
    page.wait_for_selector(f"{_row(gone)}[data-op=delete]", timeout=scaled(2000))
    rows = page.eval_on_selector_all(
        ".event-row", "rows => rows.map(r => [r.dataset.op, r.dataset.ns])"
    )
    # The inserts and the other collection's delete were never sent.
    assert rows == [["delete", f"{db}.{coll}"]]


COUNT_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.wsAttempts = 0;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.wsAttempts++; }
  };
})()"""


def test_page_says_when_the_database_is_away(own_mongo, gunicorn, browser_page):
    server = gunicorn(server_env(own_mongo.uri, "shop", "orders"))
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    own_mongo.kill()
    page.wait_for_selector("body[data-state=waiting]", timeout=scaled(15000))
    assert page.inner_text("#conn-text") == "Waiting for the database"
    assert page.locator("#watcher-banner").is_visible()
    # A page opened now says so at once, not "Live".
    other = page.context.browser.new_page()
    other.goto(server.url + "/")
    other.wait_for_selector("body[data-state=waiting]", timeout=scaled(10000))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    other.screenshot(path=str(ARTIFACTS / "browser-waiting-page.png"))
    own_mongo.start()
    for p in (page, other):
        p.wait_for_selector("body[data-state=live]", timeout=scaled(30000))
        assert p.inner_text("#conn-text") == "Live"
        assert p.locator("#watcher-banner").is_hidden()
    assert not page.script_errors


def test_page_shows_the_servers_refusal_and_stops(
    mongo, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.add_init_script(COUNT_SOCKETS)
    page.goto(server.url + '/?filter={"a":{"$regex":"x"}}')
    page.wait_for_selector("body[data-state=closed]", timeout=scaled(10000))
    error = page.inner_text("#sub-error")
    assert "Refused by the server" in error and "$regex" in error
    assert "400" in page.inner_text("#close-title")
    assert "$regex" in page.inner_text("#close-title")
    assert page.evaluate("Object.keys(wsproxy.feed._timers)") == []
    assert page.evaluate("wsAttempts") == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-refused-page.png"))
    # Fixing the filter and applying it connects.
    page.fill("#f-filter", '{"fullDocument.a": "x"}')
    page.click("#sub-apply")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    assert page.locator("#sub-error").is_hidden()
    assert "filter" in page.url
    assert not page.script_errors


def test_page_changes_its_subscription_without_clearing_or_reconnecting(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.add_init_script(COUNT_SOCKETS)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    items = mongo_client[db][coll]
    first = ObjectId()
    items.insert_one({"_id": first})
    page.wait_for_selector(_row(first), timeout=scaled(5000))
    # Only deletes from now on.
    for op in ("insert", "update", "replace", "other"):
        page.uncheck(f"input[name=op][value={op}]")
    page.click("#sub-apply")
    page.wait_for_selector(".gap-row.sub-row", timeout=scaled(5000))
    assert page.inner_text("#sub-note") == "Applied."
    assert "ops=delete" in page.url
    second = ObjectId()
    items.insert_one({"_id": second})
    items.delete_one({"_id": second})
    page.wait_for_selector(f"{_row(second)}[data-op=delete]", timeout=scaled(5000))
    rows = page.eval_on_selector_all(
        ".event-row", "rows => rows.map(r => r.dataset.op)"
    )
    assert rows == ["delete", "insert"]  # the list was kept
    assert page.evaluate("[wsAttempts, wsproxy.feed.stats.connections]") == [1, 1]
    # A subscription the server refuses leaves the old one in effect.
    page.fill("#f-ns", "elsewhere")
    page.click("#sub-apply")
    page.wait_for_selector("#sub-error:not([hidden])", timeout=scaled(5000))
    assert "outside the watched scope" in page.inner_text("#sub-error")
    assert "previous subscription stays" in page.inner_text("#sub-error")
    assert page.evaluate("wsproxy.feed.subscription.ops") == ["delete"]
    assert page.evaluate("wsproxy.feed.state") == "live"
    assert not page.script_errors


def test_page_counts_deletes_and_shows_leaves_of_a_filtered_feed(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    """A plain feed with a filter on document fields (issue 21): a delete
    of a document it was sent is counted, and a document that stops
    matching shows as a leave ("left the filter"), counted apart."""
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.goto(
        server.url + "/?filter=" + urllib.parse.quote('{"fullDocument.status": "open"}')
    )
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    items = mongo_client[db][coll]
    first, second, never, marker = (ObjectId() for _ in range(4))
    items.insert_one({"_id": first, "status": "open"})
    page.wait_for_selector(f"{_row(first)}[data-op=insert]", timeout=scaled(5000))
    items.update_one({"_id": first}, {"$set": {"status": "closed"}})
    left = f"{_row(first)}[data-op=leave]"
    page.wait_for_selector(left, timeout=scaled(5000))
    assert page.inner_text(f"{left} .c-sum") == "left the filter"
    assert page.inner_text(f"{left} .op-badge") == "leave"
    assert page.inner_text("#count-leave") == "1"
    items.insert_one({"_id": second, "status": "open"})
    items.delete_one({"_id": second})
    page.wait_for_selector(f"{_row(second)}[data-op=delete]", timeout=scaled(5000))
    # A document it was never sent: its delete is not its to see.
    items.insert_one({"_id": never, "status": "closed"})
    items.delete_one({"_id": never})
    items.insert_one({"_id": marker, "status": "open"})
    page.wait_for_selector(_row(marker), timeout=scaled(5000))
    counts = {
        k: page.inner_text(f"#count-{k}")
        for k in ("insert", "update", "delete", "leave", "total")
    }
    assert counts == {
        "insert": "3",
        "update": "0",
        "delete": "1",
        "leave": "1",
        "total": "4",
    }
    assert page.locator(_row(never)).count() == 0
    # Its detail is the leave message itself.
    page.click(left)
    detail = page.inner_text(f"{left} .row-detail")
    assert 'type: "leave"' in detail and 'reason: "filter"' in detail
    assert not page.script_errors


def test_page_passes_a_token_and_keeps_it_out_of_history(
    mongo, namespace, gunicorn, browser_page
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
    page = browser_page
    page.goto(server.url + "/live")
    page.wait_for_selector("body[data-state=closed]", timeout=scaled(10000))
    assert page.inner_text("#conn-text") == "Sign in required"
    assert "Sign in" in page.inner_text("#close-title")
    page.goto(server.url + "/live?token=token-shop")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    assert "token" not in page.url
    assert "token" not in page.evaluate("location.href")
    # A reload of this tab still has it.
    page.reload()
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    # A host page can hand it over instead.
    hooked = page.context.browser.new_page()
    hooked.add_init_script("window.wsproxyToken = () => 'token-admin'")
    hooked.goto(server.url + "/live")
    hooked.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    assert not page.script_errors


def test_page_reload_resumes_where_it_was(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    items = mongo_client[db][coll]
    seen = ObjectId()
    items.insert_one({"_id": seen})
    page.wait_for_selector(_row(seen), timeout=scaled(5000))
    page.evaluate("window.stop()")  # nothing more arrives: leave the page
    page.goto("about:blank")
    missed = [ObjectId() for _ in range(3)]
    items.insert_many([{"_id": k} for k in missed])
    page.goto(server.url + "/")
    for key in missed:
        page.wait_for_selector(_row(key), timeout=scaled(5000))
    assert page.locator(_row(seen)).count() == 0  # not replayed
    assert page.get_attribute("body", "data-resume") == "history"
    assert not page.script_errors


def test_page_has_no_tables_of_its_own():
    from wsproxy.fanout.subscription import OPERATION_TYPES

    static = ROOT / "static"
    app = (static / "app.js").read_text()
    # Close codes and operation types come from wsproxy-client.js.
    assert not re.search(r"\b10\d\d\s*:", app)
    assert not re.search(r"\[\s*'insert'\s*,", app)
    page = (ROOT / "wsproxy" / "templates" / "wsproxy" / "index.html").read_text()
    boxes = re.findall(r'name="op" value="([^"]+)"', page)
    assert set(boxes) - {"other"} <= OPERATION_TYPES
