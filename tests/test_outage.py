"""A database outage, as every observer sees it, with the settings a user
gets by default: a URI that sets no option (no serverSelectionTimeoutMS)
and the default backoff and WSPROXY_MAX_AWAIT_MS.

Targets (issue "The edges", 1): a plain WebSocket client, the Python
client, /readyz and the bundled page say the watcher is reconnecting
within 3 s of the database going away, and connected within 2 s of its
return, however long it was away; /readyz never contradicts itself; the
log has one INFO line per transition; and a worker stopped meanwhile does
not wait on PyMongo.
"""

import re
import threading
import time

import pymongo
import pytest

from wsproxy.client import Status, WSProxyClient

from .helpers import TcpProxy, WSClient, metric, scaled, scrape, wait_for

LOST_WITHIN = 3.0  # seconds from the database going away
BACK_WITHIN = 2.0  # seconds from the database answering again
LOST_LINE = "watcher: the change stream is lost"
BACK_LINE = re.compile(r"watcher: the change stream is back after ([0-9.]+)s")


def _defaults_env(uri):
    # Nothing but where to connect and what to watch: no URI option, no
    # backoff or max-await setting (the tests' server_env shortens both).
    return {"WSPROXY_MONGODB_URI": uri, "WSPROXY_WATCH": "shop.orders"}


class _Recorder:
    """A background thread that notes when each observer saw what."""

    def __init__(self, target):
        self.seen = []  # (monotonic time, what)
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=target, args=(self,), name="test-outage-recorder"
        )
        self._thread.start()

    def note(self, what):
        self.seen.append((time.monotonic(), what))

    @property
    def done(self):
        return self._done.is_set()

    def first(self, predicate, after):
        return next(
            (t for t, what in self.seen if t >= after and predicate(what)), None
        )

    def stop(self):
        self._done.set()
        self._thread.join(scaled(10))
        assert not self._thread.is_alive()


def _ws_statuses(url):
    client = WSClient(url)
    assert client.recv()["watcher"] == "connected"

    def run(recorder):
        try:
            while not recorder.done:
                try:
                    message = client.recv(0.2)
                except AssertionError:
                    continue  # nothing within 0.2 s
                if message["type"] == "status":
                    recorder.note(message["watcher"])
        finally:
            client.close()

    return _Recorder(run)


def _python_client_statuses(url):
    client = WSProxyClient(url, statuses=True)

    def run(recorder):
        try:
            while not recorder.done:
                item = client.receive(timeout=0.2)
                if isinstance(item, Status):
                    recorder.note(item.watcher)
                elif item is None and client.hello is not None:
                    recorder.note(("hello", client.watcher))
        finally:
            client.close()

    recorder = _Recorder(run)
    wait_for(lambda: recorder.seen, 10, "the Python client's hello")
    return recorder


def _readyz(server):
    def run(recorder):
        while not recorder.done:
            status, body = server.readyz()
            recorder.note(
                (status, body["watcher"], body.get("reason"), body["last_error"])
            )
            recorder._done.wait(0.05)

    return _Recorder(run)


def _page_state(page, watcher, since, timeout):
    """Seconds from ``since`` until the page shows ``watcher``."""
    state = "live" if watcher == "connected" else "waiting"
    page.wait_for_selector(
        f"body[data-state={state}][data-watcher={watcher}]",
        timeout=scaled(timeout * 1000),
    )
    return time.monotonic() - since


@pytest.mark.timing  # what the page shows, within 3 s and 2 s
def test_an_outage_shows_within_3s_and_the_return_within_2s(
    own_mongo, gunicorn, browser_page
):
    server = gunicorn(_defaults_env(own_mongo.uri))
    page = browser_page
    page.goto(server.url + "/")
    _page_state(page, "connected", time.monotonic(), 10)
    ws = _ws_statuses(server.ws_url())
    python = _python_client_statuses(server.ws_url())
    ready = _readyz(server)
    try:
        gone = time.monotonic()
        own_mongo.kill()
        took = {"page": _page_state(page, "reconnecting", gone, 10)}
        reconnecting = {
            "websocket": (ws, lambda w: w == "reconnecting"),
            "python client": (python, lambda w: w == "reconnecting"),
            "/readyz": (ready, lambda r: r[0] == 503 and r[1] == "reconnecting"),
        }
        for name, (recorder, seen) in reconnecting.items():
            at = wait_for(
                lambda r=recorder, s=seen: r.first(s, gone),
                10,
                f"{name} to say reconnecting",
            )
            took[name] = at - gone
        assert max(took.values()) < scaled(LOST_WITHIN), took
        lost_took = took

        # Away long enough for a doubling backoff to have grown past the
        # return (0.5, 1, 2, 4 s...): the watcher has failed four times.
        wait_for(
            lambda: metric(scrape(server), "wsproxy_watcher_errors_total") >= 4,
            30,
            "four failed attempts",
        )
        own_mongo.start()
        back = time.monotonic()
        took = {"page": _page_state(page, "connected", back, 10)}
        connected = {
            "websocket": (ws, lambda w: w == "connected"),
            "python client": (python, lambda w: w == "connected"),
            "/readyz": (ready, lambda r: r[0] == 200),
        }
        for name, (recorder, seen) in connected.items():
            at = wait_for(
                lambda r=recorder, s=seen: r.first(s, back),
                10,
                f"{name} to say connected",
            )
            took[name] = at - back
        assert max(took.values()) < scaled(BACK_WITHIN), took
        print(f"lost: {lost_took}; back: {took}")
    finally:
        for recorder in (ws, python, ready):
            recorder.stop()

    # /readyz never contradicts itself: 200 exactly when the watcher is
    # connected, and a 503 always says why.
    samples = [what for _, what in ready.seen]
    assert samples
    for status, watcher, reason, _ in samples:
        assert (status == 200) == (watcher == "connected"), samples
        assert (status == 200) == (reason is None), samples
    # Each observer saw the outage once, in order.
    assert [w for _, w in ws.seen] == ["reconnecting", "connected"]
    assert [w for _, w in python.seen if isinstance(w, str)] == [
        "reconnecting",
        "connected",
    ]
    # One INFO line when it was lost, one when it was back, with how long.
    log = server.output()
    assert log.count(LOST_LINE) == 1, log[-3000:]
    (away,) = BACK_LINE.findall(log)
    assert 0 < float(away) < back - gone + scaled(BACK_WITHIN)
    assert not page.script_errors


