"""The two LiveDocuments agree: the same scripted server messages, through
the Python client (wsproxy/client/__init__.py, over a real WebSocket from a
scripted server) and through the browser module (wsproxy-client.js in
Chromium, on a fake socket), give the same documents under the same keys,
the same events with the same reasons, and the same loading / complete /
deletes. The Python rules are wsproxy/liverules.py; the browser keeps its
own copy, so this is what keeps them one."""

import itertools
import json
import queue
import threading

import pytest
from websockets.sync.server import serve

from wsproxy import liverules
from wsproxy.client import Change, LiveDocuments, WSProxyClient

from .helpers import scaled
from .test_browser_documents import FAKE_SOCKETS, MODULE, SITE, serve_site

NS = {"db": "shop", "coll": "orders"}
OID = {"$oid": "65a1b2c3d4e5f60718293a4b"}
# Values of _id that must be one key (1, 1.0) or two (1, "1"), and others
# whose text a client could write differently.
IDS = [
    1,
    "1",
    2.5,
    OID,
    {"b": 1, "a": [1, "x"]},
    2**60,
    1e21,
    1.5e-7,
    {"$numberDecimal": "1"},
    {"$date": "2024-01-02T03:04:05.678Z"},
    "é\n",
]
_NUMBERS = itertools.count(1)  # change ids
END = "createIndexes"  # the last message of every case: changes nothing


def hello(resume="none", deletes="tracked"):
    return {
        "type": "hello",
        "worker": 1,
        "watch": "shop.orders",
        "resume": resume,
        "watcher": "connected",
        "deletes": deletes,
    }


def change(op, _id, full=None, **extra):
    event = {"operationType": op, "ns": NS, **extra}
    if _id is not None:
        event["documentKey"] = {"_id": _id}
    if op in ("insert", "update", "replace"):
        event["fullDocument"] = full
    return {"type": "change", "id": f"c{next(_NUMBERS)}", "event": event}


def doc(_id, **fields):
    return {"_id": _id, **fields}


def leave(_id, reason="filter"):
    return {"type": "leave", "id": "l", "documentKey": {"_id": _id}, "reason": reason}


def end():
    return {"type": "change", "id": "end", "event": {"operationType": END, "ns": NS}}


CASES = {
    "snapshot": (
        True,
        [
            hello("snapshot", "exact"),
            {"type": "snapshot", "docs": [doc(i, n=k) for k, i in enumerate(IDS[:6])]},
            {
                "type": "snapshot",
                "docs": [doc(i, n=k) for k, i in enumerate(IDS[6:])]
                + [{"no_id": True}],
            },
            {"type": "snapshot_end", "id": "s1", "count": len(IDS), "complete": True},
            change("update", 1.0, doc(1, n=100)),  # 1.0 is 1
            change("update", "1", None),  # deleted since
            change("replace", OID, doc(OID, n=101)),
            change("insert", 7, doc(7)),
            change("delete", 2.5),
            change("delete", 99),  # not held: nothing
            leave(7),
            leave(2**60, "untracked"),
            leave(12345),  # not held: nothing
            {"type": "status", "watcher": "reconnecting", "detail": ""},
            {"type": "pong"},
            change("createIndexes", None),
            change("insert", None, doc(8)),  # no documentKey: nothing
            {"type": "reset", "lost": True, "reason": "x"},  # keeps them meanwhile
            change("insert", 9, doc(9)),
            {"type": "snapshot", "docs": [doc(3, n=3), doc(1, n=1)]},
            {"type": "snapshot_end", "id": None, "count": 2, "complete": False},
            change("update", 3, doc(3, n=4)),
            change("drop", None),
            change("insert", 5, doc(5)),
            end(),
        ],
    ),
    "snapshot-reconnect": (
        True,
        [
            hello("snapshot"),
            {"type": "snapshot", "docs": [doc(1), doc(2)]},
            {"type": "snapshot_end", "id": "s1", "count": 2, "complete": True},
            change("insert", 3, doc(3)),
            "reconnect",
            hello("snapshot"),  # loading; kept meanwhile
            {"type": "snapshot_end", "id": "s2", "count": 0, "complete": True},
            change("insert", 4, doc(4)),
            change("rename", None, to={"db": "shop", "coll": "x"}),
            end(),
        ],
    ),
    "feed-tracked": (
        False,
        [
            hello("none", "tracked"),
            *[change("insert", i, doc(i, n=k)) for k, i in enumerate(IDS)],
            change("update", 1.0, doc(1.0, n=50)),
            change("update", "1", None),
            leave(OID),
            leave(2**60, "untracked"),
            change("delete", 2.5),
            change("delete", 404),
            {"type": "reset", "lost": True, "reason": "gone"},  # may have missed some
            change("insert", 10, doc(10)),
            change("insert", 11, doc(11)),
            "reconnect",
            hello("history", "tracked"),  # the new connection follows none of them
            change("insert", 12, doc(12)),
            end(),
        ],
    ),
    "feed-exact": (
        False,
        [
            hello("none", "exact"),
            change("insert", 1, doc(1)),
            change("insert", 2, doc(2)),
            "reconnect",
            hello("history", "exact"),  # pre-images: deletes still reach it
            change("delete", 1),
            change("replace", 2, doc(2, v=2)),
            change("dropDatabase", None),
            change("insert", 3, doc(3)),
            end(),
        ],
    ),
    "feed-subscribed": (
        False,
        [
            hello("none", "tracked"),
            change("insert", 1, doc(1)),
            change("insert", 2, doc(2)),
            "subscribe",
            change("insert", 3, doc(3)),  # still the old subscription
            {"type": "subscribed", "deletes": "exact"},  # the server starts afresh
            change("insert", 4, doc(4)),
            leave(4),
            change("insert", 5, doc(5)),
            end(),
        ],
    ),
}

