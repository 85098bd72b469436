"""What a connection with a filter on document content holds, so that
deletes and documents leaving its view reach it even where the event
itself cannot say (no pre-image).

A filter on ``fullDocument.*`` cannot judge a delete (it has no
``fullDocument``), nor tell that an update took a document out of the
view unless the event carries the document as it was (a pre-image, see
:meth:`wsproxy.fanout.subscription.Subscription.decide`). What it can do is
remember which documents it sent: :class:`Held` keeps the keys of the
documents a connection was sent (bounded, oldest out), and
:meth:`Held.route` turns what the subscription decided about a change into
what this connection is sent:

* a document sent (insert, update, replace with the new document): held;
* a delete of a held document: sent (its key only: no pre-image that the
  rules did not admit), and forgotten;
* a change that the subscription does not send, about a held document:
  ``leave`` (the key, never the new content), and forgotten;
* a ``leave`` or a delete the subscription sends itself (decided by a
  pre-image): forgotten;
* a drop, rename, dropDatabase or invalidate: the keys of that namespace
  are forgotten (the event itself tells the client);
* beyond the limit, the document sent longest ago is forgotten, with a
  ``leave`` (reason ``"untracked"``) so the client drops it too: what the
  client holds is never more than what the server can follow.

What a connection never saw it cannot be told: a document the client got
elsewhere (an API call, an earlier connection that is not resumed) and
that leaves the view is only reported with pre-images.

Changes must be routed in the order the client receives them: the owner
(the connection's queueing step, or the live-documents member) calls
:meth:`Held.route` under its own lock. Each call is O(1) apart from
clearing a namespace.
"""

import collections
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId

from ..liverules import CLEARING_OPS, DOCUMENT_OPS
from ..transport.codec import Shape

if TYPE_CHECKING:
    from .routing import Holders

__all__ = [
    "CLEARING_OPS",
    "DOCUMENT_OPS",
    "Held",
    "document_key",
    "event_id",
    "held_key",
]
_PLAIN_IDS = (ObjectId, str, int, Int64, float)
_MISSING = object()
# (db, coll, document key) of the document a change is about.
HeldKey = tuple[Any, Any, Hashable]


def document_key(_id: Any) -> Hashable:
    """A hashable key for an ``_id`` value: the value itself for the common
    types (numbers compare across types, as MongoDB's do), else its BSON."""
    if type(_id) in _PLAIN_IDS:
        return _id
    return bson.encode({"": _id})


def event_id(raw: Mapping[str, Any]) -> Any:
    """The ``_id`` of the document a change is about (None if absent)."""
    key = raw.get("documentKey")
    return key.get("_id") if isinstance(key, Mapping) else None


def held_key(raw: Mapping[str, Any]) -> HeldKey | None:
    """(db, coll, key) of the document a change is about."""
    ns = raw.get("ns")
    if not isinstance(ns, Mapping):
        return None
    return (ns.get("db"), ns.get("coll"), document_key(event_id(raw)))


class Held:
    """The documents one connection holds (see the module docstring)."""

    __slots__ = ("limit", "_keys", "_holders", "_owner")

    def __init__(
        self, limit: int, holders: "Holders | None" = None, owner: Any = None
    ) -> None:
        self.limit = limit
        # (db, coll, key) -> _id
        self._keys: collections.OrderedDict[HeldKey, Any] = collections.OrderedDict()
        # The hub's index of who holds what (wsproxy.fanout.routing.Holders), so
        # that a change about a held document reaches ``owner`` whatever
        # its subscription's anchor; None: not indexed.
        self._holders = holders
        self._owner = owner

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def ids(self) -> list[Any]:
        """The ``_id`` of every held document, the one sent longest ago
        first."""
        return list(self._keys.values())

    def may_hold(self, raw: Mapping[str, Any]) -> bool:
        """Whether ``route`` may turn nothing into something for this
        change (an unlocked look: a hint for work done before routing)."""
        op = raw.get("operationType")
        if op in CLEARING_OPS:
            return True
        return held_key(raw) in self._keys

    def hold_all(self, pairs: Iterable[tuple[HeldKey, Any]]) -> None:
        """Replace what is held with ``pairs`` of (held key, _id) (what a
        snapshot sent)."""
        self.clear()
        for key, _id in pairs:
            self._add(key, _id)

    def clear(self) -> None:
        for key in list(self._keys):
            self._pop(key)

    def _add(self, key: HeldKey, _id: Any) -> None:
        if key not in self._keys and self._holders is not None:
            self._holders.hold(key, self._owner)
        self._keys[key] = _id

    def _pop(self, key: HeldKey) -> Any:
        found = self._keys.pop(key, _MISSING)
        if found is not _MISSING and self._holders is not None:
            self._holders.forget(key, self._owner)
        return found

    def route(
        self, raw: Mapping[str, Any], shape: Shape | None
    ) -> tuple[Shape | None, list[Any]]:
        """What to send for a change whose event is ``raw``, given what the
        subscription decided (``shape``, or None): ``(shape or None,
        [_id, ...])``, the ids of documents to be sent a ``leave`` because
        they are no longer followed (over the limit)."""
        op = raw.get("operationType")
        if op in CLEARING_OPS:
            if self._forget_namespace(raw, op) and shape is None:
                # The client holds documents the event takes away.
                return Shape.CHANGE, []
            return shape, []
        key = held_key(raw)
        if key is None:
            return shape, []
        if op == "delete":
            if self._pop(key) is not _MISSING and shape is None:
                # The key alone: a pre-image it may carry was not admitted.
                return Shape.CHANGE_WITHOUT_BEFORE, []
            return shape, []
        if op not in DOCUMENT_OPS:
            return shape, []
        if shape is None or shape is Shape.LEAVE:
            if self._pop(key) is not _MISSING:
                return Shape.LEAVE, []
            return shape, []
        if not isinstance(raw.get("fullDocument"), Mapping):
            # Sent without a document (deleted since, updateLookup's
            # null): the client drops it.
            self._pop(key)
            return shape, []
        self._add(key, event_id(raw))
        self._keys.move_to_end(key)
        dropped: list[Any] = []
        while len(self._keys) > self.limit:
            oldest = next(iter(self._keys))
            dropped.append(self._pop(oldest))
        return shape, dropped

    def _forget_namespace(self, raw: Mapping[str, Any], op: str) -> int:
        """Forget the documents of the namespace ``raw`` clears; how many."""
        ns: Any = raw.get("ns") if isinstance(raw.get("ns"), Mapping) else {}
        db, coll = ns.get("db"), ns.get("coll")
        gone = [
            key
            for key in self._keys
            if db is None or (key[0] == db and (op == "dropDatabase" or key[1] == coll))
        ]
        for key in gone:
            self._pop(key)
        return len(gone)