def test_a_worker_stops_promptly_while_the_database_is_gone(own_mongo, gunicorn):
    """SIGTERM just as the database goes away: the watcher is waiting for
    a server inside PyMongo; the worker's exit must not wait that out."""
    # PyMongo's own 30 s wait for a server: longer than the graceful
    # timeout (10 s), which is what an exit waiting on it took.
    server = gunicorn(_defaults_env(own_mongo.uri + "&serverSelectionTimeoutMS=30000"))
    client = WSClient(server.ws_url())
    client.recv()
    # The watcher's getMore fails at once; PyMongo's resume then waits
    # for a server (for serverSelectionTimeoutMS).
    own_mongo.kill()
    started = time.monotonic()
    server.process.terminate()
    assert client.wait_closed(10)[0] == 1001
    assert server.process.wait(scaled(15)) == 0
    took = time.monotonic() - started
    # Closing the clients takes milliseconds; the watcher is left one
    # round trip (WSPROXY_MAX_AWAIT_MS) and then its client is closed:
    # about 1-2 s on a quiet machine, well inside the graceful timeout.
    assert took < scaled(6), (took, server.output()[-3000:])
    assert "Traceback" not in server.output()
    assert "change stream failed" not in server.output()


def test_the_uri_keeps_its_own_server_selection_timeout():
    """wsproxy's bounded default applies only where the URI sets none: a
    keyword would override the URI's own option."""
    from pymongo import MongoClient

    from wsproxy.http.extension import SERVER_SELECTION_TIMEOUT_MS, mongo_options

    base = "mongodb://127.0.0.1:1/?replicaSet=rs"
    for uri, expected in [
        (base, SERVER_SELECTION_TIMEOUT_MS / 1000),
        ("mongodb://127.0.0.1:1", SERVER_SELECTION_TIMEOUT_MS / 1000),
        (base + "&serverSelectionTimeoutMS=45000", 45.0),
        (base + "&SERVERSELECTIONTIMEOUTMS=700", 0.7),
    ]:
        client = MongoClient(uri, connect=False, **mongo_options(uri))
        try:
            assert client.options.server_selection_timeout == expected, uri
        finally:
            client.close()


# ------------------------------------- every connection sees every transition


class _Joiners:
    """Connects a new client every 50 ms, cycling through the ways a
    connection joins (plain, history, catch-up, snapshot), until stopped:
    clients that join while the watcher changes state."""

    def __init__(self, server, queries):
        self.server = server
        self.queries = queries
        self.clients = []  # (query, WSClient)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-outage-joiners")
        self._thread.start()

    def _run(self):
        n = 0
        while not self._done.wait(0.05):
            query = self.queries[n % len(self.queries)]
            n += 1
            self.clients.append((query, WSClient(self.server.ws_url(query))))

    def stop(self):
        self._done.set()
        self._thread.join(scaled(10))
        assert not self._thread.is_alive()


def _known_watcher(client, last):
    """Read until the document ``{"n": last}`` arrives (as a change, or in
    a snapshot): the watcher state the client last heard by then (hello,
    then statuses), or None if the server closed the connection."""
    from websockets.exceptions import ConnectionClosed

    known = None
    seen = []
    try:
        while True:
            try:
                message = client.recv(10)
            except AssertionError:
                raise AssertionError(f"no change n={last} after {seen}") from None
            seen.append(message.get("watcher") or message["type"])
            if message["type"] in ("hello", "status"):
                known = message["watcher"]
            elif (
                message["type"] == "change"
                and message["event"]["fullDocument"]["n"] == last
            ):
                return known
            elif (
                message["type"] == "snapshot"  # a snapshot read after it
                and any(doc["n"] == last for doc in message["docs"])
            ):
                return known
    except ConnectionClosed:
        return None


