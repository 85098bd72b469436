"""What one client receives: namespaces, operation types and a filter.

A subscription is parsed from the WebSocket URL before the upgrade, so a bad
one is an HTTP 400 with a reason, never a half-open socket.
"""

from . import codec

_ALL = None


class Subscription:
    """Decides whether a change goes to a client and in which encoding.

    ``namespaces``: set of ``"db"`` / ``"db.coll"`` strings, or None for all.
    ``ops``: set of operation types, or None for all.
    ``predicate``: compiled filter (``raw event -> bool``), or None.
    """

    __slots__ = ("namespaces", "ops", "predicate")

    def __init__(self, namespaces=_ALL, ops=_ALL, predicate=None):
        self.namespaces = frozenset(namespaces) if namespaces else _ALL
        self.ops = frozenset(ops) if ops else _ALL
        self.predicate = predicate

    def wants(self, change):
        raw = change.raw
        if self.ops is not _ALL and raw.get("operationType") not in self.ops:
            return False
        if self.namespaces is not _ALL and not self._ns_match(raw.get("ns")):
            return False
        if self.predicate is not None:
            return self.predicate(raw)
        return True

    def _ns_match(self, ns):
        if not isinstance(ns, dict):
            return False
        db = ns.get("db")
        if db in self.namespaces:
            return True
        return f"{db}.{ns.get('coll')}" in self.namespaces

    def frame(self, change):
        return change.frame


EVERYTHING = Subscription()
