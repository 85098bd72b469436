"""permessage-deflate: frames compressed once for every client that
negotiated it, decoded by real decompressors (the ``websockets`` client),
side by side with clients that did not offer it, asked for a smaller
window or for client_no_context_takeover; and compressed messages from
clients inflated only up to the message size limit."""

import json
import random
import re
import socket
import struct
import threading
import urllib.parse
import zlib

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
)
from websockets.sync.client import connect
from wsproto.frame_protocol import CloseReason

from wsproxy.transport import codec
from wsproxy.transport.websocket import BoundedDeflate

from .helpers import metric, scaled, scrape, server_env, wait_for


def _inflate(frame, bits):
    """(rsv1, text) of one unmasked server frame, inflated as a browser
    does: raw deflate with the negotiated window, plus RFC 7692's tail."""
    first, second = frame[0], frame[1]
    length, start = second & 0x7F, 2
    if length == 126:
        length, start = struct.unpack("!H", frame[2:4])[0], 4
    elif length == 127:
        length, start = struct.unpack("!Q", frame[2:10])[0], 10
    payload = frame[start : start + length]
    assert start + length == len(frame) and first & 0x80  # one final frame
    if not first & 0x40:
        return False, payload.decode()
    inflater = zlib.decompressobj(-bits)
    return True, (
        inflater.decompress(payload + b"\x00\x00\xff\xff") + inflater.flush()
    ).decode()


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_a_deflated_frame_decodes_within_the_window_it_was_made_for(bits):
    text = json.dumps(
        {
            "type": "change",
            "event": {
                "items": [{"sku": f"SKU-{n % 7:03d}", "qty": n} for n in range(400)]
            },
        }
    )
    frame = codec.deflated_frame(text, bits)
    # A decompressor with exactly that window reads it: no back reference
    # reaches further than the client allowed.
    compressed, decoded = _inflate(frame, bits)
    assert compressed and decoded == text
    assert len(frame) < len(text) / 3


def test_small_messages_go_plain():
    assert codec.deflated_frame('{"type": "pong"}', 15) == codec.frame(
        '{"type": "pong"}'
    )


