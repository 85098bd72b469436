"""What a change or a ``leave`` does to a map of documents: the one Python
statement of the live-documents rules (docs/live-documents.md).

Used by the server when it merges a snapshot with the changes kept during
it (:func:`wsproxy.live.snapshot.merge`) and by the Python client's
``LiveDocuments`` (:mod:`wsproxy.client`). The browser module
(``wsproxy-client.js``) has its own copy; tests/test_live_agreement.py runs
the same cases through both and checks they agree.

The rules:

* insert, replace, update with ``fullDocument`` an object: the document
  becomes that object, whole (an upsert: the event carries the whole
  document, so nothing is merged field by field);
* insert, replace, update with ``fullDocument`` null (the document was
  deleted since: ``updateLookup`` found nothing), and delete: it goes;
* drop, rename, dropDatabase, invalidate: every document goes;
* ``leave``: the document goes (the server's ``reason`` says why);
* anything else (createIndexes, a change without a ``documentKey._id``):
  nothing.

Documents are held under :func:`key` of their ``_id``: the ``_id`` as
compact relaxed Extended JSON text, numbers written as JavaScript writes
them, which is exactly ``JSON.stringify`` of the ``_id`` as a browser
parsed it. So both clients hold a document under the same key, and ``1``,
``1.0`` and ``NumberLong(1)`` are one document (as they are one ``_id`` to
MongoDB) while ``1`` and ``"1"`` are two.

Pure: no server module, no I/O, no threads (the client must not import the
server); only ``bson``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson import json_util
from bson.objectid import ObjectId

__all__ = [
    "CLEAR",
    "CLEARING_OPS",
    "DELETE",
    "DOCUMENT_OPS",
    "Effect",
    "LEAVE",
    "REMOVE",
    "UPSERT",
    "apply",
    "key",
    "of_change",
    "of_leave",
]

# Changes that carry a document (or null, when it was deleted since).
DOCUMENT_OPS = frozenset({"insert", "replace", "update"})
# After these the collection's documents are gone (or elsewhere).
CLEARING_OPS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})

# What an effect does.
UPSERT, REMOVE, CLEAR = "upsert", "remove", "clear"
# Why a document goes (a removal's ``reason``; a clear's is CLEAR).
DELETE, LEAVE = "delete", "leave"


@dataclass(frozen=True, slots=True)
class Effect:
    """What one message does to the documents.

    ``action``: UPSERT, REMOVE or CLEAR. ``id``: the document's ``_id``
    (UPSERT, REMOVE). ``document``: the whole new document (UPSERT).
    ``reason``: why it goes (REMOVE: DELETE or LEAVE; CLEAR: CLEAR).
    ``detail``: the change's operation type, or a leave's own reason
    (``"filter"``, ``"untracked"``)."""

    action: str
    id: Any = None
    document: Mapping[str, Any] | None = None
    reason: str | None = None
    detail: str | None = None


def of_change(event: Mapping[str, Any]) -> Effect | None:
    """What a change event does, or None (nothing)."""
    op = event.get("operationType")
    if op in CLEARING_OPS:
        return Effect(CLEAR, reason=CLEAR, detail=op)
    if op not in DOCUMENT_OPS and op != "delete":
        return None
    document_key = event.get("documentKey")
    if not isinstance(document_key, Mapping) or "_id" not in document_key:
        return None
    _id = document_key["_id"]
    document = event.get("fullDocument") if op != "delete" else None
    if isinstance(document, Mapping):
        return Effect(UPSERT, _id, document, detail=op)
    return Effect(REMOVE, _id, reason=DELETE, detail=op)


def of_leave(document_key: Any, reason: str | None = None) -> Effect | None:
    """What a ``leave`` with this ``documentKey`` does, or None."""
    if not isinstance(document_key, Mapping) or "_id" not in document_key:
        return None
    return Effect(REMOVE, document_key["_id"], reason=LEAVE, detail=reason)


_DOCUMENT = object()


def apply(
    documents: MutableMapping[Any, Any],
    effect: Effect,
    key: Callable[[Any], Any],
    value: Any = _DOCUMENT,
) -> Any:
    """Apply ``effect`` to ``documents`` (``key(_id)`` -> what is held, in
    order). An upsert holds ``value`` if given (the server holds the change
    itself, judged later), else the document; a document already held keeps
    its place. Returns what was held under the effect's key before (None:
    nothing), or, for a clear, a dict of everything that was held."""
    if effect.action == CLEAR:
        gone = dict(documents)
        documents.clear()
        return gone
    k = key(effect.id)
    if effect.action == UPSERT:
        previous = documents.get(k)
        documents[k] = effect.document if value is _DOCUMENT else value
        return previous
    return documents.pop(k, None)


# -- keys ---------------------------------------------------------------------

_RELAXED = json_util.RELAXED_JSON_OPTIONS
_SURROGATE = re.compile("[\ud800-\udfff]")
# Integers a double holds exactly: JavaScript reads larger ones rounded.
_SAFE = 2**53


def key(_id: Any) -> str:
    """The key a document is held under: ``JSON.stringify`` of its ``_id``
    as a browser parses it from the server's relaxed Extended JSON."""
    kind = type(_id)
    if kind is str:
        return _js_string(_id)
    if kind is ObjectId:
        return '{"$oid":"' + str(_id) + '"}'
    if kind is int and -_SAFE <= _id <= _SAFE:
        return str(_id)
    # Anything else as the server wrote it (bson types, or the plain JSON
    # of a client that does not decode Extended JSON), then as JS writes it.
    return _js_json(json.loads(json_util.dumps(_id, json_options=_RELAXED)))


def _js_json(value: Any) -> str:
    if isinstance(value, str):
        return _js_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _js_number(value)
    if isinstance(value, list):
        return "[" + ",".join(_js_json(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(_js_string(k) + ":" + _js_json(v) for k, v in value.items())
            + "}"
        )
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _js_string(text: str) -> str:
    # JSON.stringify escapes the same characters as json.dumps without
    # ensure_ascii, and also every lone surrogate (Python strings may hold
    # them; a pair is one character).
    out = json.dumps(text, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)


def _js_number(number: int | float) -> str:
    """ECMAScript's Number::toString of the double nearest ``number``."""
    value = float(number)
    if not math.isfinite(value):
        return "null"  # as JSON.stringify; relaxed JSON never sends one
    if value == 0:
        return "0"  # -0 too
    # The shortest digits that read back as the same double: Python's
    # repr and ECMAScript choose them alike; only the layout differs.
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0")
    exponent = int(exponent) + len(digits) - len(text)
    k = len(text)
    n = exponent + k  # value = 0.<text> x 10**n
    if k <= n <= 21:
        out = text + "0" * (n - k)
    elif 0 < n <= 21:
        out = text[:n] + "." + text[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + text
    else:
        e = n - 1
        mantissa = text if k == 1 else text[0] + "." + text[1:]
        out = mantissa + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return ("-" if sign else "") + out
