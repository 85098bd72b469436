"""Which members of the hub a change can concern, so that an event costs
the clients it is for, not every client connected.

Each member's subscription is a conjunction: its namespaces, its
operation types, its principal's rule and its own filter must all pass.
Where one of those conjuncts is an equality (or ``$in``) on a path of the
event, that is the member's *anchor* (:func:`anchor`): the member is
indexed under the anchor's values, and an event is offered to it only if
the event has one of those values there. The rule or filter is still
what decides (:meth:`wsproxy.fanout.subscription.Subscription.decide`); the
index only never offers what it cannot pass. Anchors, best first:

* a document path (``fullDocument.<path>``, ``documentKey._id``): looked
  up in the document after the change *and* in its pre-image, so a
  document leaving a filter still reaches the members it leaves;
* the namespaces (``ns``): ``db`` and ``db.coll``;
* the operation types (``operationType``).

A member without an anchor is on the scan list and offered everything.
Two more things reach a member whatever its anchor: a change about a
document it holds (a feed with a filter on documents remembers what it
was sent, :mod:`wsproxy.fanout.tracking`; :class:`Holders` indexes those keys),
and a drop, rename, dropDatabase or invalidate (offered to everyone).

Thread safety: members are added and removed under the hub's lock; the
broadcaster reads the index without it. Every value a reader takes is a
frozen set replaced whole by a writer, and every read is a single dict
lookup, so a reader sees a member either before or after a change, never
a torn structure. Whether a member had joined when a change was recorded
is decided by the hub (see :meth:`wsproxy.fanout.hub.Hub._publish`).
"""

import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..access.filters import _candidates, _key, _path, _resolve
from .tracking import CLEARING_OPS, HeldKey, held_key

if TYPE_CHECKING:
    from .hub import Member
    from .subscription import Subscription

NS = "ns"
_EMPTY: frozenset = frozenset()
# How good an anchor is: the fewer events it lets through, the better.
_RANK = {"document": 3, NS: 2, "operationType": 1}
# (path, the value keys indexed under it): what a member is routed by.
Anchor = tuple[str, frozenset[Any]]


def _literals(value: Any) -> set[Any] | None:
    """The values an equality conjunct admits, or None if it is not one we
    index (null matches a missing field; compound values compare whole)."""
    if isinstance(value, Mapping):
        if not value or not all(
            isinstance(k, str) and k.startswith("$") for k in value
        ):
            return None  # an embedded document, compared whole
        if "$eq" in value:
            items = [value["$eq"]]
        elif "$in" in value and isinstance(value["$in"], (list, tuple)):
            items = list(value["$in"])
        else:
            return None
    else:
        items = [value]
    keys = set()
    for item in items:
        if item is None or isinstance(item, (Mapping, list, tuple)):
            return None
        try:
            key = _key(item)
        except (ArithmeticError, ValueError):
            return None
        if key is None:
            return None
        keys.add(key)
    return keys or None


def _conjuncts(spec: Mapping[Any, Any]) -> Iterator[tuple[str, Any]]:
    """(path, value) of every top-level conjunct of a filter spec,
    ``$and`` flattened (an ``$or`` is not one)."""
    for path, value in spec.items():
        if path == "$and":
            for item in value:
                if isinstance(item, Mapping):
                    yield from _conjuncts(item)
        elif isinstance(path, str) and not path.startswith("$"):
            yield path, value


def _kind(path: str) -> str | None:
    if path == "documentKey._id" or path.startswith("documentKey._id."):
        return "document"
    if path.startswith("fullDocument."):
        return "document"
    if path == "operationType":
        return "operationType"
    return None


def anchor(subscription: "Subscription") -> Anchor | None:
    """``(path, frozenset of value keys)``: the best indexed conjunct of
    ``subscription``, or None (it goes on the scan list)."""
    best: tuple[int, str, frozenset[Any]] | None = None

    def consider(rank: int, path: str, keys: Collection[Any]) -> None:
        nonlocal best
        if best is None or (rank, -len(keys)) > (best[0], -len(best[2])):
            best = (rank, path, frozenset(keys))

    if subscription.namespaces is not None:
        consider(_RANK[NS], NS, subscription.namespaces)
    if subscription.ops is not None:
        consider(
            _RANK["operationType"],
            "operationType",
            {_key(op) for op in subscription.ops},
        )
    for compiled in subscription.rules + subscription.predicates:
        spec = getattr(compiled, "spec", None)
        if not isinstance(spec, Mapping):
            continue
        for path, value in _conjuncts(spec):
            kind = _kind(path)
            keys: Collection[Any] | None = _literals(value) if kind else None
            if keys:
                consider(_RANK[cast(str, kind)], path, keys)  # keys: a kind
    if best is None:
        return None
    _, path, keys = best
    if not keys:
        return (path, _EMPTY)  # matches nothing: indexed under no value
    return (path, keys)


def event_keys(raw: Mapping[str, Any], path: str) -> Sequence[Any]:
    """The value keys ``raw`` has at an anchor's ``path``."""
    if path == NS:
        ns = raw.get("ns")
        if not isinstance(ns, Mapping):
            return ()
        db = ns.get("db")
        return (db, f"{db}.{ns.get('coll')}")
    parts = _path(path)
    values = _resolve(raw, parts)
    if path.startswith("fullDocument."):
        before = raw.get("fullDocumentBeforeChange")
        if isinstance(before, Mapping):
            values = values + _resolve({"fullDocument": before}, parts)
    keys: list[Any] = []
    for value in _candidates(values):
        try:
            key = _key(value)
        except (ArithmeticError, ValueError):
            continue
        if key is not None:
            keys.append(key)
    return keys


