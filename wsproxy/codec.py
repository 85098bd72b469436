"""Change event -> wire message, encoded once per event.

Every ``change`` message is JSON text (relaxed Extended JSON for the event)
and, because server-to-client frames are never masked, an uncompressed
WebSocket frame of it is the same bytes for every connection: the frame is
built here once and written to every socket as is.

Compressed frames are shared the same way. RFC 7692 lets a server compress
each message on its own (a fresh compressor, so no back reference reaches
outside the message) and set RSV1 per message; a client's decompressor
then needs nothing but the window size it asked for
(``server_max_window_bits``). So :func:`deflated_frame` compresses a
message once per window size, and every client that negotiated
permessage-deflate with that window gets the same bytes.
"""

import json
import struct
import zlib

from bson import json_util
from wsproto.frame_protocol import FrameProtocol

from .protocol import MessageType
from .redaction import redact

_JSON_OPTIONS = json_util.RELAXED_JSON_OPTIONS


def frame(text):
    """One final, unmasked, uncompressed text frame carrying ``text``."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))


# Smaller messages are sent plain: their deflate output is no smaller
# (measured on status and pong messages: 32 bytes in, 32 out).
DEFLATE_MIN_BYTES = 64
DEFLATE_LEVEL = 6  # zlib's default: most of level 9's ratio at half the time
_FIN_RSV1_TEXT = 0x80 | 0x40 | 0x1


def deflated_frame(text, window_bits):
    """A final, unmasked text frame of ``text`` compressed on its own
    (permessage-deflate, RSV1 set) with a window of ``window_bits``; the
    plain frame when that would be no smaller."""
    data = text.encode()
    if len(data) >= DEFLATE_MIN_BYTES:
        compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -window_bits)
        body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        body = body[:-4]  # RFC 7692 7.2.1: the receiver adds 00 00 ff ff back
        if len(body) < len(data):
            return deflate_frame_of(body)
    return frame(text)


def deflate_frame_of(body):
    """A final, unmasked text frame of an already compressed ``body``."""
    return _header(_FIN_RSV1_TEXT, len(body)) + body


def is_compressed(data):
    """Whether a frame built here has RSV1 set (permessage-deflate)."""
    return bool(data[0] & 0x40)


def _header(first_byte, length):
    if length < 126:
        return struct.pack("!BB", first_byte, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


def dumps(document):
    return json_util.dumps(document, json_options=_JSON_OPTIONS)


class Change:
    """One change event, with its wire forms computed at most once.

    ``raw`` is the event as PyMongo decoded it (for filters), ``id`` its
    resume token as ``sealer.seal`` makes it opaque (see
    :mod:`wsproxy.sealing`), ``text`` the JSON message and ``frame`` the bytes
    of that message as a WebSocket frame. ``text``, ``frame`` and the
    redacted variants are built on first use: a catch-up builds one per
    client, so an event the client does not want is never encoded.
    """

    __slots__ = ("raw", "id", "token", "_text", "_frame", "_variants", "_deflated")

    def __init__(self, raw, sealer):
        self.raw = raw
        self.token = raw["_id"]
        self.id = sealer.seal(self.token)
        self._text = self._frame = None
        # hide tuple -> [redacted event, its text or None, its frame or
        # None]; (hide, window bits) -> compressed frame. The broadcaster
        # and catch-up threads may race to fill these caches; both compute
        # the same value, so either result may win.
        self._variants = {}
        self._deflated = {}

    @property
    def text(self):
        if self._text is None:
            self._text = change_message(self.id, self.raw)
        return self._text

    @property
    def frame(self):
        if self._frame is None:
            self._frame = frame(self.text)
        return self._frame

    def _variant(self, hide):
        found = self._variants.get(hide)
        if found is None:
            found = self._variants[hide] = [redact(self.raw, hide), None, None]
        return found

    def redacted_event(self, hide):
        """The event without the ``hide`` fields (computed once per set)."""
        return self._variant(hide)[0]

    def redacted_text(self, hide):
        """The message of the event without the ``hide`` fields."""
        variant = self._variant(hide)
        if variant[1] is None:
            variant[1] = change_message(self.id, variant[0])
        return variant[1]

    def redacted_frame(self, hide):
        """The frame of the event without the ``hide`` fields."""
        variant = self._variant(hide)
        if variant[2] is None:
            variant[2] = frame(self.redacted_text(hide))
        return variant[2]

    def deflated_frame(self, hide, window_bits):
        """The message without the ``hide`` fields, compressed on its own
        for a window of ``window_bits`` (computed once per pair)."""
        key = (hide, window_bits)
        found = self._deflated.get(key)
        if found is None:
            text = self.redacted_text(hide) if hide else self.text
            found = self._deflated[key] = deflated_frame(text, window_bits)
        return found

    def __repr__(self):
        return f"<Change {self.raw.get('operationType')} {self.id[:24]}…>"


def change_message(change_id, raw):
    """``{"type": "change", "id": ..., "event": {...}}`` as JSON text."""
    event = {k: v for k, v in raw.items() if k != "_id"}
    # The envelope is assembled around the event's JSON so the (possibly
    # large) event is serialised exactly once.
    return (
        '{"type": "'
        + MessageType.CHANGE
        + '", "id": '
        + json.dumps(change_id)
        + ', "event": '
        + dumps(event)
        + "}"
    )


def control_message(kind, **fields):
    """A non-change message (hello, reset, status) as JSON text."""
    return dumps({"type": kind, **fields})
