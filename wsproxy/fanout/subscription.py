"""What one client receives: namespaces, operation types, a filter, and
which fields are hidden from it.

A subscription is parsed from the WebSocket URL before the upgrade, so a bad
one is an HTTP 400 with a reason, never a half-open socket. It combines what
the client asked for with what its principal is granted: the client can only
narrow its grant, never widen it.
"""

import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..access import documentquery
from ..access.filters import compile_filter, load_filter
from ..access.watchspec import never_streamed
from ..errors import ClientError, FilterError
from ..transport import codec
from ..transport.codec import Shape

if TYPE_CHECKING:
    from ..access.documentquery import DocumentQuery
    from ..access.principal import Principal
    from ..transport.codec import Change

_ALL = None
KNOWN_PARAMS = frozenset(
    {
        "resume_after",
        "ns",
        "ops",
        "filter",
        "access_token",
        "snapshot",
        "sort",
        "limit",
        # A reconnect ticket (wsproxy.limits.tickets): read by the admission.
        "ticket",
    }
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
# Event fields that hold a document's content: a filter on them cannot
# judge a delete (which has none) or a document leaving by itself.
DOCUMENT_FIELDS = frozenset({"fullDocument", codec.BEFORE_FIELD, "updateDescription"})
# Operations after which a document may no longer match (and so leave).
LEAVING_OPS = frozenset({"update", "replace"})
_UNDECIDED = object()
_ABSENT = object()

# A filter: the operator's rules and the client's predicates
# (wsproxy.access.filters.Predicate, or any such function).
Rule = Callable[[Any], bool]


class QueryArgs(documentquery.QueryArgs, Protocol):
    """The WebSocket URL's query, as a werkzeug MultiDict gives it (a pure
    module imports no werkzeug): its names, and every value of one."""

    def __iter__(self) -> Iterator[str]: ...

    def getlist(self, key: str, /) -> list[str]: ...


def _within(ns: str, scope: str) -> bool:
    """Is namespace ``ns`` ("db" or "db.coll") inside ``scope``?"""
    return not scope or ns == scope or ns.startswith(scope + ".")


def _covers(grant: frozenset[str] | None, ns: str) -> bool:
    """Does a grant (set of "db"/"db.coll") cover ``ns``?"""
    return grant is None or ns in grant or ns.split(".", 1)[0] in grant


class Subscription:
    """Decides what of each change goes to a client.

    Only None means "all": an empty set of namespaces or operation types
    matches nothing (fail closed). ``rules`` are the operator's predicates
    (a principal's filter): they see the whole event, so a hidden field
    cannot make them pass. ``predicates`` are the client's own
    (``?filter=``): they see the event as the client would, so a hidden
    field cannot be probed with them.

    ``snapshot`` is a :class:`~wsproxy.access.documentquery.DocumentQuery` for a
    live-documents subscription (see :mod:`wsproxy.live.documents`), else None.

    ``key``: equal for two subscriptions that select and encode the same
    changes, whatever the spelling of their filters (connections with equal
    keys judge a change once, see :meth:`decide`, and can share a
    compression context, see :mod:`wsproxy.transport.compression`); None for a
    live-documents subscription. ``terms``: what evaluating its filters
    costs, as :func:`wsproxy.access.filters.terms` counts it (charged to the
    principal, see :mod:`wsproxy.limits.budget`). ``tracks``: whether a filter
    tests the document's content, so that a delete or a change that takes
    a document out of the view can only be judged by what the client was
    sent (see :mod:`wsproxy.fanout.tracking`).
    """

    __slots__ = (
        "namespaces",
        "ops",
        "rules",
        "predicates",
        "hide",
        "snapshot",
        "key",
        "terms",
        "tracks",
    )

    def __init__(
        self,
        namespaces: Iterable[str] | None = _ALL,
        ops: Iterable[str] | None = _ALL,
        predicates: Iterable[Rule] = (),
        hide: Iterable[str] = (),
        rules: Iterable[Rule] = (),
        snapshot: "DocumentQuery | None" = None,
        key: Hashable | None = None,
    ) -> None:
        self.namespaces = _ALL if namespaces is None else frozenset(namespaces)
        self.ops = _ALL if ops is None else frozenset(ops)
        self.rules = tuple(rules)
        self.predicates = tuple(predicates)
        self.hide = tuple(sorted(set(hide)))
        self.snapshot = snapshot
        self.key = key
        filters = self.rules + self.predicates
        self.terms = sum(getattr(f, "terms", 1) for f in filters)
        self.tracks = any(
            not getattr(f, "fields", DOCUMENT_FIELDS).isdisjoint(DOCUMENT_FIELDS)
            for f in filters
        )

    # -- judging one change ---------------------------------------------------

    def decide(self, change: "Change") -> Shape | None:
        """What this subscription is sent of ``change``: a
        :class:`~wsproxy.transport.codec.Shape`, or None (nothing). Decided once per
        subscription key and change (``change.decisions``), whichever
        connection or thread asks first.

        Each image of the document is judged on its own: the event as it
        is (its ``fullDocument``, the document after the change), and,
        when the event carries a pre-image, the event with that pre-image
        as its ``fullDocument`` and no update description (the document
        before). A delete with a pre-image is decided by the document as
        it was. An update or replace that takes the document out of the
        view (before admitted, after not) is a ``leave`` (its key, never
        the new content); one that brings it in is sent without the
        pre-image; and a pre-image is only ever sent where it is admitted
        too. Without a pre-image, deletes and leaves are decided by what
        the connection holds (:mod:`wsproxy.fanout.tracking`).
        """
        key = self.key
        if key is not None:
            found = change.decisions.get(key, _UNDECIDED)
            if found is not _UNDECIDED:
                return found
        shape = self._decide(change)
        if key is not None:
            change.decisions[key] = shape
        return shape

    def _decide(self, change: "Change") -> Shape | None:
        raw = change.raw
        op = raw.get("operationType")
        if self.ops is not _ALL and op not in self.ops:
            return None
        if self.namespaces is not _ALL and not self._ns_match(raw.get("ns")):
            return None
        if not self.rules and not self.predicates:
            return Shape.CHANGE
        before = raw.get(codec.BEFORE_FIELD)
        if not isinstance(before, Mapping):
            return Shape.CHANGE if self.matches(change) else None
        in_before = self.matches(change, before=True)
        if op == "delete":
            return Shape.CHANGE if in_before else None
        if self.matches(change):
            return Shape.CHANGE if in_before else Shape.CHANGE_WITHOUT_BEFORE
        after = raw.get("fullDocument", _ABSENT)
        if (
            in_before
            and op in LEAVING_OPS
            and (after is None or isinstance(after, Mapping))
        ):
            # The new document does not match, or (updateLookup's null) it
            # is gone: either way it is no longer in the view.
            return Shape.LEAVE
        return None

    def admits(
        self, event: Mapping[str, Any], seen: Callable[[], Mapping[str, Any]]
    ) -> bool:
        """The filter rule, once: the operator's rules judge the whole
        ``event``; the client's filter judges ``seen()``, the event as the
        client may see it (called only when there is a client filter)."""
        if not all(rule(event) for rule in self.rules):
            return False
        if not self.predicates:
            return True
        shown = seen()  # once, whatever the number of predicates
        return all(predicate(shown) for predicate in self.predicates)

    def matches(self, change: "Change", *, before: bool = False) -> bool:
        """Whether a document image of ``change`` is in the view (see
        :meth:`admits`): the document after the change, or with ``before``
        the pre-image as the document. Without the namespace and operation
        checks: :meth:`decide` makes those, and a live-documents
        subscription judges documents by this alone."""
        if before:
            return self.admits(
                change.before_view(), lambda: change.before_view(self.hide)
            )
        return self.admits(change.raw, lambda: change.redacted_event(self.hide))

    def _ns_match(self, ns: object) -> bool:
        if not isinstance(ns, dict):
            return False
        namespaces = cast("frozenset[str]", self.namespaces)  # not _ALL: see _decide
        db = ns.get("db")
        if db in namespaces:
            return True
        return f"{db}.{ns.get('coll')}" in namespaces

    def frame(
        self,
        change: "Change",
        deflate_bits: int | None = None,
        shape: Shape | None = None,
    ) -> bytes:
        """The frame of ``change`` in ``shape`` (by default what
        :meth:`decide` says) for this subscription, compressed for a
        client that negotiated permessage-deflate with ``deflate_bits``
        (never a ``leave``: it goes plain, like every control message)."""
        if shape is None:
            shape = self.decide(change) or Shape.CHANGE
        if deflate_bits is not None and shape is not Shape.LEAVE:
            return change.deflated_for(self.hide, shape, deflate_bits)
        return change.frame_for(self.hide, shape)


EVERYTHING = Subscription()


def _split(values: Iterable[str], name: str, limit: int) -> list[str]:
    items = [v.strip() for value in values for v in value.split(",")]
    items = [v for v in items if v]
    if not items:
        raise ClientError(f"{name}: empty")
    if len(items) > limit:
        raise ClientError(f"{name}: more than {limit} values")
    return items


def parse(
    args: QueryArgs,
    *,
    scope: str,
    principal: "Principal",
    operator_hide: Iterable[str] = (),
    filter_limits: Mapping[str, int] | None = None,
    snapshot_max_docs: int = 10000,
) -> Subscription:
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
            if never_streamed(*ns.split(".", 1)):
                # Whatever the grant: the change stream never covers them,
                # and a snapshot must not read what it could not deliver.
                raise ClientError(
                    f"ns: {ns[:60]} is never streamed (admin, local, config "
                    "and system.* collections)",
                    status=403,
                )
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
        # Normalised: filters as canonical text, so two spellings of one
        # filter are one subscription (one decision per change, one
        # compression context).
        key = (
            None if namespaces is None else tuple(sorted(set(namespaces))),
            None if ops is None else tuple(sorted(set(ops))),
            tuple(p.text for p in predicates),
            tuple(r.text for r in rules),
            tuple(sorted(set(hide))),
        )
    return Subscription(
        namespaces, ops, predicates, hide, rules=rules, snapshot=snapshot, key=key
    )
