"""permessage-deflate read by Chromium's own decompressor: browser
WebSockets on one page, deflate negotiated, receive 5,000 change events
through late joins, resumes, an outbox overflow and subscription changes
at random (seeded) moments, and every message Chromium hands the page is
the exact text an uncompressed client of the same server got.

With ``WSPROXY_COMPRESSION=shared`` (the default) a message may be a back
reference into the messages before it, so a server that ever sent a
shared frame to a socket whose window does not hold those messages makes
Chromium fail the connection (or, worse, inflate to other text): either
way this test fails.
"""

import base64
import datetime
import json
import random
import re
import socket
import threading

import pytest
from bson import Decimal128
from pymongo import DeleteOne, InsertOne, UpdateOne
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .helpers import scaled, server_env, wait_for

EVENTS = 5000
CHUNK = 50
# Orders before this seq carry a label image: messages of about 4 KB, so
# that a socket that stopped reading fills the kernel's buffers (the
# server's send buffer alone grows to 4 MB) within the run. The later
# ones are plain demo orders (messages under 2 KB, a dozen or more in a
# 32 KB window), so that back references reach across more messages.
LABELS_UNTIL = 3500

CUSTOMERS = ["ada", "grace", "linus", "margaret", "ken", "barbara"]
STATUSES = ["open", "paid", "shipped", "late"]
PRODUCTS = [
    "Espresso beans 1 kg",
    "Milk jug",
    "Tamper 58 mm",
    "Grinder burrs",
    "Descaler",
    "Cup set (6)",
    "Knock box",
    "Scale with timer",
]
CITIES = [
    ("Lyon", "69002", "FR"),
    ("Leeds", "LS1 4DY", "GB"),
    ("Porto", "4050-262", "PT"),
    ("Ghent", "9000", "BE"),
]

# Two subscriptions the browser sockets switch between. The final event
# (see _operations) matches both, so every socket ends on it.
SOME = {"fullDocument.customer": {"$in": ["ada", "grace"]}}
ALL = None


def _wanted(filter_, event):
    """Whether a subscription with ``filter_`` gets ``event``: the test's
    own reading of the two filters above, not the server's code."""
    if filter_ is None:
        return True
    assert filter_ == SOME
    return (event.get("fullDocument") or {}).get("customer") in ("ada", "grace")


def _operations(rng):
    """EVENTS writes, each one change event: demo-like orders inserted,
    updated and deleted. Every event but a delete carries its position as
    ``seq``, which the page's plans are keyed on."""
    live, ops = [], []
    now = datetime.datetime(2026, 11, 2, 9, 0, tzinfo=datetime.UTC)
    for seq in range(EVENTS):
        roll = rng.random()
        created = now + datetime.timedelta(seconds=seq)
        if seq == EVENTS - 1 or len(live) < 20 or roll < 0.7:
            city, postcode, country = rng.choice(CITIES)
            lines = [
                {
                    "sku": f"SKU-{rng.randint(1, 40):03d}",
                    "name": rng.choice(PRODUCTS),
                    "qty": rng.randint(1, 4),
                    "price": Decimal128(f"{rng.randint(150, 9999) / 100:.2f}"),
                }
                for _ in range(rng.randint(1, 6))
            ]
            order = {
                "_id": f"SO-{100000 + seq}",
                "seq": seq,
                "customer": "ada" if seq == EVENTS - 1 else rng.choice(CUSTOMERS),
                "status": "open",
                "currency": "EUR",
                "total": Decimal128(f"{rng.randint(500, 99999) / 100:.2f}"),
                "items": lines,
                "shipping": {
                    "street": f"{rng.randint(1, 200)} Rue Exemple",
                    "city": city,
                    "postcode": postcode,
                    "country": country,
                },
                "created": created,
            }
            if seq < LABELS_UNTIL:
                # The shipping label's thumbnail: image data, already
                # compressed, so deflate cannot shrink it.
                order["label_png"] = base64.b64encode(rng.randbytes(2000)).decode()
            ops.append(InsertOne(order))
            live.append(order["_id"])
        elif roll < 0.95:
            ops.append(
                UpdateOne(
                    {"_id": rng.choice(live)},
                    {
                        "$set": {
                            "status": rng.choice(STATUSES),
                            "seq": seq,
                            "updated": created,
                        },
                        "$inc": {"revision": 1},
                    },
                )
            )
        else:
            ops.append(DeleteOne({"_id": live.pop(rng.randrange(len(live)))}))
    return ops