EXPECTED_KEYS = {
    "snapshot": ["5"],
    "snapshot-reconnect": [],
    "feed-tracked": ["12"],
    "feed-exact": ["3"],
    "feed-subscribed": ["5"],
}


def _connections(steps):
    """The steps as the wire texts of each connection, "subscribe" kept."""
    out, current = [], []
    for step in steps:
        if step == "reconnect":
            out.append(current)
            current = []
        else:
            current.append(step if step == "subscribe" else json.dumps(step))
    return out + [current]


class ScriptedServer:
    """Serves each connection its script: sends the messages; at
    "subscribe" waits for the client's subscribe message; closes with 1001
    after every script but the last."""

    def __init__(self, scripts):
        self.scripts = queue.Queue()
        for script in scripts:
            self.scripts.put(script)
        self.count = len(scripts)
        self.received = []
        self.errors = []
        self.done = threading.Event()
        self.server = serve(self.handle, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="test-scripted-server"
        )
        self.thread.start()

    def handle(self, ws):
        try:
            script = self.scripts.get_nowait()
        except queue.Empty:
            ws.close(1011)
            return
        last = self.scripts.empty()
        try:
            for step in script:
                if step == "subscribe":
                    self.received.append(json.loads(ws.recv(timeout=scaled(10))))
                else:
                    ws.send(step)
            if not last:
                ws.close(1001)
                return
            self.done.wait(scaled(30))
        except Exception as exc:  # noqa: BLE001 - surfaced by the test
            self.errors.append(exc)

    def close(self):
        self.done.set()
        self.server.shutdown()
        self.thread.join(scaled(10))


def _js(value):
    """JSON.stringify of a value the Python client decoded."""
    return None if value is None else liverules.key(value)


def run_python(snapshot, steps):
    scripts = _connections(steps)
    server = ScriptedServer(scripts)
    subscribe_on = next((n for n, s in enumerate(scripts, 1) if "subscribe" in s), None)
    feed = WSProxyClient(
        f"ws://127.0.0.1:{server.port}/ws",
        ns="shop.orders",
        snapshot=snapshot,
        ping_interval=0,
        backoff_initial=0.01,
    )
    live = LiveDocuments(feed)
    log = []
    live.on("loading", lambda e: log.append(["loading", None, None, None, None, None]))
    live.on(
        "snapshot",
        lambda e: log.append(
            ["snapshot", len(e.documents), e.reason, e.detail, None, None]
        ),
    )
    live.on(
        "upsert",
        lambda e: log.append(
            ["upsert", e.key, None, e.detail, _js(e.previous), _js(e.document)]
        ),
    )
    live.on(
        "remove",
        lambda e: log.append(
            ["remove", e.key, e.reason, e.detail, _js(e.previous), None]
        ),
    )
    try:
        while True:
            item = feed.receive(timeout=scaled(0.1))
            if (
                subscribe_on is not None
                and feed.hello is not None
                and feed.stats["connections"] == subscribe_on
            ):
                subscribe_on = None
                feed.subscribe(filter={"x": 1})
            if isinstance(item, Change) and item.id == "end":
                break
            assert feed.stats["connections"] <= len(scripts), server.errors
    finally:
        feed.close()
        server.close()
    assert not server.errors, server.errors
    if "subscribe" in steps:
        assert [m["type"] for m in server.received] == ["subscribe"]
    return {
        "log": log,
        "documents": [[k, _js(d)] for k, d in live.documents.items()],
        "loading": live.loading,
        "complete": live.complete,
        "deletes": live.deletes,
    }


