"""permessage-deflate: frames compressed once for every client that
negotiated it, decoded by real decompressors (the ``websockets`` client),
side by side with clients that did not offer it, asked for a smaller
window or for client_no_context_takeover; and compressed messages from
clients inflated only up to the message size limit."""

import json
import struct
import zlib

import pytest
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
)
from websockets.sync.client import connect
from wsproto.frame_protocol import CloseReason

from wsproxy import codec
from wsproxy.websocket import BoundedDeflate

from .helpers import scaled, server_env


def _inflate(frame, bits):
    """(rsv1, text) of one unmasked server frame, inflated as a browser
    does: raw deflate with the negotiated window, plus RFC 7692's tail."""
    first, second = frame[0], frame[1]
    length, start = second & 0x7F, 2
    if length == 126:
        length, start = struct.unpack("!H", frame[2:4])[0], 4
    elif length == 127:
        length, start = struct.unpack("!Q", frame[2:10])[0], 10
    payload = frame[start:start + length]
    assert start + length == len(frame) and first & 0x80  # one final frame
    if not first & 0x40:
        return False, payload.decode()
    inflater = zlib.decompressobj(-bits)
    return True, (inflater.decompress(payload + b"\x00\x00\xff\xff")
                  + inflater.flush()).decode()


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_a_deflated_frame_decodes_within_the_window_it_was_made_for(bits):
    text = json.dumps({"type": "change", "event": {
        "items": [{"sku": f"SKU-{n % 7:03d}", "qty": n} for n in range(400)]}})
    frame = codec.deflated_frame(text, bits)
    # A decompressor with exactly that window reads it: no back reference
    # reaches further than the client allowed.
    compressed, decoded = _inflate(frame, bits)
    assert compressed and decoded == text
    assert len(frame) < len(text) / 3


def test_small_messages_go_plain():
    assert codec.deflated_frame('{"type": "pong"}', 15) == codec.frame(
        '{"type": "pong"}')


def test_a_compressed_bomb_is_refused_without_inflating_it_all():
    deflate = BoundedDeflate(4096)
    deflate._inbound_compressed = deflate._inbound_is_compressible = True
    deflate._decompressor = zlib.decompressobj(-15)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"a" * (10 << 20)) + compressor.flush(
        zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 16 << 10  # 10 MB in a few KB
    assert deflate.frame_inbound_payload_data(None, bomb) == \
        CloseReason.MESSAGE_TOO_BIG
    assert deflate._inflated <= 4097


def _client(server, **kw):
    kw.setdefault("compression", None)
    ws = connect(server.ws_url(), legacy=True, open_timeout=scaled(10),
                 max_size=None,
                 **kw)
    assert json.loads(ws.recv(timeout=scaled(5)))["type"] == "hello"
    return ws


def test_clients_with_and_without_deflate_get_the_same_messages(
        mongo, mongo_client, namespace, gunicorn):
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll))
    plain = _client(server)
    default = _client(server, compression="deflate")
    small = _client(server, extensions=[
        ClientPerMessageDeflateFactory(server_max_window_bits=9)])
    no_takeover = _client(server, extensions=[
        ClientPerMessageDeflateFactory(client_no_context_takeover=True,
                                       server_no_context_takeover=True)])
    negotiated = [ws.response.headers.get("Sec-WebSocket-Extensions")
                  for ws in (plain, default, small, no_takeover)]
    assert negotiated[0] is None
    assert all(n.startswith("permessage-deflate") for n in negotiated[1:])
    assert "server_max_window_bits=9" in negotiated[2]
    assert "client_no_context_takeover" in negotiated[3]
    items = mongo_client[db][coll]
    for n in range(50):
        items.insert_one({"_id": n, "text": "a repetitive order line " * 20})
    items.delete_many({})
    for _ in range(100):
        texts = [ws.recv(timeout=scaled(5)) for ws in
                 (plain, default, small, no_takeover)]
        assert len(set(texts)) == 1, texts
    # Messages from clients are inflated (and size-checked) too.
    for ws in (default, small, no_takeover):
        ws.send(json.dumps({"type": "ping", "pad": "p" * 3000}))
        assert json.loads(ws.recv(timeout=scaled(5)))["type"] == "pong"
    # A compressed message that inflates beyond WSPROXY_MAX_MESSAGE_SIZE
    # (4096 bytes) is closed with 1009, whatever its compressed size.
    default.send(json.dumps({"type": "ping", "pad": "x" * 100_000}))
    from websockets.exceptions import ConnectionClosed
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
