"""What a snapshot subscription asks MongoDB for: one collection, a query,
a sort and a limit, checked and translated from the WebSocket URL.

Filters are written on event paths (``fullDocument.status``), because the
same filter then judges every change after the snapshot. A snapshot reads
documents, so only the paths that name a document's content translate:
``fullDocument.<path>`` becomes ``<path>`` and ``documentKey._id`` becomes
``_id``; any other path (``operationType``, ``ns``...) is refused. The
operators are the filter language's safe subset (see :mod:`wsproxy.access.filters`),
so the query MongoDB runs can be no more than that.

The translated query only narrows what MongoDB reads. What a client holds
is decided by the compiled filters, in Python, on every document and every
change alike (see :mod:`wsproxy.live.documents`), so the two can never disagree
about a document that is sent.

A client's own filter and sort see the document as the client would, with
hidden fields removed; MongoDB sees the whole document. So neither may
touch a hidden field (a 400): otherwise which documents come back, or
their order, would reveal what was hidden.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import ClientError, FilterError
from .filters import load_filter
from .redaction import relation

MAX_SORT_KEYS = 3
# A snapshot message holds documents up to about this many bytes of JSON
# (a larger document goes alone).
MESSAGE_BYTES = 64 * 1024
_COMPONENT = re.compile(r"[^$.][^.]*")


class QueryArgs(Protocol):
    """What :func:`parse` reads of the URL's query (a werkzeug MultiDict;
    any mapping of names to values will do)."""

    def __contains__(self, key: object, /) -> bool: ...

    def __getitem__(self, key: str, /) -> str: ...

    def get(self, key: str, /) -> str | None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DocumentQuery:
    """One collection's matching documents, in order, at most ``limit``."""

    db: str
    coll: str
    query: dict
    sort: tuple  # ((document path, 1 or -1), ...), ending with _id
    limit: int

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.coll}"


def document_path(path: str) -> str:
    """The document path an event path names (``fullDocument.a.b`` ->
    ``a.b``, ``documentKey._id`` -> ``_id``), or FilterError."""
    if path == "documentKey._id" or path.startswith("documentKey._id."):
        return path[len("documentKey.") :]
    if path.startswith("fullDocument.") and len(path) > len("fullDocument."):
        return path[len("fullDocument.") :]
    raise FilterError(
        f"snapshot: {path[:60]!r} is not a document path; write "
        "fullDocument.<field> or documentKey._id"
    )


def _check_visible(path: str, hide: Sequence[str], what: str) -> None:
    parts = path.split(".")
    for hidden in hide:
        covered, rests = relation(parts, hidden.split("."))
        if covered or rests:
            raise ClientError(f"snapshot: {what} uses a hidden field ({path[:60]})")


def to_query(
    spec: Mapping[str, Any], hide: Sequence[str] | None = None
) -> dict[str, Any]:
    """A checked filter spec (event paths) as a MongoDB query on the
    collection. With ``hide`` (the client's own filter), a path touching a
    hidden field is refused."""
    clauses: list[dict[str, Any]] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            clauses.append({key: [to_query(item, hide) for item in value]})
            continue
        path = document_path(key)
        if hide is not None:
            _check_visible(path, hide, "the filter")
        clauses.append({path: value})
    if not clauses:
        return {}
    merged: dict[str, Any] = {}
    for clause in clauses:
        ((key, value),) = clause.items()
        if key in merged:  # e.g. fullDocument._id and documentKey._id
            return {"$and": clauses}
        merged[key] = value
    return merged


def parse_sort(text: str, hide: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``-fullDocument.createdAt,fullDocument.name`` -> ((path, dir), ...),
    always ending with ``_id`` so the order is total."""
    keys: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ClientError("sort: empty key")
        direction = -1 if item.startswith("-") else 1
        path = document_path(item.lstrip("-+"))
        if not all(_COMPONENT.fullmatch(part) for part in path.split(".")):
            raise ClientError(f"sort: {path[:60]!r} is not a field path")
        _check_visible(path, hide, "the sort")
        if any(path == seen for seen, _ in keys):
            raise ClientError(f"sort: {path[:60]} given twice")
        keys.append((path, direction))
    if len(keys) > MAX_SORT_KEYS:
        raise ClientError(f"sort: more than {MAX_SORT_KEYS} keys")
    if not any(path == "_id" for path, _ in keys):
        keys.append(("_id", 1))
    return tuple(keys)


def parse_limit(text: str, max_docs: int) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise ClientError("limit: not a whole number") from None
    if not 1 <= limit <= max_docs:
        raise ClientError(f"limit: must be 1..{max_docs} (WSPROXY_SNAPSHOT_MAX_DOCS)")
    return limit


def parse(
    args: QueryArgs,
    *,
    namespaces: Sequence[str] | None,
    client_spec: Mapping[str, Any] | None,
    principal_filter: str | Mapping[str, Any] | None,
    hide: Sequence[str],
    max_docs: int,
) -> DocumentQuery:
    """The DocumentQuery of a ``snapshot=1`` URL, or ClientError.

    ``namespaces`` is the subscription's (one ``db.coll`` is required),
    ``client_spec`` the client's loaded filter (or None),
    ``principal_filter`` the principal's filter (or None) and ``hide``
    every field hidden from the client."""
    if args.get("snapshot") not in ("1", "true"):
        raise ClientError("snapshot: give snapshot=1")
    if "ops" in args:
        raise ClientError("snapshot: ops does not apply to documents")
    if namespaces is None or len(namespaces) != 1 or "." not in namespaces[0]:
        raise ClientError("snapshot: name exactly one collection with ns=db.coll")
    if any(path == "_id" or path.startswith("_id.") for path in hide):
        # Documents are held and ordered by _id: a hidden part of it would
        # show in the order, in which documents a limit keeps, and in
        # documents that the client could no longer tell apart.
        raise ClientError(
            "snapshot: _id is (partly) hidden from this client", status=403
        )
    db, coll = namespaces[0].split(".", 1)
    queries = []
    if principal_filter is not None:
        try:
            queries.append(to_query(load_filter(principal_filter)))
        except FilterError:
            # The operator's rule cannot be applied to documents: refuse
            # rather than send documents it was meant to keep out.
            raise ClientError(
                "snapshot: this principal's access rule does not apply to documents",
                status=403,
            ) from None
    if client_spec is not None:
        queries.append(to_query(client_spec, hide))
    queries = [q for q in queries if q]
    query = queries[0] if len(queries) == 1 else {"$and": queries} if queries else {}
    sort = parse_sort(args["sort"], hide) if "sort" in args else (("_id", 1),)
    limit = parse_limit(args["limit"], max_docs) if "limit" in args else max_docs
    return DocumentQuery(db, coll, query, sort, limit)