class Routes:
    """The index of the hub's members (see the module docstring)."""

    def __init__(self) -> None:
        self._scan: frozenset[Member] = _EMPTY  # members offered every change
        # path -> {value key -> frozenset of members}
        self._index: dict[str, dict[Any, frozenset[Member]]] = {}
        # member -> its anchors (None: the scan list)
        self._anchors: dict[Member, list[Anchor | None]] = {}
        # What readers iterate, replaced whole by writers: every member, and
        # (path, {value key -> members}) of every indexed path.
        self._members: frozenset[Member] = _EMPTY
        self._paths: tuple[tuple[str, dict[Any, frozenset[Member]]], ...] = ()
        self.holders = Holders()

    def add(self, member: "Member") -> None:
        """Index ``member`` by its subscription (caller holds the hub's lock)."""
        self._anchors[member] = []
        self._members = self._members | {member}
        self._index_under(member, _anchor_of(member, member.subscription))

    def widen(self, member: "Member", subscription: "Subscription") -> None:
        """Also index ``member`` by ``subscription`` (it is being replaced:
        until :meth:`settle`, a change either may pass reaches it)."""
        if member in self._anchors:
            self._index_under(member, _anchor_of(member, subscription))

    def settle(self, member: "Member") -> None:
        """Index ``member`` by its current subscription alone: indexed
        under the new anchor before it leaves the old ones, so a reader
        always finds it."""
        if member not in self._anchors:
            return
        old = self._anchors[member]
        self._anchors[member] = []
        self._index_under(member, _anchor_of(member, member.subscription))
        current = self._anchors[member][0]
        # what of the old anchors the new one does not cover
        stale: list[Anchor | None] = []
        for found in old:
            if found is None:
                if current is not None:
                    stale.append(None)
            elif current is None or found[0] != current[0]:
                stale.append(found)
            elif found[1] - current[1]:
                stale.append((found[0], found[1] - current[1]))
        self._unindex(member, stale)

    def remove(self, member: "Member") -> None:
        """(caller holds the hub's lock)"""
        self._members = self._members - {member}
        self._unindex(member, self._anchors.pop(member, ()))

    def _unindex(self, member: "Member", anchors: Iterable[Anchor | None]) -> None:
        for found in anchors:
            if found is None:
                self._scan = self._scan - {member}
                continue
            path, keys = found
            values = self._index.get(path, {})
            for key in keys:
                left = values.get(key, _EMPTY) - {member}
                if left:
                    values[key] = left
                else:
                    values.pop(key, None)
            if not values:
                self._index.pop(path, None)
        self._paths = tuple(self._index.items())

    def _index_under(self, member: "Member", found: Anchor | None) -> None:
        self._anchors[member].append(found)
        if found is None:
            self._scan = self._scan | {member}
            return
        path, keys = found
        values = self._index.setdefault(path, {})
        for key in keys:
            values[key] = values.get(key, _EMPTY) | {member}
        self._paths = tuple(self._index.items())

    @property
    def scan(self) -> "frozenset[Member]":
        """The members offered every change (a frozenset; without the
        hub's lock)."""
        return self._scan

    def candidates(self, raw: Mapping[str, Any]) -> "set[Member]":
        """Every member ``raw`` may concern (a superset; without the
        hub's lock)."""
        return self.indexed(raw) | self._scan

    def indexed(self, raw: Mapping[str, Any]) -> "set[Member]":
        """:meth:`candidates` but the scan list, which a caller offering
        a batch handles once for the whole batch (every member, for a
        change that clears documents)."""
        if raw.get("operationType") in CLEARING_OPS:
            return set(self._members)  # rare: everyone
        found: set[Member] = set()
        for path, values in self._paths:
            for key in event_keys(raw, path):
                members = values.get(key)
                if members:
                    found.update(members)
        holders = self.holders.get(held_key(raw))
        if holders:
            found.update(holders)
        return found

    def __len__(self) -> int:
        return len(self._members)


def _anchor_of(member: "Member", subscription: "Subscription") -> Anchor | None:
    """A member's anchor: its own say (``route_anchor``, e.g. a live
    documents member follows its whole collection), else its
    subscription's for a member that declares itself ``routed``. Stand-ins
    that hold everything for a client while it resumes are brief, and take
    every change (None)."""
    own = getattr(member, "route_anchor", None)
    if own is not None:
        return own()
    if getattr(member, "routed", False):
        return anchor(subscription)
    return None


class Holders:
    """Who holds which document (held key -> frozenset of members), for
    the changes that concern a document a member was sent whatever its
    anchor says. Updated by :class:`wsproxy.fanout.tracking.Held` as it routes."""

    def __init__(self) -> None:
        # Guards writes to _holders (readers take one value, unlocked).
        self._lock = threading.Lock()
        self._holders: dict[HeldKey, frozenset[Member]] = {}

    def hold(self, key: HeldKey, member: "Member") -> None:
        with self._lock:
            self._holders[key] = self._holders.get(key, _EMPTY) | {member}

    def forget(self, key: HeldKey, member: "Member") -> None:
        with self._lock:
            left = self._holders.get(key, _EMPTY) - {member}
            if left:
                self._holders[key] = left
            else:
                self._holders.pop(key, None)

    def get(self, key: HeldKey | None) -> "frozenset[Member] | None":
        return self._holders.get(key) if key is not None else None

    def __len__(self) -> int:
        return len(self._holders)
