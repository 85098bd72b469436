"""The browser module (static/wsproxy-client.js) in Chromium,
against the real gunicorn and SecantusDB; and its tables, checked against
the server's, so the two cannot drift."""

import pathlib
import threading

import pymongo

from wsproxy.client import CLOSE_POLICY, REFUSAL_ACTION
from wsproxy.fanout.subscription import OPERATION_TYPES
from wsproxy.protocol import CloseCode, MessageType, WatcherState

from .helpers import TcpProxy, scaled, server_env, wait_for

STATIC = pathlib.Path(__file__).resolve().parent.parent / "static"
MODULE = "/wsproxy-static/wsproxy-client.js"
EVENTS = [
    "state",
    "refused",
    "reset",
    "status",
    "hello",
    "close",
    "subscribed",
    "subscriptionerror",
]

# Counts the WebSocket connections a page opens.
COUNT_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.wsAttempts = 0;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.wsAttempts++; }
  };
})()"""


def serve_static(page):
    """Serve wsproxy/static at http://wsproxy.test/wsproxy-static/, with
    no server (for what needs no connection)."""

    def handle(route):
        name = route.request.url.rsplit("/", 1)[1]
        if route.request.url.endswith("/"):
            route.fulfill(
                body="<!doctype html><title>t</title>", content_type="text/html"
            )
        else:
            route.fulfill(
                body=(STATIC / name).read_bytes(), content_type="text/javascript"
            )

    page.route("http://wsproxy.test/**", handle)
    page.goto("http://wsproxy.test/")


def start_feed(page, **options):
    """A WsproxyClient in the page as ``window.feed``; its changes in
    ``window.got``, its other events in ``window.seen``."""
    page.evaluate(
        """async ([module, options, events]) => {
      const m = await import(module);
      const feed = new m.WsproxyClient(options);
      window.feed = feed;
      window.got = [];
      window.seen = [];
      feed.on('change', (d) => got.push(d));
      for (const t of events) feed.on(t, (d) => seen.push([t, d]));
      feed.connect();
    }""",
        [MODULE, options, EVENTS],
    )


def wait_js(page, expression, timeout=10.0):
    page.wait_for_function(expression, timeout=scaled(timeout) * 1000)


def numbers(page):
    return page.evaluate("got.map((d) => d.event.fullDocument.n)")


# ------------------------------------------------------------ consistency


def test_the_modules_tables_are_the_servers(browser_page):
    page = browser_page
    serve_static(page)
    tables = page.evaluate(
        """async (module) => {
      const m = await import(module);
      return {close: m.CLOSE_CODES, ops: m.OPERATION_TYPES,
              messages: m.MESSAGE_TYPES, watcher: m.WATCHER_STATES,
              refusals: m.REFUSALS};
    }""",
        MODULE,
    )
    sent = {
        int(code): entry["name"]
        for code, entry in tables["close"].items()
        if not entry["local"]
    }
    assert sent == {int(code): code.name for code in CloseCode}
    for code, entry in tables["close"].items():
        assert entry["policy"] in ("resume", "retry", "busy", "stop"), code
    # Codes only a browser reports are not the server's.
    local = {int(c) for c, e in tables["close"].items() if e["local"]}
    assert local == {1005, 1015}
    assert set(tables["ops"]) == OPERATION_TYPES
    assert len(tables["ops"]) == len(OPERATION_TYPES)
    assert tables["messages"] == [t.value for t in MessageType]
    assert tables["watcher"] == [s.value for s in WatcherState]
    # The Python client follows the same policies.
    assert {int(c): e["policy"] for c, e in tables["close"].items()} == {
        int(c): p for c, p in CLOSE_POLICY.items()
    }
    assert {int(s): r["action"] for s, r in tables["refusals"].items()} == {
        int(s): a for s, a in REFUSAL_ACTION.items()
    }
    assert not page.script_errors


def test_subscriptions_are_normalised_one_way(browser_page):
    page = browser_page
    serve_static(page)
    out = page.evaluate(
        """async (module) => {
      const m = await import(module);
      const n = m.normalizeSubscription;
      return [n({}), n({ns: 'a.b, c', ops: ['insert'], filter: {x: 1}}),
              n({ns: [], filter: '  '}), m.closeInfo(4999).policy,
              m.refusalInfo(401).action, m.refusalInfo(418).action];
    }""",
        MODULE,
    )
    assert out[0] == {"ns": None, "ops": None, "filter": None}
    assert out[1] == {"ns": ["a.b", "c"], "ops": ["insert"], "filter": '{"x":1}'}
    assert out[2] == {"ns": [], "ops": None, "filter": None}
    assert out[3:] == ["retry", "signin", "retry"]


# ----------------------------------------------------- against the server


def test_across_cut_connections_it_resumes_without_gap_or_duplicate(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    proxy = TcpProxy(server.port)
    page = browser_page
    page.add_init_script(COUNT_SOCKETS)
    total = 400
    try:
        page.goto(proxy.url + "/healthz")
        start_feed(page, backoffInitialMs=50, backoffMaxMs=500)
        wait_js(page, "feed.state === 'live'")
        items = mongo_client[db][coll]
        done = threading.Event()

        def write():
            for n in range(total):
                items.insert_one({"n": n})
            done.set()

        writer = threading.Thread(target=write, name="test-writer")
        writer.start()
        try:
            for cut in range(4):
                # Wait for progress, then cut; the network stays away while
                # changes happen (every other time), then comes back.
                before = page.evaluate("got.length")
                wait_for(
                    lambda before=before: (
                        page.evaluate("got.length") > before or done.is_set()
                    ),
                    20,
                    "progress",
                )
                proxy.held = cut % 2 == 0
                proxy.cut()
                wait_js(page, "feed.state !== 'live'")
                proxy.held = False
                wait_js(page, "feed.state === 'live'", 20)
        finally:
            writer.join()
        wait_for(lambda: page.evaluate("got.length") >= total, 30, "every change")
        assert numbers(page) == list(range(total))
        ids = page.evaluate("got.map((d) => d.id)")
        assert len(set(ids)) == total
        assert page.evaluate("feed.stats.connections") >= 5
        assert page.evaluate("feed.stats.resets") == 0
        assert page.evaluate("wsAttempts") >= 5
        assert not page.script_errors
    finally:
        proxy.close()


def test_a_refused_subscription_reports_the_reason_and_stops(
    mongo, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.add_init_script(COUNT_SOCKETS)
    page.goto(server.url + "/healthz")
    for sub, status, reason in [
        ({"filter": {"a": {"$regex": "x"}}}, 400, "$regex"),
        ({"ns": ["elsewhere"]}, 400, "outside the watched scope"),
    ]:
        start_feed(page, **sub)
        wait_js(page, "feed.state === 'stopped'")
        refusal = page.evaluate("feed.refusal")
        assert refusal["status"] == status and reason in refusal["reason"]
        assert refusal["action"] == "stop"
        assert page.evaluate(
            "seen.filter(([t]) => t === 'refused').map(([, d]) => d.retrying)"
        ) == [False]
        # Nothing scheduled: it will not try again by itself.
        assert page.evaluate("Object.keys(feed._timers)") == []
        assert page.evaluate("wsAttempts") == 1
        page.evaluate("window.wsAttempts = 0")
    # Fixing the subscription connects again.
    page.evaluate(f"feed.subscribe({{ns: ['{db}.{coll}']}})")
    wait_js(page, "feed.state === 'live'")
    assert not page.script_errors


def test_a_token_reaches_the_authorizer(mongo, namespace, gunicorn, browser_page):
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
    page.add_init_script(COUNT_SOCKETS)
    page.goto(server.url + "/healthz")
    # No credential: the server says so, and the client says "sign in".
    start_feed(page)
    wait_js(page, "feed.state === 'stopped'")
    assert page.evaluate("feed.refusal") == {
        "status": 401,
        "label": "sign in required",
        "action": "signin",
        "reason": "authentication required",
    }
    # A wrong token is refused for good.
    start_feed(page, token="nope")
    wait_js(page, "feed.state === 'stopped'")
    assert page.evaluate("[feed.refusal.status, feed.refusal.reason]") == [
        403,
        "unknown token",
    ]
    # A namespace outside the grant, likewise.
    start_feed(page, token="token-shop", ns=[f"{db}.secrets"])
    wait_js(page, "feed.state === 'stopped'")
    assert page.evaluate("feed.refusal.reason") == f"ns: {db}.secrets is not granted"
    page.evaluate("window.wsAttempts = 0")
    # The shop's token: its grant (db.orders only) applies.
    start_feed(page, token="token-shop")
    wait_js(page, "feed.state === 'live'")
    writer = pymongo.MongoClient(mongo.uri)
    writer[db].secrets.insert_one({"n": -1})
    writer[db].orders.insert_one({"n": 0, "card": "4242"})
    wait_js(page, "got.length === 1")
    event = page.evaluate("got[0].event")
    assert event["ns"]["coll"] == "orders" and "card" not in event["fullDocument"]
    assert page.evaluate("wsAttempts") == 1
    # A token from a function (e.g. refreshed by the host page) works too.
    page.evaluate(
        """async (module) => {
      const m = await import(module);
      window.feed2 = new m.WsproxyClient({token: async () => 'token-admin'});
      feed2.connect();
    }""",
        MODULE,
    )
    wait_js(page, "feed2.state === 'live'")
    writer.close()
    assert not page.script_errors


def test_subscribe_narrows_the_feed_without_reconnecting(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.add_init_script(COUNT_SOCKETS)
    page.goto(server.url + "/healthz")
    start_feed(page)
    wait_js(page, "feed.state === 'live'")
    items = mongo_client[db][coll]
    items.insert_one({"_id": 1, "n": 0})
    items.delete_one({"_id": 1})
    wait_js(page, "got.length === 2")
    assert page.evaluate("feed.subscribe({ops: ['delete']}).then((s) => s.ops)") == [
        "delete"
    ]
    # A refused one: the promise says why, the connection stays.
    error = page.evaluate("""feed.subscribe({filter: {a: {$where: 'x'}}})
      .then(() => null, (e) => [e.name, e.reason])""")
    assert error[0] == "RefusedError" and "$where" in error[1]
    items.insert_one({"_id": 2, "n": 1})
    items.delete_one({"_id": 2})
    wait_js(page, "got.length === 3")
    assert page.evaluate("got.map((d) => d.event.operationType)") == [
        "insert",
        "delete",
        "delete",
    ]
    assert page.evaluate("feed.subscription.ops") == ["delete"]
    assert page.evaluate("[wsAttempts, feed.stats.connections]") == [1, 1]
    # A reconnect keeps the new subscription (it is in the URL now).
    assert "ops=delete" in page.evaluate("feed.url")
    assert not page.script_errors


def test_the_state_follows_the_database(own_mongo, gunicorn, browser_page):
    server = gunicorn(server_env(own_mongo.uri, "shop", "orders"))
    page = browser_page
    page.goto(server.url + "/healthz")
    start_feed(page)
    wait_js(page, "feed.state === 'live' && feed.watcher === 'connected'")
    own_mongo.kill()
    wait_js(page, "feed.state === 'waiting'", 15)
    assert page.evaluate("feed.watcher") == "reconnecting"
    # A page that connects now is told at once.
    page.evaluate(
        """async (module) => {
      const m = await import(module);
      window.late = new m.WsproxyClient({});
      late.connect();
    }""",
        MODULE,
    )
    wait_js(page, "late.state === 'waiting'")
    own_mongo.start()
    wait_js(page, "feed.state === 'live' && late.state === 'live'", 30)
    writer = pymongo.MongoClient(own_mongo.uri)
    writer.shop.orders.insert_one({"n": 0})
    wait_js(page, "got.length === 1")
    writer.close()
    states = page.evaluate(
        "seen.filter(([t]) => t === 'state').map(([, d]) => d.state)"
    )
    assert states == ["connecting", "live", "waiting", "live"]
    assert not page.script_errors


def test_the_resume_position_survives_a_reload_when_asked(
    mongo, mongo_client, namespace, gunicorn, browser_page
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    page = browser_page
    page.goto(server.url + "/healthz")
    start_feed(page, persist=True)
    wait_js(page, "feed.state === 'live'")
    items = mongo_client[db][coll]
    items.insert_many([{"n": n} for n in range(3)])
    wait_js(page, "got.length === 3")
    page.reload()
    items.insert_many([{"n": n} for n in range(3, 5)])  # while away
    start_feed(page, persist=True)
    wait_js(page, "got.length === 2")
    assert numbers(page) == [3, 4]
    assert page.evaluate("feed.hello.resume") == "history"
    # Without persist, a reload starts live.
    page.evaluate("feed.close()")
    page.reload()
    start_feed(page)
    wait_js(page, "feed.state === 'live'")
    assert page.evaluate("feed.hello.resume") == "none"
    assert not page.script_errors
