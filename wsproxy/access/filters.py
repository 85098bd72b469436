"""Subscription filters: a safe subset of MongoDB query syntax, run in Python.

A browser subscribes with ``?filter=<json>``, a MongoDB-style query over the
change event, e.g. ``{"operationType": {"$in": ["insert", "update"]},
"fullDocument.total": {"$gte": {"$numberDecimal": "100"}}}``. Allowed:
``$eq $ne $gt $gte $lt $lte $in $nin $exists $not`` on fields, ``$and $or``
on documents, Extended JSON values (``$oid``, ``$date``...). Anything else
is rejected with a FilterError.

Why Python rather than a ``$match`` stage: one change stream is shared by
many clients, so per-client filters cannot live in the pipeline, and passing
user-written queries to the server would invite ``$where``/``$function`` and
expensive scans. A small whitelisted language evaluated here leaves the
server alone; compiling it to closures once keeps the per-event cost low.

Semantics follow MongoDB: dotted paths descend into arrays, equality with an
array matches any element, ``$ne``/``$nin``/``$not`` match missing fields,
``null`` matches missing, ordering only holds within one BSON type bracket
(all numeric types compare with each other; ``true`` is not ``1``), and
embedded-document equality is exact, key order included.
"""

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, cast

from bson import json_util
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from ..errors import FilterError
from ..protocol import clip_utf8

_FIELD_OPS = {
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$not",
}
_RANGE_OPS = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_COMPOUND = (Mapping, list, tuple)
_ESCAPE = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]")

# Type brackets: values from different brackets never compare or equal.
_NULL, _NUM, _STR, _BIN, _OID, _BOOL, _DATE, _TS = range(8)
_EXACT = {str: _STR, int: _NUM, Int64: _NUM, bool: _BOOL}
_MISSING = object()  # where a path leads nowhere; only null and $exists see it
_NAN = object()  # NaN equals NaN (as in MongoDB) but is never ordered


# A test of the values a path reaches (or of a whole event).
_Test = Callable[[Any], bool]
# A field path: (component, its index if it is a number), ...
_Path = tuple[tuple[str, int | None], ...]


class Predicate(Protocol):
    """A compiled filter (:func:`compile_filter`): ``pred(event) -> bool``,
    carrying its filter."""

    spec: Mapping[str, Any]
    text: str
    terms: int
    fields: frozenset[str]

    def __call__(self, event: Any) -> bool: ...


# Errors travel as HTTP reasons and close reasons: cut to UTF-8 bytes.
_clip = clip_utf8


def _fail(message: str, at: object = None) -> NoReturn:
    if at is not None:
        message += f" (at {_clip(at, 40)})"
    raise FilterError(_clip(message, 120))


def _key(value: Any) -> tuple[int, Any] | None:
    """(bracket, comparable) for a BSON value, or None for types we never match."""
    kind = type(value)
    if kind in _EXACT:  # by exact type, since bool is an int subclass
        return (_EXACT[kind], value)
    if kind is float:
        return (_NUM, _NAN if value != value else value)
    if value is None:
        return (_NULL, 0)
    if kind is Decimal128:
        number = value.to_decimal()
        return (_NUM, _NAN if number.is_nan() else number)
    if isinstance(value, datetime):
        if value.utcoffset() is not None:  # PyMongo decodes naive UTC; match that
            value = value.astimezone(UTC).replace(tzinfo=None)
        return (_DATE, value)
    if isinstance(value, ObjectId):
        return (_OID, value.binary)
    if isinstance(value, Timestamp):
        return (_TS, (value.time, value.inc))
    if isinstance(value, bytes):  # plain bytes is subtype 0; BSON orders length first
        return (_BIN, (len(value), getattr(value, "subtype", 0), bytes(value)))
    return None