def test_a_compressed_bomb_is_refused_without_inflating_it_all():
    deflate = BoundedDeflate(4096)
    deflate._inbound_compressed = deflate._inbound_is_compressible = True
    deflate._decompressor = zlib.decompressobj(-15)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"a" * (10 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 16 << 10  # 10 MB in a few KB
    assert deflate.frame_inbound_payload_data(None, bomb) == CloseReason.MESSAGE_TOO_BIG
    assert deflate._inflated <= 4097


def _client(server, **kw):
    kw.setdefault("compression", None)
    ws = connect(
        server.ws_url(), legacy=True, open_timeout=scaled(10), max_size=None, **kw
    )
    assert json.loads(ws.recv(timeout=scaled(5)))["type"] == "hello"
    return ws


def test_clients_with_and_without_deflate_get_the_same_messages(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    plain = _client(server)
    default = _client(server, compression="deflate")
    small = _client(
        server, extensions=[ClientPerMessageDeflateFactory(server_max_window_bits=9)]
    )
    no_takeover = _client(
        server,
        extensions=[
            ClientPerMessageDeflateFactory(
                client_no_context_takeover=True, server_no_context_takeover=True
            )
        ],
    )
    negotiated = [
        ws.response.headers.get("Sec-WebSocket-Extensions")
        for ws in (plain, default, small, no_takeover)
    ]
    assert negotiated[0] is None
    assert all(n.startswith("permessage-deflate") for n in negotiated[1:])
    assert "server_max_window_bits=9" in negotiated[2]
    assert "client_no_context_takeover" in negotiated[3]
    items = mongo_client[db][coll]
    for n in range(50):
        items.insert_one({"_id": n, "text": "a repetitive order line " * 20})
    items.delete_many({})
    for _ in range(100):
        texts = [
            ws.recv(timeout=scaled(5)) for ws in (plain, default, small, no_takeover)
        ]
        assert len(set(texts)) == 1, texts
    # Messages from clients are inflated (and size-checked) too.
    for ws in (default, small, no_takeover):
        ws.send(json.dumps({"type": "ping", "pad": "p" * 3000}))
        assert json.loads(ws.recv(timeout=scaled(5)))["type"] == "pong"
    # A compressed message that inflates beyond WSPROXY_MAX_MESSAGE_SIZE
    # (4096 bytes) is closed with 1009, whatever its compressed size.
    default.send(json.dumps({"type": "ping", "pad": "x" * 100_000}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            default.recv(timeout=scaled(5))
    assert closed.value.rcvd.code == 1009
    # The others are unaffected.
    items.insert_one({"_id": "after", "n": 1})
    texts = [ws.recv(timeout=scaled(5)) for ws in (plain, small, no_takeover)]
    assert len(set(texts)) == 1
    for ws in (plain, small, no_takeover):
        ws.close()


# -- 5,000 events through joins, resumes, an overflow and subscription changes

EVENTS = 5000
CHUNK = 50


class Follower(threading.Thread):
    """A websockets client (its own decompressor) that records every change
    message's text by id, reconnects with resume_after whenever it is
    closed, and does what ``plan`` says at given event counts: "resume"
    (close and come back), "stall" (stop reading until the writer is done:
    an outbox overflow), or a subscribe message."""

    def __init__(self, server, name, plan=(), writer=None, **connect_kw):
        super().__init__(name=f"test-follower-{name}", daemon=True)
        self.server, self.plan, self.writer = server, list(plan), writer
        self.connect_kw = connect_kw
        self.texts = {}  # id -> message text, as decoded
        self.order = []  # ids in the order received
        self.closes = []
        self.error = None
        self.last_id = None
        self.subscription = None  # the last subscribe message sent
        self.done = threading.Event()

    def _connect(self):
        query = {}
        if self.last_id:
            query["resume_after"] = self.last_id
        if self.subscription and self.subscription.get("filter"):
            query["filter"] = json.dumps(self.subscription["filter"])
        url = self.server.ws_url(urllib.parse.urlencode(query))
        kw = dict(self.connect_kw)
        kw.setdefault("compression", "deflate")
        if self.writer is not None:
            # A small receive buffer, so that a stall fills the outbox
            # rather than the kernel's buffers.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.connect(("127.0.0.1", self.server.port))
            kw["sock"] = sock
        else:
            # Read everything as it comes: with websockets' default queue
            # (16 messages) a client behind by more stops reading, and its
            # close() then waited the whole 10 s close timeout for a close
            # frame it was not reading (the resumer's resumes, at random).
            kw.setdefault("max_queue", None)
        return connect(url, legacy=True, open_timeout=scaled(10), max_size=None, **kw)

    def run(self):
        try:
            ws = self._connect()
            while not self.done.is_set():
                if self.plan and len(self.order) >= self.plan[0][0]:
                    _, action = self.plan.pop(0)
                    if action == "resume":
                        ws.close()
                        ws = self._connect()
                    elif action == "stall":
                        self.writer.wait_written(EVENTS)
                    else:
                        self.subscription = action
                        ws.send(json.dumps({"type": "subscribe", **action}))
                try:
                    text = ws.recv(timeout=scaled(0.2))
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    self.closes.append(exc.rcvd.code if exc.rcvd else None)
                    ws = self._connect()
                    continue
                message = json.loads(text)  # every message decodes
                if message["type"] == "change":
                    if message["id"] not in self.texts:
                        self.order.append(message["id"])
                    self.texts[message["id"]] = text
                    self.last_id = message["id"]
            ws.close()
        except Exception as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc


class Writer(threading.Thread):
    """Inserts EVENTS documents in chunks, each once the reference client
    has everything before it (so only the stalled follower falls behind)."""

    def __init__(self, items, reference):
        super().__init__(name="test-writer", daemon=True)
        self.items, self.reference = items, reference
        self.written = 0
        self.progress = threading.Condition()

    def run(self):
        for start in range(0, EVENTS, CHUNK):
            wait_for(
                lambda start=start: len(self.reference.order) >= start,
                60,
                "the reference client",
            )
            self.items.insert_many(
                [
                    {
                        "_id": n,
                        "bucket": n % 3,
                        "customer": "ada",
                        # Some bulk that compresses only so far, so that a stalled
                        # client's socket buffers fill and its outbox overflows.
                        "note": random.Random(n).randbytes(1500).hex(),
                        "status": ["open", "paid", "shipped"][n % 3],
                        "items": [{"sku": f"SKU-{n % 40:03d}", "qty": n % 4}],
                    }
                    for n in range(start, start + CHUNK)
                ]
            )
            with self.progress:
                self.written = start + CHUNK
                self.progress.notify_all()

    def wait_written(self, count):
        with self.progress:
            self.progress.wait_for(
                lambda: self.written >= min(count, EVENTS), scaled(60)
            )


@pytest.mark.heavy
def test_real_decompressors_read_every_frame_through_joins_resumes_overflow_subscribe(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll, WSPROXY_OUTBOX_MAX_MESSAGES=300))
    reference = Follower(server, "plain", compression=None)
    reference.start()
    wait_for(lambda: reference.is_alive(), 5, "the reference")
    writer = Writer(mongo_client[db][coll], reference)
    rng = random.Random(14)
    bucket = {"filter": {"fullDocument.bucket": 1}}
    everything = {"filter": None}
    followers = [
        Follower(server, "steady"),
        Follower(
            server,
            "resumer",
            plan=sorted((rng.randrange(EVENTS - 200), "resume") for _ in range(8)),
        ),
        Follower(server, "staller", writer=writer, plan=[(1200, "stall")]),
        # Two that change subscription together (they share a context
        # while their subscriptions are equal), one on its own.
        *(
            Follower(
                server,
                f"switcher{i}",
                plan=[(800, bucket), (2400, everything), (3000, bucket)],
            )
            for i in range(2)
        ),
        Follower(server, "switcher-alone", plan=[(1500, bucket), (2000, everything)]),
        Follower(
            server,
            "small-window",
            extensions=[ClientPerMessageDeflateFactory(server_max_window_bits=9)],
            compression=None,
        ),
        Follower(
            server,
            "no-takeover",
            extensions=[
                ClientPerMessageDeflateFactory(server_no_context_takeover=True)
            ],
            compression=None,
        ),
    ]
    writer.start()
    started = {}
    for follower in followers:
        # Each joins at its own moment while events flow.
        wait_for(lambda: writer.written >= rng.randrange(0, 600), 60, "a join")
        started[follower.name] = writer.written
        follower.start()
    writer.join(scaled(120))
    assert writer.written == EVENTS
    last = str(EVENTS - 1)
    for follower in [reference, *followers]:
        wait_for(
            lambda f=follower: (
                f.error
                or any(
                    json.loads(f.texts[i])["event"]["documentKey"]["_id"] == EVENTS - 1
                    for i in f.order[-3:]
                )
            ),
            60,
            f"{follower.name} to see the last event",
        )
        follower.done.set()
        follower.join(scaled(10))
        assert follower.error is None, (follower.name, follower.error)
    assert last and len(reference.order) == EVENTS
    position = {i: n for n, i in enumerate(reference.order)}
    for follower in followers:
        # Every message is the exact JSON the uncompressed client got.
        assert all(follower.texts[i] == reference.texts[i] for i in follower.order), (
            follower.name
        )
        # In order, no duplicates, nothing missing after its first event
        # unless its subscription left it out.
        positions = [position[i] for i in follower.order]
        assert positions == sorted(positions), follower.name
    steady = followers[0]
    assert len(steady.order) == EVENTS - position[steady.order[0]]
    # The staller overflowed (the server closed it with 4008: the close
    # frame itself arrives only if the client read again before the send
    # timeout, which a loaded machine can stretch past) and resumed.
    assert followers[2].closes and set(followers[2].closes) <= {4008, None}
    assert metric(scrape(server), "wsproxy_slow_consumer_disconnects_total") >= 1

    def frame_counts():
        # From each disconnect's log line (written as each handler ends).
        return [
            (int(s), int(o))
            for s, o in re.findall(r"(\d+) shared, (\d+) own", server.output())
        ]

    # Shared frames were used: a client that stayed in step got almost
    # only those (the no-takeover client only its own).
    wait_for(
        lambda: any(s / (s + o) > 0.9 for s, o in frame_counts() if s + o > 1000),
        10,
        "a client mostly on shared frames",
    )
    wait_for(
        lambda: any(s == 0 and o > 1000 for s, o in frame_counts()),
        10,
        "the no-takeover client's own frames",
    )


# -- the shared context and the sync rule, in-process


def _numbered_changes(count):
    from wsproxy.transport.codec import Change

    from .helpers import sealer_for_tests

    sealer = sealer_for_tests()
    return [
        Change(
            {
                "_id": {"_data": f"{i:08X}"},
                "operationType": "insert",
                "fullDocument": {"_id": i, "customer": "ada", "status": "open"},
            },
            sealer,
        )
        for i in range(count)
    ]


def test_a_shared_context_compresses_each_change_once_whoever_asks_first():
    from wsproxy.transport.compression import RESET_MESSAGES, SharedContext

    context = SharedContext("key", 15)
    changes = _numbered_changes(RESET_MESSAGES + 10)
    # Two members offered the same batches one after the other.
    results = []
    for start in range(0, len(changes), 7):
        batch = changes[start : start + 7]
        first = [context.encode(c, c.text) for c in batch]
        assert [context.encode(c, c.text) for c in batch] == first
        results += first
    epochs = [r[0] for r in results]
    seqs = [r[1] for r in results]
    assert seqs == list(range(RESET_MESSAGES)) + list(range(10))
    assert epochs == [1] * RESET_MESSAGES + [2] * 10
    # One decompressor carried across the frames reads them all, and is
    # replaced at the reset (the first frame of an epoch needs nothing).
    inflater = None
    for change, (_, seq, frame) in zip(changes, results, strict=True):
        if seq == 0:
            inflater = zlib.decompressobj(-15)
        payload = frame[4:] if frame[1] & 0x7F == 126 else frame[2:]
        assert (
            inflater.decompress(payload + b"\x00\x00\xff\xff").decode() == change.text
        )
    # Carried context: later frames are much smaller than the first.
    assert len(results[5][2]) < len(results[0][2]) * 0.7


def test_the_sync_rule():
    from wsproxy.transport.compression import Sync

    sync = Sync()
    assert not sync.admits(1, 3)  # joins only at an epoch's start
    assert sync.admits(1, 0) and sync.admits(1, 1) and sync.admits(1, 2)
    assert not sync.admits(1, 4)  # a gap: out of step
    assert not sync.admits(1, 5)  # and stays out until a reset
    assert sync.admits(2, 0) and sync.admits(2, 1)
    sync.lose()  # another compressed frame went out
    assert not sync.admits(2, 2)
