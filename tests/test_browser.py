"""The bundled page in a real browser: Debian's Chromium driven by
Playwright, against the real gunicorn process and SecantusDB."""

import json
import os
import pathlib

from bson import ObjectId

from .helpers import ROOT, TcpProxy, scaled

ARTIFACTS = pathlib.Path(os.environ.get("WSPROXY_TEST_ARTIFACTS",
                                        ROOT / "test-artifacts"))


def _row(key):
    return f'.event-row[data-key=\'{json.dumps({"$oid": str(key)}, separators=(",", ":"))}\']'


def test_page_shows_changes_live_and_after_a_network_cut(
        mongo, mongo_client, namespace, gunicorn, browser_page):
    db, coll = namespace
    server = gunicorn({"WSPROXY_MONGODB_URI": mongo.uri,
                       "WSPROXY_WATCH": f"{db}.{coll}",
                       "WSPROXY_MAX_AWAIT_MS": "100"})
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
        page.wait_for_selector("body[data-state=reconnecting]",
                               timeout=scaled(10000))
        missed = [ObjectId() for _ in range(3)]
        items.insert_many([{"_id": k, "status": "late"} for k in missed])
        items.update_one({"_id": first}, {"$set": {"status": "paid"}})
        proxy.held = False
        for key in missed:
            page.wait_for_selector(_row(key), timeout=scaled(35000))
        page.wait_for_selector(
            f'{_row(first)}[data-op=update]', timeout=scaled(5000))
        page.wait_for_selector("body[data-state=live]", timeout=scaled(5000))
        # Resumed without loss: no reset, every row exactly once.
        assert page.locator("#reset-banner").is_hidden()
        ids = page.eval_on_selector_all(
            ".event-row", "rows => rows.map(r => r.dataset.id)")
        assert len(ids) == len(set(ids)) == 5
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-live-page.png"),
                        full_page=True)
    finally:
        proxy.close()


def test_page_subscription_controls_become_the_websocket_subscription(
        mongo, mongo_client, namespace, gunicorn, browser_page):
    db, coll = namespace
    server = gunicorn({"WSPROXY_MONGODB_URI": mongo.uri,
                       "WSPROXY_WATCH": db, "WSPROXY_MAX_AWAIT_MS": "100"})
    page = browser_page
    # A link can preset the view: only deletes in db.coll.
    page.goto(server.url + f"/?ns={db}.{coll}&ops=delete")
    page.wait_for_selector("body[data-state=live]", timeout=scaled(10000))
    assert f"ns={db}.{coll}" in page.evaluate("wsproxy.socket.url")
    keep, gone = ObjectId(), ObjectId()
    items = mongo_client[db][coll]
    items.insert_many([{"_id": keep}, {"_id": gone}])
    mongo_client[db].other.insert_one({"_id": gone})
    mongo_client[db].other.delete_one({"_id": gone})
    items.delete_one({"_id": gone})
    page.wait_for_selector(f"{_row(gone)}[data-op=delete]",
                           timeout=scaled(2000))
    rows = page.eval_on_selector_all(
        ".event-row", "rows => rows.map(r => [r.dataset.op, r.dataset.ns])")
    # The inserts and the other collection's delete were never sent.
    assert rows == [["delete", f"{db}.{coll}"]]