def _same(value: Any, literal: Any) -> bool:
    """MongoDB equality of an event value with a validated spec literal."""
    if isinstance(literal, Mapping):
        return (
            isinstance(value, Mapping)
            and len(value) == len(literal)
            and all(
                kv == kl and _same(vv, vl)
                for (kv, vv), (kl, vl) in zip(
                    value.items(), literal.items(), strict=True
                )
            )
        )
    if isinstance(literal, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(literal)
            and all(_same(v, lit) for v, lit in zip(value, literal, strict=True))
        )
    return _key(value) == _key(literal)


def _resolve(doc: Any, parts: _Path) -> list[Any]:
    """Every value a dotted path reaches, descending into arrays like MongoDB."""
    values = [doc]
    for part, index in parts:
        found: list[Any] = []
        for value in values:
            if type(value) is dict or isinstance(value, Mapping):
                found.append(value.get(part, _MISSING))
            elif type(value) is list:
                if index is not None:  # "items.1" indexes, and is a key in subdocuments
                    found.append(value[index] if index < len(value) else _MISSING)
                    found.extend(
                        e[part] for e in value if isinstance(e, Mapping) and part in e
                    )
                else:
                    found.extend(
                        e.get(part, _MISSING) for e in value if isinstance(e, Mapping)
                    )
            else:
                found.append(_MISSING)
        values = found
    return values


def _candidates(values: list[Any]) -> Iterator[Any]:
    # An array matches if the array itself or any element does (one level only).
    for value in values:
        if type(value) is list:
            yield from value
        yield value


def _is_null(values: list[Any]) -> bool:
    return not values or any(
        v is None or v is _MISSING or (type(v) is list and any(e is None for e in v))
        for v in values
    )


def _exists(values: list[Any]) -> bool:
    return any(v is not _MISSING for v in values)


def _never(values: list[Any]) -> bool:
    return False


def _all(tests: list[_Test]) -> _Test:
    return tests[0] if len(tests) == 1 else (lambda arg: all(t(arg) for t in tests))


def _negate(test: _Test) -> _Test:
    return lambda values: not test(values)


def _literal(value: Any, at: object) -> Any:
    """Check a spec value is plain data we can compare, and return it."""
    if isinstance(
        value, (Regex, re.Pattern)
    ):  # json_util turns {"$regex": ...} into these
        _fail("filter: unsupported operator $regex", at)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                _fail("filter: document keys must be strings", at)
            if key.startswith("$"):  # Extended JSON wrappers are already values by now
                _fail(f"filter: unexpected {_clip(key, 24)} in a plain value", at)
            _literal(item, at)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _literal(item, at)
    else:
        try:
            known = _key(value) is not None
        except (ArithmeticError, ValueError):  # e.g. a datetime too big to move to UTC
            known = False
        if not known:
            _fail(
                f"filter: unsupported value type {_clip(type(value).__name__, 24)}", at
            )
    return value


def _in_test(items: Iterable[Any], at: object) -> _Test:
    """Equality with any of ``items``; ``{"$eq": x}`` is ``{"$in": [x]}``."""
    items = [_literal(item, at) for item in items]
    if len(items) == 1 and items[0] is None:
        return _is_null
    has_null = any(item is None for item in items)
    compound = [item for item in items if isinstance(item, _COMPOUND)]
    keys = {_key(i) for i in items if i is not None and not isinstance(i, _COMPOUND)}

    def test(values: list[Any]) -> bool:
        if has_null and _is_null(values):
            return True
        for c in _candidates(values):
            if _key(c) in keys or (
                compound and any(_same(c, item) for item in compound)
            ):
                return True
        return False

    return test


def _range_test(op: str, value: Any, at: object) -> _Test:
    value = _literal(value, at)
    if isinstance(value, _COMPOUND):
        _fail(f"filter: {op} needs a single value, not an object or list", at)
    inclusive = op in ("$gte", "$lte")
    if (
        value is None
    ):  # as in MongoDB: {$gte: null} is {$eq: null}, {$gt: null} is nothing
        return _is_null if inclusive else _never
    bracket, ref = cast(tuple[int, Any], _key(value))  # _literal checked it
    if ref is _NAN:
        return _in_test([value], at) if inclusive else _never
    compare = _RANGE_OPS[op]

    def test(values: list[Any]) -> bool:
        for c in _candidates(values):
            key = _key(c)
            if (
                key
                and key[0] == bracket
                and key[1] is not _NAN
                and compare(key[1], ref)
            ):
                return True
        return False

    return test


