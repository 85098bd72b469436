"""Change event -> wire message, encoded once per event.

Every ``change`` message is JSON text (relaxed Extended JSON for the event)
and, because server-to-client frames are never masked, an uncompressed
WebSocket frame of it is the same bytes for every connection: the frame is
built here once and written to every socket as is.
"""

import json

from bson import json_util
from wsproto.frame_protocol import FrameProtocol

from .protocol import MessageType
from .redaction import redact

_JSON_OPTIONS = json_util.RELAXED_JSON_OPTIONS


def frame(text):
    """One final, unmasked, uncompressed text frame carrying ``text``."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))


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

    __slots__ = ("raw", "id", "token", "_text", "_frame", "_variants")

    def __init__(self, raw, sealer):
        self.raw = raw
        self.token = raw["_id"]
        self.id = sealer.seal(self.token)
        self._text = self._frame = None
        # hide tuple -> [redacted event, its frame or None]. The broadcaster
        # and catch-up threads may race to fill these caches; both compute
        # the same value, so either result may win.
        self._variants = {}

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
            found = self._variants[hide] = [redact(self.raw, hide), None]
        return found

    def redacted_event(self, hide):
        """The event without the ``hide`` fields (computed once per set)."""
        return self._variant(hide)[0]

    def redacted_frame(self, hide):
        """The frame of the event without the ``hide`` fields."""
        variant = self._variant(hide)
        if variant[1] is None:
            variant[1] = frame(change_message(self.id, variant[0]))
        return variant[1]

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