RUN_JS = """async ([module, options, steps]) => {
  const m = await import(module);
  const feed = new m.WsproxyClient(options);
  const live = new m.LiveDocuments(feed);
  const log = [];
  const js = (v) => (v === null || v === undefined ? null : JSON.stringify(v));
  live.on('loading', () => log.push(['loading', null, null, null, null, null]));
  live.on('snapshot', (d) =>
    log.push(['snapshot', d.documents.size, d.reason, d.detail, null, null]));
  live.on('upsert', (d) =>
    log.push(['upsert', d.key, null, d.detail, js(d.previous), js(d.document)]));
  live.on('remove', (d) =>
    log.push(['remove', d.key, d.reason, d.detail, js(d.previous), null]));
  const until = async (ok) => {
    for (let i = 0; i < 1000 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
    if (!ok()) throw new Error('timed out');
  };
  let n = 1;
  const open = () =>
    sockets.length === n && sockets[n - 1].readyState === 1 && feed._openedAt > 0;
  feed.connect();
  await until(open);
  for (const step of steps) {
    if (step === 'reconnect') {
      sockets[n - 1].lose(1001);
      n++;
      await until(open);
    } else if (step === 'subscribe') {
      feed.subscribe({ ns: options.ns, filter: { x: 1 } }).catch(() => {});
    } else {
      sockets[n - 1].onmessage({ data: step });
    }
  }
  return {
    log,
    documents: [...live.documents].map(([k, d]) => [k, js(d)]),
    loading: live.loading, complete: live.complete, deletes: live.deletes,
  };
}"""


def run_js(page, snapshot, steps):
    options = {"ns": "shop.orders", "snapshot": snapshot, "pingIntervalMs": 0}
    texts = [s if s in ("reconnect", "subscribe") else json.dumps(s) for s in steps]
    return page.evaluate(RUN_JS, [MODULE, options, texts])


@pytest.mark.parametrize("name", list(CASES))
def test_python_and_browser_live_documents_agree(name, browser_page):
    snapshot, steps = CASES[name]
    page = browser_page
    page.add_init_script(FAKE_SOCKETS)
    serve_site(page)
    page.goto(f"{SITE}/healthz")
    in_browser = run_js(page, snapshot, steps)
    in_python = run_python(snapshot, steps)
    assert in_python["log"] == in_browser["log"]
    assert in_python == in_browser
    assert [k for k, _ in in_python["documents"]] == EXPECTED_KEYS[name]
    assert not page.script_errors


def test_without_a_feed_items_are_applied_by_hand():
    """The Python client's older way (still there): LiveDocuments() and
    apply(item) for every item a feed yields."""
    from wsproxy.client import Leave, Reset, Snapshot

    live = LiveDocuments()
    events = []
    off = live.on("remove", lambda e: events.append((e.key, e.reason, e.detail)))
    live.apply(Snapshot([{"_id": 1}, {"_id": 2}, {"no": "id"}], True, "s"))
    assert list(live.documents) == ["1", "2"] and not live.loading
    assert live.complete is True
    live.apply(
        Change(
            "c",
            {
                "operationType": "update",
                "documentKey": {"_id": 1},
                "fullDocument": {"_id": 1, "v": 2},
            },
        )
    )
    live.apply(Leave("l", {"_id": 2}, "untracked"))
    assert events == [("2", "leave", "untracked")]
    live.apply(Reset(True, "x"))  # a snapshot feed: loading again
    assert live.loading and live.get(1) == {"_id": 1, "v": 2}
    off()
    live.apply(Snapshot([], True, None))
    assert len(live) == 0 and events == [("2", "leave", "untracked")]
    with pytest.raises(ValueError, match="no 'change' event"):
        live.on("change", print)


def test_detached_documents_stay_as_they_are():
    feed = WSProxyClient("ws://127.0.0.1:9/ws")
    live = LiveDocuments(feed)
    assert feed._observers == [live.apply]
    live.detach()
    assert feed._observers == []