def _op_test(op: str, arg: Any, at: object) -> _Test:
    if op not in _FIELD_OPS:
        _fail(f"filter: unsupported operator {_clip(op, 32)}", at)
    if op in ("$in", "$nin") and not isinstance(arg, (list, tuple)):
        _fail(f"filter: {op} needs a list", at)
    if op in ("$eq", "$ne", "$in", "$nin"):
        test = _in_test(arg if op in ("$in", "$nin") else [arg], at)
        return test if op in ("$eq", "$in") else _negate(test)
    if op in _RANGE_OPS:
        return _range_test(op, arg, at)
    if op == "$exists":
        if not isinstance(arg, bool):  # MongoDB's truthy numbers only add confusion
            _fail("filter: $exists needs true or false", at)
        return _exists if arg else _negate(_exists)
    # $not: operator documents only; a regex or plain value would be ambiguous.
    if not isinstance(arg, Mapping) or not _is_op_doc(arg, at):
        _fail('filter: $not needs an operator object like {"$gt": 1}', at)
    return _negate(_all([_op_test(k, v, at) for k, v in arg.items()]))


def _is_op_doc(value: Mapping[Any, Any], at: object) -> bool:
    dollar = [isinstance(k, str) and k.startswith("$") for k in value]
    if any(dollar) and not all(dollar):  # MongoDB would silently match a literal doc
        _fail("filter: cannot mix operators and plain keys", at)
    return any(dollar)


def _path(path: object) -> _Path:
    if not isinstance(path, str) or not path:
        _fail("filter: field path must be a non-empty string")
    parts = path.split(".")
    if "" in parts:
        _fail("filter: empty component in field path", path)
    if any(p.startswith("$") for p in parts):
        _fail("filter: field path component may not start with $", path)
    return tuple((p, int(p) if p.isascii() and p.isdigit() else None) for p in parts)


def _compile_doc(doc: Mapping[Any, Any]) -> _Test:
    # Tests of an event; the lambdas bind their loop values as defaults.
    tests: list[Callable[..., bool]] = []
    for key, value in doc.items():
        if isinstance(key, str) and key.startswith("$"):
            if key not in ("$and", "$or"):
                _fail(f"filter: unsupported operator {_clip(key, 32)}")
            if not isinstance(value, (list, tuple)) or not value:
                _fail(f"filter: {key} needs a non-empty list of objects")
            if not all(isinstance(item, Mapping) for item in value):
                _fail(f"filter: {key} items must be objects")
            subs = [_compile_doc(item) for item in value]
            tests.append(
                _all(subs)
                if key == "$and"
                else (lambda event, subs=subs: any(s(event) for s in subs))
            )
            continue
        parts = _path(key)
        if isinstance(value, Mapping) and _is_op_doc(value, key):
            field = _all([_op_test(op, arg, key) for op, arg in value.items()])
        else:
            field = _in_test([value], key)
        tests.append(
            lambda event, parts=parts, field=field: field(_resolve(event, parts))
        )
    return _all(tests) if tests else (lambda event: True)


def _text_too_deep(text: str, limit: int) -> bool:
    """Whether JSON text nests brackets beyond ``limit``; iterative, unlike
    json.loads."""
    # Drop escapes, then strings, then all but brackets; each regex is linear.
    text = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    depth = 0
    for ch in text:
        depth += 1 if ch in "[{" else -1
        if depth > limit:
            return True
    return False