def _statuses(client, count, timeout=15):
    return [client.recv_type("status", timeout)["watcher"] for _ in range(count)]


def test_every_connection_sees_every_transition(own_mongo, gunicorn, browser_page):
    """Plain, history, catch-up and snapshot connections each hear the
    watcher go and come back; clients that join meanwhile, in each of
    those ways, end knowing the watcher is connected; and both bundled
    clients report a change that happened while they were away (they
    learn it from the next hello: a queued status message is dropped with
    a connection, e.g. a catch-up closed with 1013 in the same outage)."""
    server = gunicorn({**_defaults_env(own_mongo.uri), "WSPROXY_HISTORY_SIZE": "2"})
    writer = pymongo.MongoClient(own_mongo.uri)
    proxy = TcpProxy(server.port)
    page = browser_page
    joiners = None
    try:
        plain = WSClient(server.ws_url())
        plain.recv()
        writer.shop.orders.insert_many([{"n": n} for n in range(5)])
        ids = [c["id"] for c in plain.changes(5)]
        history = WSClient(server.ws_url(f"resume_after={ids[-1]}"))
        assert history.recv()["resume"] == "history"
        catchup = WSClient(server.ws_url(f"resume_after={ids[0]}"))
        assert catchup.recv()["resume"] == "catch-up"
        assert len(catchup.changes(4)) == 4
        snapshot = WSClient(server.ws_url("snapshot=1&ns=shop.orders"))
        assert snapshot.recv()["resume"] == "snapshot"
        snapshot.recv_type("snapshot_end")
        wait_for(
            lambda: "caught up" in server.output(),
            10,
            "the catch-up to reach the live feed",
        )
        members = {
            "plain": plain,
            "history": history,
            "catch-up": catchup,
            "snapshot": snapshot,
        }

        # The bundled clients, through a proxy that will keep them away
        # while the database goes.
        python = WSProxyClient(f"ws://127.0.0.1:{proxy.port}/ws", statuses=True)
        wait_for(
            lambda: python.receive(timeout=0.1) is None and python.hello,
            10,
            "the Python client's hello",
        )
        assert python.watcher == "connected"
        page.goto(proxy.url + "/healthz")
        page.evaluate(
            """async (module) => {
          const m = await import(module);
          window.feed = new m.WsproxyClient({});
          window.statuses = [];
          feed.on('status', ({ watcher }) => statuses.push(watcher));
          feed.connect();
        }""",
            "/wsproxy-static/wsproxy-client.js",
        )
        page.wait_for_function("feed.state === 'live'", timeout=scaled(10000))
        proxy.held = True
        proxy.cut()

        joiners = _Joiners(
            server,
            [
                "",
                f"resume_after={ids[-1]}",
                f"resume_after={ids[0]}",
                "snapshot=1&ns=shop.orders",
            ],
        )
        own_mongo.kill()
        for name, client in members.items():
            assert _statuses(client, 1) == ["reconnecting"], name
        wait_for(
            lambda: server.readyz()[1]["watcher"] == "reconnecting",
            10,
            "the watcher to be reconnecting",
        )
        late = {
            "plain": WSClient(server.ws_url()),
            "history": WSClient(server.ws_url(f"resume_after={ids[-1]}")),
        }
        for name, client in late.items():
            assert client.recv()["watcher"] == "reconnecting", name

        # Back from away: the hello says what changed meanwhile.
        proxy.held = False
        item = python.receive(timeout=scaled(40))
        assert item == Status("reconnecting", ""), item
        page.wait_for_function("statuses.length >= 1", timeout=scaled(40000))
        assert page.evaluate("statuses") == ["reconnecting"]

        own_mongo.start()
        for name, client in {**members, **late}.items():
            assert _statuses(client, 1) == ["connected"], name
        assert python.receive(timeout=scaled(10)) == Status("connected", "")
        page.wait_for_function("statuses.length >= 2", timeout=scaled(10000))
        assert page.evaluate("statuses") == ["reconnecting", "connected"]
        server.wait_ready()
        joiners.stop()
        # Every joiner still open ends knowing the watcher is connected
        # (catch-ups and snapshots that joined in the outage were closed
        # with 1013: they need the database). A change after the return
        # comes after the status that said so, on every connection.
        writer.shop.orders.insert_one({"n": 99})
        known = []
        for query, client in joiners.clients:
            try:
                known.append((query, _known_watcher(client, 99)))
            except AssertionError as exc:
                raise AssertionError(f"{query}: {exc}; {known}") from None
        assert len(known) >= 20, known
        still_open = [(q, k) for q, k in known if k is not None]
        assert {q for q, _ in still_open} >= {"", f"resume_after={ids[-1]}"}
        assert all(k == "connected" for _, k in still_open), known
        python.close()
        assert not page.script_errors
    finally:
        if joiners is not None:
            joiners.stop()
            for _, client in joiners.clients:
                client.close()
        proxy.close()
        writer.close()
