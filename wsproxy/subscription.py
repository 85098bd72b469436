"""What one client receives: namespaces, operation types, a filter, and
which fields are hidden from it.

A subscription is parsed from the WebSocket URL before the upgrade, so a bad
one is an HTTP 400 with a reason, never a half-open socket. It combines what
the client asked for with what its principal is granted: the client can only
narrow its grant, never widen it.
"""

import re

from bson import json_util

from . import documentquery
from .errors import ClientError, FilterError
from .filters import compile_filter, load_filter

_ALL = None
KNOWN_PARAMS = frozenset(
    {"resume_after", "ns", "ops", "filter", "access_token", "snapshot", "sort", "limit"}
)
OPERATION_TYPES = frozenset(
    {
        "insert",
        "update",
        "replace",
        "delete",
        "drop",
        "rename",
        "dropDatabase",
        "invalidate",
        "createIndexes",
        "dropIndexes",
        "create",
        "modify",
        "shardCollection",
        "refineCollectionShardKey",
        "reshardCollection",
    }
)
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-.$]{1,120})?")
MAX_NAMESPACES = 32


def _within(ns, scope):
    """Is namespace ``ns`` ("db" or "db.coll") inside ``scope``?"""
    return not scope or ns == scope or ns.startswith(scope + ".")


def _covers(grant, ns):
    """Does a grant (set of "db"/"db.coll") cover ``ns``?"""
    return grant is None or ns in grant or ns.split(".", 1)[0] in grant


class Subscription:
    """Decides whether a change goes to a client and in which encoding.

    Only None means "all": an empty set of namespaces or operation types
    matches nothing (fail closed). ``rules`` are the operator's predicates
    (a principal's filter): they see the whole event, so a hidden field
    cannot make them pass. ``predicates`` are the client's own
    (``?filter=``): they see the event as the client would, so a hidden
    field cannot be probed with them.

    ``snapshot`` is a :class:`~wsproxy.documentquery.DocumentQuery` for a
    live-documents subscription (see :mod:`wsproxy.documents`), else None.

    ``key``: equal for two subscriptions that select and encode the same
    changes (clients with equal keys can share a compression context, see
    :mod:`wsproxy.compression`); None if unknown.
    """

    __slots__ = (
        "namespaces",
        "ops",
        "rules",
        "predicates",
        "hide",
        "snapshot",
        "key",
    )

    def __init__(
        self,
        namespaces=_ALL,
        ops=_ALL,
        predicates=(),
        hide=(),
        rules=(),
        snapshot=None,
        key=None,
    ):
        self.namespaces = _ALL if namespaces is None else frozenset(namespaces)
        self.ops = _ALL if ops is None else frozenset(ops)
        self.rules = tuple(rules)
        self.predicates = tuple(predicates)
        self.hide = tuple(sorted(set(hide)))
        self.snapshot = snapshot
        self.key = key

    def matches(self, change):
        """The operator's rules and the client's filter, without the
        namespace and operation checks (a live-documents subscription
        judges documents this way)."""
        raw = change.raw
        if not all(rule(raw) for rule in self.rules):
            return False
        if self.predicates:
            seen = change.redacted_event(self.hide) if self.hide else raw
            return all(predicate(seen) for predicate in self.predicates)
        return True

    def wants(self, change):
        raw = change.raw
        if self.ops is not _ALL and raw.get("operationType") not in self.ops:
            return False
        if self.namespaces is not _ALL and not self._ns_match(raw.get("ns")):
            return False
        if not all(rule(raw) for rule in self.rules):
            return False
        if self.predicates:
            seen = change.redacted_event(self.hide) if self.hide else raw
            return all(predicate(seen) for predicate in self.predicates)
        return True

    def _ns_match(self, ns):
        if not isinstance(ns, dict):
            return False
        db = ns.get("db")
        if db in self.namespaces:
            return True
        return f"{db}.{ns.get('coll')}" in self.namespaces

    def frame(self, change, deflate_bits=None):
        """The frame of ``change`` for this subscription, compressed for a
        client that negotiated permessage-deflate with ``deflate_bits``."""
        if deflate_bits is not None:
            return change.deflated_frame(self.hide, deflate_bits)
        return change.redacted_frame(self.hide) if self.hide else change.frame


EVERYTHING = Subscription()


def _split(values, name, limit):
    items = [v.strip() for value in values for v in value.split(",")]
    items = [v for v in items if v]
    if not items:
        raise ClientError(f"{name}: empty")
    if len(items) > limit:
        raise ClientError(f"{name}: more than {limit} values")
    return items


def parse(
    args,
    *,
    scope,
    principal,
    operator_hide=(),
    filter_limits=None,
    snapshot_max_docs=10000,
):
    """Build a Subscription from the WebSocket URL's query ``args`` (a
    werkzeug MultiDict) for ``principal``; raises ClientError (400/403)."""
    unknown = sorted(set(args) - KNOWN_PARAMS)
    if unknown:
        raise ClientError(f"unknown parameter {unknown[0][:40]!r}")
    grant = principal.namespaces
    if grant is not None and not grant:
        # An empty grant is nothing, not everything.
        raise ClientError("no namespaces are granted", status=403)
    namespaces = None
    if "ns" in args:
        namespaces = _split(args.getlist("ns"), "ns", MAX_NAMESPACES)
        for ns in namespaces:
            if not _NAME.fullmatch(ns):
                raise ClientError(f"ns: {ns[:60]!r} is not 'db' or 'db.coll'")
            if not (_within(ns, scope) or _within(scope, ns)):
                raise ClientError(
                    f"ns: {ns[:60]} is outside the watched "
                    f"scope {scope or '(deployment)'}"
                )
            if not _covers(grant, ns):
                raise ClientError(f"ns: {ns[:60]} is not granted", status=403)
    elif grant is not None:
        namespaces = sorted(grant)
    ops = None
    if "ops" in args:
        ops = _split(args.getlist("ops"), "ops", len(OPERATION_TYPES))
        for op in ops:
            if op not in OPERATION_TYPES:
                raise ClientError(f"ops: unknown operation type {op[:40]!r}")
    predicates = []
    limits = filter_limits or {}
    spec = None
    if "filter" in args:
        texts = args.getlist("filter")
        if len(texts) != 1:
            raise FilterError("filter: give it once")
        spec = load_filter(texts[0], **limits)
        predicates.append(compile_filter(spec, **limits))
    rules = []
    if principal.filter is not None:
        rules.append(compile_filter(principal.filter))
    hide = tuple(operator_hide) + principal.hide
    snapshot = None
    if "snapshot" in args:
        snapshot = documentquery.parse(
            args,
            namespaces=namespaces,
            client_spec=spec,
            principal_filter=principal.filter,
            hide=hide,
            max_docs=snapshot_max_docs,
        )
    elif "sort" in args or "limit" in args:
        raise ClientError("sort and limit apply to snapshot=1 subscriptions only")
    key = None
    if snapshot is None:
        key = (
            None if namespaces is None else tuple(sorted(set(namespaces))),
            None if ops is None else tuple(sorted(set(ops))),
            texts[0] if "filter" in args else None,
            _rule_text(principal.filter),
            tuple(sorted(set(hide))),
        )
    return Subscription(
        namespaces, ops, predicates, hide, rules=rules, snapshot=snapshot, key=key
    )


def _rule_text(rule):
    """A principal's filter as text, to tell equal ones apart."""
    if rule is None or isinstance(rule, str):
        return rule
    return json_util.dumps(rule)