class Reference(threading.Thread):
    """The uncompressed client: the websockets library offering no
    extension, subscribed to everything from before the first write."""

    def __init__(self, server):
        super().__init__(name="test-reference", daemon=True)
        self.ws = connect(
            server.ws_url(),
            legacy=True,
            compression=None,
            open_timeout=scaled(10),
            max_size=None,
        )
        assert self.ws.response.headers.get("Sec-WebSocket-Extensions") is None
        # After hello the connection is in the live feed: it gets every
        # event written from now on.
        assert json.loads(self.ws.recv(timeout=scaled(5)))["type"] == "hello"
        self.texts = {}  # id -> message text
        self.order = []  # ids, as received
        self.position = {}  # id -> its index in order
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            while not self.done.is_set():
                try:
                    text = self.ws.recv(timeout=scaled(0.2))
                except TimeoutError:
                    continue
                message = json.loads(text)
                if message["type"] == "change":
                    assert message["id"] not in self.texts
                    self.texts[message["id"]] = text
                    self.position[message["id"]] = len(self.order)
                    self.order.append(message["id"])
        except (ConnectionClosed, AssertionError, ValueError) as exc:
            self.error = exc
        self.ws.close()


class Writer(threading.Thread):
    """Writes the operations CHUNK at a time (one bulk write each, its
    events in order), each chunk once the reference has every event
    before it and no browser socket is more than LAG events behind (one
    that is stalling excepted). Only a stalled socket is meant to fall
    behind far enough to overflow, however slow the machine: a resume
    from the worker's history queues the whole backlog at once, and a
    backlog over the outbox limit would be closed with 4008 too."""

    LAG = 100

    def __init__(self, items, operations, reference):
        super().__init__(name="test-writer", daemon=True)
        self.items, self.operations = items, operations
        self.reference = reference
        self.written = 0
        # Socket name -> the last seq it received (kept by the test's main
        # thread, which alone talks to the page).
        self.browser_seen = {}
        self.stalling = set()  # names of sockets stalling right now
        self.error = None

    def _caught_up(self, start):
        return len(self.reference.order) >= start and all(
            seq >= start - self.LAG
            for name, seq in list(self.browser_seen.items())
            if name not in self.stalling
        )

    def run(self):
        try:
            for start in range(0, EVENTS, CHUNK):
                wait_for(
                    lambda start=start: self._caught_up(start),
                    30,
                    "the reference and the browser sockets",
                )
                self.items.bulk_write(self.operations[start : start + CHUNK])
                self.written = start + CHUNK
        except Exception as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc


# The browser side. One class for every socket: it records each message
# Chromium hands it (event.data, already inflated by Chromium), reconnects
# with resume_after when the server closes it, and acts on its plan when
# it sees the event whose seq reaches each step. The stalling socket runs
# in a dedicated worker, so that its busy loop stops only its own reading.
FOLLOWER_JS = r"""
class Follower {
  constructor(spec, emit) {
    this.url = spec.url;
    this.plan = spec.plan.slice();   // [[seq, action], ...], by seq
    this.emit = emit;                // records go to Python, in order
    this.filter = null;              // the current subscription's filter
    this.lastId = null;
    this.done = false;
    // A stall ends once the server has read this many events, or after
    // this long, if no overflow came first.
    this.stallUntilEvents = spec.stallUntilEvents;
    this.stallMaxMs = spec.stallMaxMs;
    this.silentUrl = spec.silentUrl;
    this.connect();
  }

  connect() {
    const query = new URLSearchParams();
    if (this.lastId) query.set("resume_after", this.lastId);
    if (this.filter) query.set("filter", JSON.stringify(this.filter));
    const ws = this.ws = new WebSocket(this.url + (query.size ? "?" + query : ""));
    const filter = this.filter;
    // Filters of subscribe messages sent on this socket and not answered.
    ws.asked = [];
    ws.onopen = () => this.emit(["open", ws.extensions, filter]);
    // A socket we left on purpose (a resume) is ignored: like a real
    // client, we resume after the last id we took, not after what it
    // might still deliver.
    ws.onmessage = (event) => { if (ws === this.ws) this.received(ws, event.data); };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.emit(["close", event.code, event.reason]);
      if (!this.done) this.connect();
    };
  }

  received(ws, text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (error) {
      this.emit(["undecodable", text]);
      return;
    }
    if (message.type === "subscribed") {
      this.emit(["subscribed", ws.asked.shift()]);
    } else if (message.type !== "change") {
      this.emit([message.type, text]);
    } else {
      const event = message.event;
      const seq = (event.fullDocument || (event.updateDescription || {})
                   .updatedFields || {}).seq;
      this.lastId = message.id;
      this.emit(["change", message.id, seq === undefined ? null : seq, text]);
      while (seq !== undefined && this.plan.length && seq >= this.plan[0][0]) {
        this.act(this.plan.shift()[1]);
      }
    }
  }

  act(action) {
    if (action === "resume") {
      this.emit(["resume", this.lastId]);
      const old = this.ws;
      this.connect();
      old.close(1000);
    } else if (action === "stall") {
      this.emit(["stall"]);  // posted to the page at once, busy or not
      this.emit(["stalled", this.stall()]);
    } else {
      this.filter = action.filter;
      this.ws.asked.push(action.filter);
      this.ws.send(JSON.stringify({type: "subscribe", filter: action.filter}));
      this.emit(["subscribe", action.filter]);
    }
  }

  // Keep this thread busy, so Chromium stops reading the socket for it,
  // until the server has closed a slow consumer (4008) or has read every
  // event: a busy thread can still make blocking requests, and /metrics
  // says both.
  stall() {
    // Busy without spinning (the stall lasts most of the run, and a core
    // spent on it is taken from Chromium, the server and the database):
    // 50 ms blocked in a synchronous request to a listener that never
    // answers, ended by its timeout (a worker may set one). Should it end
    // sooner, the rest is spun.
    const pause = () => {
      const until = Date.now() + 50;
      const request = new XMLHttpRequest();
      request.open("GET", this.silentUrl, false);
      request.timeout = 50;
      try {
        request.send();
      } catch (error) {}
      while (Date.now() < until) {}
    };
    const metrics = () => {
      const request = new XMLHttpRequest();
      request.open("GET", new URL("/metrics", this.url.replace(/^ws/, "http")),
                   false);
      request.send();
      const value = (name) => Number(
        (request.responseText.match(new RegExp("^" + name + " (\\S+)$", "m"))
         || [0, 0])[1]);
      return {slow: value("wsproxy_slow_consumer_disconnects_total"),
              events: value("wsproxy_events_received_total")};
    };
    const before = metrics();
    const started = Date.now();
    for (;;) {
      pause();
      const now = metrics();
      if (now.slow > before.slow || now.events >= this.stallUntilEvents
          || Date.now() - started > this.stallMaxMs) {
        return {ms: Date.now() - started, events: now.events,
                overflowed: now.slow > before.slow};
      }
    }
  }

  finish() {
    this.done = true;
    this.ws.close(1000);
  }
}
"""

WORKER_JS = (
    FOLLOWER_JS
    + r"""
let follower;
onmessage = (event) => {
  if (event.data === "finish") {
    follower.finish();
    return;
  }
  follower = new Follower(event.data, (record) => postMessage(record));
};
"""
)

PAGE_JS = (
    FOLLOWER_JS
    + f"const WORKER_SOURCE = {json.dumps(WORKER_JS)};"
    + r"""
window.harness = {
  records: [],   // [name, kind, ...], in the order they happened per socket
  sockets: [],
  start(spec) {
    const emit = (record) => this.records.push([spec.name, ...record]);
    if (spec.worker) {
      // A worker from a blob: URL has the page's origin, so its socket
      // passes the Origin check too.
      const worker = new Worker(URL.createObjectURL(
        new Blob([WORKER_SOURCE], {type: "text/javascript"})));
      worker.onmessage = (event) => emit(event.data);
      worker.onerror = (event) => emit(["worker-error", event.message]);
      worker.postMessage(spec);
      this.sockets.push({finish: () => worker.postMessage("finish")});
    } else {
      this.sockets.push(new Follower(spec, emit));
    }
  },
  drain() {
    const records = this.records;
    this.records = [];
    return records;
  },
  finish() {
    for (const socket of this.sockets) socket.finish();
  },
};
"""
)


def _plans(rng):
    """Each browser socket: when it joins (events written) and what it
    does at which events (by seq)."""

    def moments(count, low, high):
        return sorted(rng.sample(range(low, high), count))

    some, everything = {"filter": SOME}, {"filter": ALL}
    s1, s2, s3 = moments(3, 1200, 4800)
    a1, a2 = moments(2, 1500, 4800)
    return [
        # Joins first and stalls soon, so the labelled messages still to
        # come are enough to fill the buffers of a socket that stopped
        # reading.
        {
            "name": "staller",
            "join": rng.randrange(0, 150),
            "worker": True,
            "plan": [[rng.randrange(250, 400), "stall"]],
        },
        {"name": "steady", "join": rng.randrange(0, 800), "plan": []},
        {
            "name": "resumer",
            "join": rng.randrange(0, 800),
            "plan": [[seq, "resume"] for seq in moments(8, 900, 4800)],
        },
        # Two that switch subscription at the same events: in step, they
        # share a context again from the next reset on. One on its own.
        *(
            {
                "name": f"switcher{i}",
                "join": rng.randrange(200, 1000),
                "plan": [[s1, some], [s2, everything], [s3, some]],
            }
            for i in range(2)
        ),
        {
            "name": "switcher-alone",
            "join": rng.randrange(200, 1000),
            "plan": [[a1, some], [a2, everything]],
        },
        {"name": "latecomer", "join": rng.randrange(2500, 3500), "plan": []},
    ]


