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
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bson import json_util
from wsproto.frame_protocol import FrameProtocol

from ..access.redaction import redact
from ..protocol import MessageType

if TYPE_CHECKING:
    from ..access.sealing import Sealer

# A set of hidden fields, as a connection holds it (a cache key).
Hide = tuple[str, ...]

_JSON_OPTIONS = json_util.RELAXED_JSON_OPTIONS


def frame(text: str) -> bytes:
    """One final, unmasked, uncompressed text frame carrying ``text``."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))


# Smaller messages are sent plain: their deflate output is no smaller
# (measured on status and pong messages: 32 bytes in, 32 out).
DEFLATE_MIN_BYTES = 64
DEFLATE_LEVEL = 6  # zlib's default: most of level 9's ratio at half the time
_FIN_RSV1_TEXT = 0x80 | 0x40 | 0x1


def deflated_frame(text: str, window_bits: int) -> bytes:
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


def deflate_frame_of(body: bytes) -> bytes:
    """A final, unmasked text frame of an already compressed ``body``."""
    return _header(_FIN_RSV1_TEXT, len(body)) + body


def is_compressed(data: bytes) -> bool:
    """Whether a frame built here has RSV1 set (permessage-deflate)."""
    return bool(data[0] & 0x40)


def _header(first_byte: int, length: int) -> bytes:
    if length < 126:
        return struct.pack("!BB", first_byte, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


def dumps(document: Any) -> str:
    return json_util.dumps(document, json_options=_JSON_OPTIONS)


class Shape(StrEnum):
    """What of one change a subscription is sent (see
    :meth:`wsproxy.fanout.subscription.Subscription.decide`)."""

    CHANGE = "change"  # the event, minus the hidden fields
    # ...and without its pre-image (fullDocumentBeforeChange), which the
    # subscription's rules do not admit (the document entered its view)
    CHANGE_WITHOUT_BEFORE = "change-without-before"
    # {"type": "leave"}: the document left the view; its key only
    LEAVE = "leave"


class Change:
    """One change event, with its wire forms computed at most once.

    ``raw`` is the event as PyMongo decoded it (for filters), ``id`` its
    resume token as ``sealer.seal`` makes it opaque (see
    :mod:`wsproxy.access.sealing`), ``text`` the JSON message and ``frame`` the bytes
    of that message as a WebSocket frame. ``text``, ``frame`` and the
    other views (a hidden-field set and a :class:`Shape`) are built on first
    use: a catch-up builds one per client, so an event the client does not
    want is never encoded.

    ``decisions`` remembers what each subscription (by its key) decided
    about this change, so that connections with equal subscriptions judge
    it once (:meth:`wsproxy.fanout.subscription.Subscription.decide`).
    """

    __slots__ = (
        "raw",
        "id",
        "token",
        "_text",
        "_frame",
        "_variants",
        "_texts",
        "_frames",
        "_deflated",
        "decisions",
    )

    raw: dict[str, Any]
    id: str
    token: Any
    _text: str | None
    _frame: bytes | None
    _variants: dict[Any, dict[str, Any]]
    _texts: dict[tuple[Hide, Shape], str]
    _frames: dict[tuple[Hide, Shape], bytes]
    _deflated: dict[tuple[Hide, Shape, int], bytes]
    decisions: dict[Any, Any]

    def __init__(self, raw: dict[str, Any], sealer: "Sealer") -> None:
        self.raw = raw
        self.token = raw["_id"]
        self.id = sealer.seal(self.token)
        self._text = self._frame = None
        # The broadcaster and catch-up threads may race to fill these
        # caches; both compute the same value, so either result may win.
        self._variants = {}  # hide tuple (or "before", hide) -> event view
        self._texts = {}  # (hide, shape) -> message text
        self._frames = {}  # (hide, shape) -> frame
        self._deflated = {}  # (hide, shape, window bits) -> compressed frame
        self.decisions = {}

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = change_message(self.id, self.raw)
        return self._text

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = frame(self.text)
        return self._frame

    def redacted_event(self, hide: Hide) -> dict[str, Any]:
        """The event without the ``hide`` fields (computed once per set)."""
        if not hide:
            return self.raw
        found = self._variants.get(hide)
        if found is None:
            found = self._variants[hide] = redact(self.raw, hide)
        return found

    def before_view(self, hide: Hide = ()) -> dict[str, Any]:
        """The event as it was before the change: its pre-image as the
        document, no update description; without the ``hide`` fields
        (computed once per set). Only for events that carry a pre-image."""
        key = ("before", hide)
        found = self._variants.get(key)
        if found is None:
            raw = self.raw
            event = {k: v for k, v in raw.items() if k not in ("updateDescription",)}
            event["fullDocument"] = raw.get(BEFORE_FIELD)
            found = self._variants[key] = redact(event, hide) if hide else event
        return found

    def text_for(self, hide: Hide, shape: Shape = Shape.CHANGE) -> str:
        """The message this change is for a client that may not see the
        ``hide`` fields, in ``shape``."""
        if not hide and shape is Shape.CHANGE:
            return self.text
        key = (hide, shape)
        found = self._texts.get(key)
        if found is None:
            event = self.redacted_event(hide)
            if shape is Shape.LEAVE:
                found = leave_message(self.id, event)
            else:
                if shape is Shape.CHANGE_WITHOUT_BEFORE:
                    event = {k: v for k, v in event.items() if k != BEFORE_FIELD}
                found = change_message(self.id, event)
            self._texts[key] = found
        return found

    def frame_for(self, hide: Hide, shape: Shape = Shape.CHANGE) -> bytes:
        """The frame of :meth:`text_for`."""
        if not hide and shape is Shape.CHANGE:
            return self.frame
        key = (hide, shape)
        found = self._frames.get(key)
        if found is None:
            found = self._frames[key] = frame(self.text_for(hide, shape))
        return found

    def deflated_for(self, hide: Hide, shape: Shape, window_bits: int) -> bytes:
        """The message of :meth:`text_for` compressed on its own for a
        window of ``window_bits`` (computed once per combination)."""
        key = (hide, shape, window_bits)
        found = self._deflated.get(key)
        if found is None:
            found = self._deflated[key] = deflated_frame(
                self.text_for(hide, shape), window_bits
            )
        return found

    def __repr__(self) -> str:
        return f"<Change {self.raw.get('operationType')} {self.id[:24]}…>"


# The pre-image a change event carries with full_document_before_change.
BEFORE_FIELD = "fullDocumentBeforeChange"


def change_message(change_id: str, raw: Mapping[str, Any]) -> str:
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


# Why a document leaves a client's view (``leave``'s ``reason``).
LEFT_FILTER = "filter"  # a change made it stop matching (or deleted it since)
UNTRACKED = "untracked"  # over the number of documents the server follows


def leave_message(
    change_id: str, event: Mapping[str, Any], reason: str = LEFT_FILTER
) -> str:
    """``{"type": "leave", "id": ..., "documentKey": {...}, "reason": ...}``:
    the document ``event`` is about left the client's view (its key only,
    as ``event`` shows it: hidden fields removed)."""
    return control_message(
        MessageType.LEAVE,
        id=change_id,
        documentKey=event.get("documentKey") or {},
        reason=reason,
    )


def untracked_leave_frame(change_id: str, _id: Any, hide: Hide) -> bytes:
    """The ``leave`` frame of a document the server stops following (over
    its limit), sent with ``change_id``, without the ``hide`` fields."""
    event = {"documentKey": {"_id": _id}}
    if hide:
        event = redact(event, hide)
    return frame(leave_message(change_id, event, UNTRACKED))


def control_message(kind: str, **fields: Any) -> str:
    """A non-change message (hello, reset, status) as JSON text."""
    return dumps({"type": kind, **fields})
