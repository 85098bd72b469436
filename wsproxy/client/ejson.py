"""Extended JSON as a client reads it: every value ``bson.json_util`` can
decode becomes its type (ObjectId, datetime, Decimal128...), and every
object it cannot is kept as the plain JSON it was sent as.

Documents are written by anyone who may write to the database, and a field
may hold an object that only looks like Extended JSON (``{"$oid": "zz"}``,
``{"$date": "not-a-date"}``): the server sends it as it is, and
``json_util.loads`` raises on the whole message. A client must neither stop
nor skip an event for what a document holds (a resuming client would meet
the same event again), so each object is decoded on its own: one that
fails (or would lose keys) stays as sent, everything inside it included,
when all its keys start with "$" (it was meant as one value); any other
object is a document, and its fields are decoded one by one.
"""

import json
from typing import Any

from bson import json_util

# As json_util.loads decodes by default.
_OPTIONS = json_util.DEFAULT_JSON_OPTIONS

# json_util decodes these even with other keys beside them, and drops those
# keys (a document {"_id": 1, "$undefined": true} would become None): only
# objects made of these keys alone are decoded. The other types' parsers
# refuse extra keys themselves.
_ONLY_KEYS = {
    "$regex": frozenset({"$regex", "$options"}),
    "$undefined": frozenset({"$undefined"}),
    "$binary": frozenset({"$binary", "$type"}),
}


def loads(text: str | bytes) -> Any:
    """``text`` decoded; ValueError if it is not JSON."""
    return decode(json.loads(text))


def decode(value: Any) -> Any:
    """Plain JSON values (as ``json.loads`` gives them) with Extended JSON
    objects decoded where they can be; the others are returned as given."""
    # Loops, not comprehensions: one frame per level of nesting, as
    # json.loads itself needs.
    if isinstance(value, list):
        items = []
        for item in value:
            items.append(decode(item))
        return items
    if not isinstance(value, dict):
        return value
    pairs = []
    for key, item in value.items():
        pairs.append((key, decode(item)))
    if _decodable(value):
        try:
            return json_util.object_pairs_hook(pairs, _OPTIONS)
        except Exception:  # noqa: BLE001 - any failure: not a value it knows
            pass
    # An object of "$" keys alone was meant as one value: kept as sent. Any
    # other is a document with a "$" field: its fields are decoded.
    if all(key.startswith("$") for key in value):
        return value
    return dict(pairs)


def _decodable(obj: dict) -> bool:
    for key, allowed in _ONLY_KEYS.items():
        if key in obj and not obj.keys() <= allowed:
            return False
    return True