def _same_text(name, change_id, text, expected, before):
    """Chromium inflated a message to exactly what was sent uncompressed;
    if not, where the texts part and what the socket saw just before."""
    if text == expected:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(text, expected, strict=False)) if a != b),
        min(len(text), len(expected)),
    )
    seen = [r if r[0] != "change" else ("change", r[2]) for r in before]
    raise AssertionError(
        f"{name}: {change_id} inflated to other text at {at}: "
        f"got {text[max(0, at - 120) : at + 120]!r}, "
        f"sent {expected[max(0, at - 120) : at + 120]!r}; after {seen}"
    )


def _check_socket(name, records, reference, events):
    """Everything one browser socket received, against the reference
    (whose ``events`` are the decoded events, in its order). Returns the
    socket's close codes and the reference positions it received."""
    position = reference.position
    positions = []
    filter_ = ALL
    # The received changes' positions, and where the filter changed (a
    # subscribed reply, or a reconnect that carried a filter).
    steps = []
    closes = []
    opened = 0
    for index, (kind, *rest) in enumerate(records):
        if kind == "hello":
            # Each reconnection resumed after the last id (from the
            # worker's history or from MongoDB), not from now.
            mode = json.loads(rest[0])["resume"]
            expected = ("none",) if opened == 1 else ("history", "catch-up")
            assert mode in expected, (name, opened, mode)
        elif kind == "open":
            opened += 1
            extensions, opened_with = rest
            # Chromium always offers permessage-deflate; the server took it.
            assert extensions.startswith("permessage-deflate"), (name, extensions)
            if opened_with != filter_:
                filter_ = opened_with
                steps.append(("switch", filter_))
        elif kind == "subscribed":
            filter_ = rest[0]
            steps.append(("switch", filter_))
        elif kind == "change":
            change_id, _, text = rest
            assert change_id in position, (name, "an id the reference never got")
            # Chromium inflated it to exactly what was sent uncompressed.
            _same_text(
                name,
                change_id,
                text,
                reference.texts[change_id],
                records[max(0, index - 12) : index],
            )
            positions.append(position[change_id])
            steps.append(("change", position[change_id]))
        elif kind == "close":
            closes.append(rest[0])
        elif kind in ("undecodable", "error", "reset", "worker-error"):
            raise AssertionError(f"{name}: {kind} {rest}")
    # In order, no duplicates, and on to the last event.
    assert positions == sorted(set(positions)), name
    assert positions[-1] == EVENTS - 1, name
    # Nothing missing: every reference event between two received ones
    # is one the socket's subscription did not want. Across a change of
    # subscription, those the old one judged come first: there is a split
    # with none the old one wants before it and none the new one wants
    # after it.
    previous, old, new = None, ALL, ALL
    for kind, value in steps:
        if kind == "switch":
            new = value
            continue
        if previous is not None:
            skipped = events[previous + 1 : value]
            first_old = next(
                (n for n, e in enumerate(skipped) if _wanted(old, e)), len(skipped)
            )
            after_new = max(
                (n + 1 for n, e in enumerate(skipped) if _wanted(new, e)), default=0
            )
            assert after_new <= first_old, (
                name,
                "missed events between",
                previous,
                value,
            )
        previous, old = value, new
    return closes, positions