def _check_shape(spec: Any, max_depth: int, max_nodes: int) -> int:
    """Depth and size limits, checked iteratively before any recursive
    compile; returns the number of terms (fields, operators and values)."""
    nodes = 0
    stack = [(spec, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            _fail(f"filter nested too deep (max {max_depth})")
        for child in value.values() if isinstance(value, Mapping) else value:
            nodes += 1
            if nodes > max_nodes:
                _fail(f"filter too complex: more than {max_nodes} terms")
            if isinstance(child, _COMPOUND):
                stack.append((child, depth + 1))
    return nodes


def terms(spec: Mapping[str, Any]) -> int:
    """How many terms (fields, operators, values) a loaded filter has: what
    evaluating it costs, roughly, and what a principal is charged for it."""
    return max(1, _check_shape(spec, max_depth=1 << 16, max_nodes=1 << 62))


def canonical(spec: Mapping[str, Any]) -> str:
    """A loaded filter as compact canonical Extended JSON: equal for two
    filters that differ only in how their text was written (white space,
    escapes, number spellings of the same Extended JSON value). Key order
    is kept: it is part of embedded-document equality."""
    return json_util.dumps(
        spec,
        json_options=json_util.CANONICAL_JSON_OPTIONS,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def document_paths(spec: Mapping[str, Any]) -> frozenset[str]:
    """The first component of every field path the filter tests
    (``fullDocument``, ``operationType``...)."""
    found = set()
    stack = [spec]
    while stack:
        doc = stack.pop()
        for key, value in doc.items():
            if key in ("$and", "$or"):
                stack.extend(item for item in value if isinstance(item, Mapping))
            elif isinstance(key, str):
                found.add(key.split(".", 1)[0])
    return frozenset(found)


def load_filter(
    spec: str | Mapping[str, Any],
    *,
    max_bytes: int = 4096,
    max_depth: int = 8,
    max_nodes: int = 200,
) -> Mapping[str, Any]:
    """A filter (JSON text or dict) as a checked mapping: valid JSON, an
    object, within the size and depth limits (FilterError otherwise). The
    operators are checked when it is compiled."""
    too_deep = f"filter nested too deep (max {max_depth})"
    if isinstance(spec, str):
        size = len(spec.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            _fail(f"filter too large: {size} bytes > {max_bytes}")
        # Extended JSON wrappers ({"$date": {"$numberLong": ...}}) add levels
        # that vanish on parsing; the exact depth is checked afterwards.
        if _text_too_deep(spec, max_depth + 3):
            _fail(too_deep)
        try:
            spec = json_util.loads(spec)
        except RecursionError:
            _fail(too_deep)
        except Exception as exc:  # noqa: BLE001 - json_util raises many types
            _fail(f"filter is not valid JSON: {exc}")
    if not isinstance(spec, Mapping):
        _fail("filter must be a JSON object")
    _check_shape(spec, max_depth, max_nodes)
    return spec


def compile_filter(
    spec: str | Mapping[str, Any],
    *,
    max_bytes: int = 4096,
    max_depth: int = 8,
    max_nodes: int = 200,
) -> Predicate:
    """Compile a filter (JSON text or dict) into ``pred(event) -> bool``.

    Raises FilterError for anything outside the safe subset or the limits.
    The predicate never raises: an event it cannot judge does not match.
    It carries ``text`` (:func:`canonical`), ``terms`` (:func:`terms`) and
    ``fields`` (:func:`document_paths`).
    """
    too_deep = f"filter nested too deep (max {max_depth})"
    spec = load_filter(
        spec, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes
    )
    try:
        root = _compile_doc(spec)
    except RecursionError:  # only if a caller set max_depth far too high
        _fail(too_deep)

    def predicate(event: Any) -> bool:
        try:
            return bool(root(event))
        except Exception:  # noqa: BLE001 - hostile shapes: fail closed
            return False

    compiled = cast(Predicate, predicate)  # the function, with its filter
    compiled.spec = spec
    compiled.text = canonical(spec)
    compiled.terms = terms(spec)
    compiled.fields = document_paths(spec)
    return compiled
