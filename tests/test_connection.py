"""One connection over a real socket pair: the outbox, the write lock and
the slow-consumer policy, with simple-websocket on the server end and a
wsproto client on the other. Every test runs twice: with the handler
thread reading the socket itself (plain sockets, one thread a connection)
and with simple-websocket's reader thread (what TLS sockets keep)."""

import json
import socket
import threading
import time

import pytest
from wsproto.events import TextMessage

from wsproxy import protocol
from wsproxy.fanout.connection import ClientConnection
from wsproxy.fanout.subscription import EVERYTHING
from wsproxy.transport import codec

from .helpers import RawPeer, open_connection, scaled

_sockets = []
_reads_in_handler = True


@pytest.fixture(autouse=True, params=["handler reads", "reader thread"])
def read_path(request):
    global _reads_in_handler
    _reads_in_handler = request.param == "handler reads"
    yield request.param


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while _sockets:
        _sockets.pop().close()


def make_client(
    max_messages=100,
    max_bytes=1 << 20,
    send_timeout=5.0,
    sndbuf=None,
    max_message_size=None,
    ping_interval=0,
):
    srv_sock, cli_sock = socket.socketpair()
    _sockets.extend([srv_sock, cli_sock])
    if sndbuf:
        srv_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        cli_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    environ = {
        "werkzeug.socket": srv_sock,
        "HTTP_HOST": "test",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_UPGRADE": "websocket",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    peer = RawPeer(cli_sock, host="test", send_request=False)
    environ["HTTP_SEC_WEBSOCKET_KEY"] = peer.key
    # The handshake reply is written as soon as the server object exists,
    # so the peer reads it afterwards from the socket buffer.
    conn = open_connection(
        environ,
        send_timeout=send_timeout,
        max_message_size=max_message_size,
        read_in_handler=_reads_in_handler,
    )
    peer.read_until(lambda: peer.accepted, 5, "the handshake")
    client = ClientConnection(
        conn,
        max_messages=max_messages,
        max_bytes=max_bytes,
        ping_interval=ping_interval,
        close_timeout=scaled(2),
        subscription=EVERYTHING,
    )
    return client, peer


def run_in_thread(client, on_message=lambda c, m: None):
    def handler():
        try:
            client.run(on_message)
        finally:
            client.finish()

    thread = threading.Thread(target=handler, name="test-handler")
    thread.start()
    return thread


def _joined(thread):
    thread.join(scaled(5))
    return not thread.is_alive()


def test_a_connection_needs_no_thread_but_its_handler(read_path):
    before = threading.active_count()
    client, peer = make_client()
    extra = threading.active_count() - before
    assert extra == (0 if read_path == "handler reads" else 1)
    client.request_close(protocol.CloseCode.NORMAL, "")
    thread = run_in_thread(client)
    peer.wait_close()
    assert _joined(thread)


def test_messages_pings_and_a_close_from_the_peer():
    got = []
    client, peer = make_client()
    thread = run_in_thread(client, lambda c, m: got.append(m))
    peer._send(peer.conn.send(TextMessage("hello, server")))
    peer.ping([b"are you there"])
    assert peer.take(1) == [("pong", b"are you there")]
    peer.send_close(1000)
    assert peer.wait_close() == (1000, "")  # the server's reply
    assert _joined(thread)
    assert got == ["hello, server"]
    assert client.close_code == 1000


def test_a_message_over_the_size_limit_is_closed_with_1009():
    got = []
    client, peer = make_client(max_message_size=100)
    thread = run_in_thread(client, lambda c, m: got.append(m))
    peer._send(peer.conn.send(TextMessage("x" * 101)))
    code, reason = peer.wait_close()
    assert code == protocol.CloseCode.TOO_BIG and "100 bytes" in reason
    assert _joined(thread)
    assert got == []


def test_a_peer_that_vanishes_ends_its_handler_and_wakeup():
    client, peer = make_client()
    thread = run_in_thread(client)
    peer.sock.shutdown(socket.SHUT_RDWR)
    assert _joined(thread)
    assert client.close_code == protocol.CloseCode.ABNORMAL
    # Its wake-up descriptor is gone; a late wake from the broadcaster
    # is a no-op, not a write to a descriptor number reused since.
    client.wake()
    with pytest.raises(ValueError):
        client.conn.wake.fileno()


def test_a_peer_that_never_answers_pings_is_dropped():
    # From before the client exists: its own clock starts when it does, so
    # a start taken after its thread began could be late by that thread's
    # start (a run measured 0.399 s).
    started = time.monotonic()
    client, peer = make_client(ping_interval=0.2)
    thread = run_in_thread(client)
    # The peer reads nothing, so it answers no ping.
    assert _joined(thread)
    assert time.monotonic() - started >= 0.4  # a ping, then no pong by the next
    assert client.close_code == protocol.CloseCode.ABNORMAL
    del peer


def test_offered_frames_arrive_in_order():
    client, peer = make_client(max_messages=1000)
    thread = run_in_thread(client)
    texts = [codec.control_message("n", i=i) for i in range(500)]
    for text in texts:
        assert client.offer(codec.frame(text))
    assert peer.take(500) == texts
    client.request_close(protocol.CloseCode.NORMAL, "bye")
    assert peer.wait_close() == (1000, "bye")
    thread.join(scaled(5))
    assert not thread.is_alive()


def test_pongs_from_the_reader_thread_never_interleave_with_data():
    """simple-websocket's reader thread answers pings on the same socket
    while the broadcaster writes large frames: every frame must still parse
    (wsproto raises on a corrupt stream)."""
    client, peer = make_client(max_messages=10000, max_bytes=1 << 30, sndbuf=8192)
    thread = run_in_thread(client)
    big = [codec.control_message("big", i=i, pad="x" * 30000) for i in range(200)]

    def broadcast():
        for text in big:
            client.offer(codec.frame(text))

    writer = threading.Thread(target=broadcast, name="test-broadcaster")
    writer.start()
    peer.ping([str(i).encode() for i in range(200)])
    writer.join(scaled(20))
    got = peer.take(400, timeout=20)
    assert [m for m in got if isinstance(m, str)] == big
    assert [m[1] for m in got if isinstance(m, tuple)] == [
        str(i).encode() for i in range(200)
    ]
    client.request_close(protocol.CloseCode.NORMAL, "")
    peer.wait_close()
    thread.join(scaled(5))


def test_a_client_that_stops_reading_is_closed_with_4008():
    client, peer = make_client(
        max_messages=20, max_bytes=1 << 30, sndbuf=4096, send_timeout=30
    )
    thread = run_in_thread(client)
    frame = codec.frame(codec.control_message("x", pad="y" * 5000))
    accepted = 0
    # The peer reads nothing: socket buffers fill, then the outbox.
    for _ in range(1000):
        if not client.offer(frame):
            break
        accepted += 1
    assert client.closing, "the outbox should have overflowed"
    assert accepted < 1000
    # Once the peer reads again, it gets what was already under way and
    # then the close frame, with the code and a reason saying why.
    code, reason = peer.wait_close(timeout=30)
    assert code == protocol.CloseCode.SLOW_CONSUMER
    assert "slow consumer" in reason
    assert not client.offer(frame)  # nothing more is queued
    thread.join(scaled(10))
    assert not thread.is_alive()
    assert client.close_code == protocol.CloseCode.SLOW_CONSUMER


def test_the_outbox_is_bounded_in_bytes_too():
    client, peer = make_client(max_messages=10**6, max_bytes=64 * 1024, sndbuf=4096)
    frame = codec.frame("z" * 10000)
    # No handler thread drains: everything past the socket buffer queues.
    results = [client.offer(frame) for _ in range(200)]
    assert results.index(False) < 200
    assert client.closing
    del peer


@pytest.mark.parametrize("reason_len", [10, 500])
def test_close_reasons_fit_in_a_close_frame(reason_len):
    reason = protocol.close_reason("é" * reason_len)
    assert len(reason.encode()) <= 123


def _changes(count, pad=0):
    from wsproxy.transport.codec import Change

    from .helpers import sealer_for_tests

    sealer = sealer_for_tests()
    return [
        Change(
            {
                "_id": {"_data": f"{i:08X}"},
                "operationType": "insert",
                "fullDocument": {"_id": i, "pad": "p" * pad},
            },
            sealer,
        )
        for i in range(count)
    ]


def test_changes_that_arrive_together_go_out_in_order_in_one_write():
    client, peer = make_client(max_messages=1000)
    thread = run_in_thread(client)
    writes = []
    real_try_write = client.sock.try_write
    client.sock.try_write = lambda data: (
        writes.append(len(data)),
        real_try_write(data),
    )[1]
    batch = _changes(50)
    assert client.on_changes(batch) == 50
    assert peer.take(50) == [c.text for c in batch]
    assert len(writes) == 1  # one syscall for the whole batch
    client.request_close(protocol.CloseCode.NORMAL, "bye")
    peer.wait_close()
    thread.join(scaled(5))


def test_a_batch_that_fills_the_socket_halfway_is_finished_in_order():
    # 100 changes of ~5 KB into an 8 KB socket buffer: the first write
    # stops partway through a frame; the handler thread finishes it, then
    # the next batches queue behind it.
    client, peer = make_client(max_messages=10000, max_bytes=1 << 30, sndbuf=8192)
    thread = run_in_thread(client)
    changes = _changes(300, pad=5000)
    for start in range(0, 300, 100):
        assert client.on_changes(changes[start : start + 100]) == 100
    assert peer.take(300, timeout=20) == [c.text for c in changes]
    client.request_close(protocol.CloseCode.NORMAL, "")
    peer.wait_close()
    thread.join(scaled(5))


def test_a_batch_that_overflows_the_outbox_closes_with_4008():
    client, peer = make_client(
        max_messages=20, max_bytes=1 << 30, sndbuf=4096, send_timeout=30
    )
    thread = run_in_thread(client)
    # The peer reads nothing: the first batch fills the socket buffers,
    # the second overflows the outbox partway, and nothing more is taken.
    first = client.on_changes(_changes(5, pad=5000))
    handed = client.on_changes(_changes(100, pad=5000))
    assert first == 5 and 0 < handed < 100 and client.closing
    assert client.on_changes(_changes(3)) == 0
    code, _ = peer.wait_close(timeout=30)
    assert code == protocol.CloseCode.SLOW_CONSUMER
    thread.join(scaled(10))


_tokens = iter(range(1, 1 << 30))


def _change(op, _id, doc=None):
    from bson import Timestamp

    from .helpers import sealer_for_tests

    raw = {
        "_id": {"_data": f"{next(_tokens):08d}"},
        "operationType": op,
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": _id},
        "clusterTime": Timestamp(1, 1),
    }
    if op in ("insert", "replace", "update"):
        raw["fullDocument"] = doc
    return codec.Change(raw, sealer_for_tests())


def test_a_filtered_feed_hears_of_a_document_it_was_sent_in_the_same_batch():
    """Issue 21: the broadcaster hands a connection several changes at once;
    a delete (or a change out of the filter) of a document sent earlier in
    the same batch was dropped: what the client holds is only updated when
    the batch is queued, after every change of it was judged."""
    from werkzeug.datastructures import MultiDict

    from wsproxy.access import ANYONE
    from wsproxy.fanout.subscription import parse

    client, peer = make_client()
    sub = parse(
        MultiDict({"filter": '{"fullDocument.s": "open"}'}), scope="", principal=ANYONE
    )
    client.subscription = sub
    client.held = client._new_held(sub)
    thread = run_in_thread(client)
    client.on_changes(
        [
            _change("insert", 1, {"_id": 1, "s": "open"}),
            _change("update", 1, {"_id": 1, "s": "closed"}),  # leaves
            _change("insert", 2, {"_id": 2, "s": "open"}),
            _change("delete", 2),
            _change("insert", 3, {"_id": 3, "s": "closed"}),  # never sent
            _change("delete", 3),
        ]
    )
    got = [json.loads(text) for text in peer.take(4)]
    assert [
        (
            m["type"],
            m.get("event", m).get("operationType"),
            m.get("documentKey") or m["event"]["documentKey"],
        )
        for m in got
    ] == [
        ("change", "insert", {"_id": 1}),
        ("leave", None, {"_id": 1}),
        ("change", "insert", {"_id": 2}),
        ("change", "delete", {"_id": 2}),
    ]
    assert len(client.held) == 0
    client.request_close(protocol.CloseCode.NORMAL, "")
    peer.wait_close()
    assert _joined(thread)
    assert peer.received == []