class Silent(threading.Thread):
    """A listener that accepts connections and never answers: the
    staller's requests to it block its thread until their timeout."""

    def __init__(self):
        super().__init__(name="test-silent", daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.held = []
        self.closing = False

    def run(self):
        while True:
            conn = self.sock.accept()[0]
            if self.closing:
                conn.close()
                return
            self.held.append(conn)

    def close(self):
        # Closing the socket would not wake accept(): a connection does.
        self.closing = True
        socket.create_connection(self.sock.getsockname(), timeout=5).close()
        self.join(5)
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent():
    listener = Silent()
    listener.start()
    yield listener
    listener.close()


def test_chromium_reads_every_frame_through_joins_resumes_overflow_subscribe(
    mongo, mongo_client, namespace, gunicorn, browser_page, silent
):
    db, coll = namespace
    # Updates without a looked-up document: one a catch-up reads again
    # (after the staller's overflow) carries the document as it is by
    # then (MongoDB's updateLookup), not the text the live feed sent.
    server = gunicorn(
        server_env(
            mongo.uri,
            db,
            coll,
            WSPROXY_OUTBOX_MAX_MESSAGES=300,
            WSPROXY_FULL_DOCUMENT="default",
        )
    )
    rng = random.Random(7692)
    operations = _operations(rng)
    specs = {spec["name"]: spec for spec in _plans(rng)}
    page = browser_page
    # A page of the server's own origin (its health check will do), so the
    # sockets pass the Origin check. Not a page Playwright makes up
    # (page.route): that one has no address, and Chromium's local network
    # access checks refuse its sockets to 127.0.0.1.
    page.goto(server.url + "/healthz")
    page.add_script_tag(content=PAGE_JS)

    reference = Reference(server)
    reference.start()
    writer = Writer(mongo_client[db][coll], operations, reference)
    writer.start()
    records = {name: [] for name in specs}
    finished = set()
    waiting = sorted(specs.values(), key=lambda spec: spec["join"])

    def progress():
        """Start the sockets whose moment has come, take the page's
        records (one batch per call) and say whether every socket has the
        last event. Fails at once on a close nobody asked for."""
        assert writer.error is None, writer.error
        assert reference.error is None, reference.error
        while waiting and writer.written >= waiting[0]["join"]:
            # The staller's stall ends with the overflow, not a clock: its
            # buffers (the kernel's on both sides, then the outbox) take
            # about 3,000 labelled messages, which a loaded machine writes
            # in 30-50 s.
            spec = waiting.pop(0)
            page.evaluate(
                "spec => harness.start(spec)",
                {
                    "url": server.ws_url(),
                    "name": spec["name"],
                    "plan": spec["plan"],
                    "worker": spec.get("worker", False),
                    "stallUntilEvents": EVENTS,
                    "stallMaxMs": scaled(100_000),
                    "silentUrl": silent.url,
                },
            )
        for name, kind, *rest in page.evaluate("harness.drain()"):
            records[name].append((kind, *rest))
            if kind == "stall":
                writer.stalling.add(name)
            elif kind == "stalled":
                writer.stalling.discard(name)
            elif kind == "change" and rest[1] is not None:
                writer.browser_seen[name] = rest[1]
                if rest[1] == EVENTS - 1:
                    finished.add(name)
            if kind == "close" and not (name == "staller" and rest[0] == 4008):
                raise AssertionError(f"{name} closed: {rest}")
        return not waiting and finished == set(specs)

    wait_for(progress, 150, "every browser socket to get the last event", interval=0.1)
    page.evaluate("harness.finish()")
    reference.done.set()
    reference.join(scaled(10))
    assert reference.error is None, reference.error
    assert len(reference.order) == EVENTS
    assert not page.script_errors, page.script_errors
    events = [json.loads(reference.texts[i])["event"] for i in reference.order]

    for name, log in records.items():
        closes, positions = _check_socket(name, log, reference, events)
        # Joined while events flowed, and followed them from there.
        assert len(positions) > 500, (name, len(positions))
        plan = specs[name]["plan"]
        if name == "staller":
            stalled = [rest[0] for kind, *rest in log if kind == "stalled"]
            # The worker stopped reading, the outbox overflowed, the
            # server closed with 4008 and the socket resumed. (Catching up
            # on a busy machine it may overflow again, legitimately; with
            # the writer's pacing that has not been seen.)
            assert stalled and stalled[0]["overflowed"], stalled
            assert closes and set(closes) == {4008}, closes
        else:
            assert closes == [], (name, closes)
        assert sum(kind == "resume" for kind, *_ in log) == sum(
            action == "resume" for _, action in plan
        ), name
        assert [rest[0] for kind, *rest in log if kind == "subscribed"] == [
            action["filter"] for _, action in plan if isinstance(action, dict)
        ], name

    # Shared frames were really sent: the server logs each connection's
    # count when it ends (the reference, and every browser socket with
    # each of its reconnections).
    connections = 1 + sum(
        kind == "open" for log in records.values() for kind, *_ in log
    )
    pattern = re.compile(r"compressed frames: (\d+) shared, (\d+) own")
    wait_for(
        lambda: len(pattern.findall(server.output())) >= connections,
        10,
        "every connection's last log line",
    )
    counts = pattern.findall(server.output())
    assert sum(int(shared) for shared, _ in counts) > EVENTS, counts
