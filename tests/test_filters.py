"""Tests for the subscription filter language (wsproxy.access.filters)."""

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from bson.binary import Binary
from bson.code import Code
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from wsproxy.access.filters import compile_filter
from wsproxy.errors import FilterError

OID = ObjectId("65a1b2c3d4e5f60718293a4b")
OID2 = ObjectId("65a1b2c3d4e5f60718293a4c")
WHEN = datetime(2024, 1, 2, 3, 4, 5)  # PyMongo decodes naive UTC

INSERT = {
    "_id": {"_data": "8265A1B2C3000000012B022C0100296E5A1004"},
    "operationType": "insert",
    "clusterTime": Timestamp(1704164645, 1),
    "wallTime": WHEN,
    "ns": {"db": "shop", "coll": "orders"},
    "documentKey": {"_id": OID},
    "fullDocument": {
        "_id": OID,
        "status": "paid",
        "total": Decimal128("19.99"),
        "qty": Int64(3),
        "price": 6.5,
        "count": 1,
        "flag": True,
        "note": None,
        "tags": ["new", "gift"],
        "scores": [3, 8, 15],
        "items": [
            {"sku": "A1", "qty": 2},
            {"sku": "B2", "qty": 1, "opts": {"color": "red"}},
        ],
        "customer": {"name": "Ada", "address": {"city": "London", "zip": "N1"}},
        "matrix": [[1, 2], [3]],
        "createdAt": WHEN,
        "blob": b"\x00\x01",
        "uuid": Binary(b"\x00" * 16, 4),
        "nan": float("nan"),
    },
}
UPDATE = {
    "_id": {"_data": "8265A1B2C4000000012B022C0100296E5A1005"},
    "operationType": "update",
    "clusterTime": Timestamp(1704164700, 3),
    "wallTime": WHEN + timedelta(minutes=1),
    "ns": {"db": "shop", "coll": "orders"},
    "documentKey": {"_id": OID2},
    "updateDescription": {
        "updatedFields": {"status": "shipped", "qty": Int64(5)},
        "removedFields": ["coupon"],
        "truncatedArrays": [],
    },
}
DELETE = {
    "_id": {"_data": "8265A1B2C5000000012B022C0100296E5A1006"},
    "operationType": "delete",
    "clusterTime": Timestamp(1704164800, 1),
    "ns": {"db": "shop", "coll": "users"},
    "documentKey": {"_id": OID},
}

OID_JSON = '{"$oid": "65a1b2c3d4e5f60718293a4b"}'

# (filter, event, expected match)
CASES = [
    # empty filter and plain equality
    ({}, INSERT, True),
    ("{}", DELETE, True),
    ({"operationType": "insert"}, INSERT, True),
    ({"operationType": "insert"}, UPDATE, False),
    ('{"ns.coll": "orders"}', INSERT, True),
    ('{"ns.coll": "orders"}', DELETE, False),
    ('{"ns": {"db": "shop", "coll": "orders"}}', INSERT, True),
    (
        '{"ns": {"coll": "orders", "db": "shop"}}',
        INSERT,
        False,
    ),  # key order matters, as in MongoDB
    ('{"ns": {"db": "shop"}}', INSERT, False),
    ('{"operationType": "insert", "ns.coll": "orders"}', INSERT, True),
    ('{"operationType": "insert", "ns.coll": "users"}', INSERT, False),
    # Extended JSON values
    ('{"documentKey._id": ' + OID_JSON + "}", INSERT, True),
    ('{"documentKey._id": ' + OID_JSON + "}", UPDATE, False),
    ('{"documentKey._id": {"$in": [' + OID_JSON + "]}}", DELETE, True),
    ('{"fullDocument.total": {"$numberDecimal": "19.99"}}', INSERT, True),
    ('{"fullDocument.total": {"$gt": {"$numberDecimal": "19.98"}}}', INSERT, True),
    ('{"fullDocument.total": {"$gt": 20}}', INSERT, False),
    ('{"fullDocument.qty": {"$numberLong": "3"}}', INSERT, True),
    ('{"fullDocument.createdAt": {"$date": "2024-01-02T03:04:05Z"}}', INSERT, True),
    (
        '{"fullDocument.createdAt": {"$gte": {"$date": "2024-01-01T00:00:00Z"}}}',
        INSERT,
        True,
    ),
    (
        '{"fullDocument.createdAt": '
        '{"$lt": {"$date": {"$numberLong": "1704067200000"}}}}',
        INSERT,
        False,
    ),
    ('{"wallTime": {"$lt": {"$date": "2024-01-02T03:04:30Z"}}}', UPDATE, False),
    ('{"wallTime": {"$gt": {"$date": "2024-01-02T03:04:30Z"}}}', UPDATE, True),
    (
        '{"clusterTime": {"$gte": {"$timestamp": {"t": 1704164700, "i": 1}}}}',
        UPDATE,
        True,
    ),
    (
        '{"clusterTime": {"$gte": {"$timestamp": {"t": 1704164700, "i": 1}}}}',
        INSERT,
        False,
    ),
    (
        '{"fullDocument.blob": {"$binary": {"base64": "AAE=", "subType": "00"}}}',
        INSERT,
        True,
    ),
    (
        '{"fullDocument.uuid": {"$uuid": "00000000-0000-0000-0000-000000000000"}}',
        INSERT,
        True,
    ),
    (
        '{"fullDocument.blob": {"$uuid": "00000000-0000-0000-0000-000000000000"}}',
        INSERT,
        False,
    ),
    # aware datetimes compare with PyMongo's naive UTC ones
    ({"fullDocument.createdAt": WHEN.replace(tzinfo=UTC)}, INSERT, True),
    (
        {
            "fullDocument.createdAt": datetime(
                2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))
            )
        },
        INSERT,
        True,
    ),
    # numbers compare across int, float, Int64, Decimal128
    ({"fullDocument.count": 1.0}, INSERT, True),
    ({"fullDocument.count": Int64(1)}, INSERT, True),
    ({"fullDocument.count": Decimal128("1.000")}, INSERT, True),
    ({"fullDocument.qty": 3.0}, INSERT, True),
    ({"fullDocument.price": Decimal128("6.5")}, INSERT, True),
    ({"fullDocument.price": {"$gt": Int64(6), "$lt": Decimal128("6.6")}}, INSERT, True),
    (
        {"fullDocument.total": {"$lte": 19.99}},
        INSERT,
        False,
    ),  # 19.99 as a double is below 19.99
    ({"fullDocument.total": {"$lt": 20}}, INSERT, True),
    ('{"fullDocument.qty": {"$in": [1, 2, 3.0]}}', INSERT, True),
    ('{"fullDocument.qty": {"$nin": [1, 2, 3.0]}}', INSERT, False),
    # type brackets: no ordering or equality across types
    ('{"fullDocument.status": {"$gt": 1}}', INSERT, False),
    ('{"fullDocument.status": {"$lt": 1}}', INSERT, False),
    ('{"fullDocument.status": {"$gt": "a"}}', INSERT, True),
    ('{"fullDocument.status": {"$lt": "paic"}}', INSERT, False),
    ('{"fullDocument.status": {"$lt": "paie"}}', INSERT, True),
    ('{"fullDocument.count": "1"}', INSERT, False),
    ('{"fullDocument.createdAt": {"$gt": 0}}', INSERT, False),
    ('{"documentKey._id": "65a1b2c3d4e5f60718293a4b"}', INSERT, False),
    (
        '{"documentKey._id": {"$gt": {"$oid": "000000000000000000000000"}}}',
        INSERT,
        True,
    ),
    ('{"fullDocument.note": {"$gte": 0}}', INSERT, False),
    # bool is its own bracket: true is not 1
    ('{"fullDocument.flag": true}', INSERT, True),
    ('{"fullDocument.flag": 1}', INSERT, False),
    ('{"fullDocument.count": true}', INSERT, False),
    ('{"fullDocument.flag": {"$in": [1]}}', INSERT, False),
    ('{"fullDocument.flag": {"$gt": false}}', INSERT, True),
    ('{"fullDocument.flag": {"$gt": 0}}', INSERT, False),
    ('{"fullDocument.count": {"$ne": true}}', INSERT, True),
    # null and missing
    ('{"fullDocument.note": null}', INSERT, True),
    ('{"fullDocument.coupon": null}', INSERT, True),
    ('{"fullDocument": null}', DELETE, True),
    ('{"fullDocument.status": null}', DELETE, True),
    ('{"fullDocument.status": null}', INSERT, False),
    ('{"fullDocument.status": {"$ne": null}}', INSERT, True),
    ('{"fullDocument.status": {"$ne": null}}', DELETE, False),
    ('{"fullDocument.coupon": {"$eq": null}}', INSERT, True),
    ('{"fullDocument.coupon": {"$in": [null, "X"]}}', INSERT, True),
    ('{"fullDocument.coupon": {"$gte": null}}', INSERT, True),
    ('{"fullDocument.coupon": {"$gt": null}}', INSERT, False),
    ('{"fullDocument.status.deep": null}', INSERT, True),
    ('{"fullDocument.items.opts": null}', INSERT, True),  # first item has no opts
    # $exists
    ('{"fullDocument": {"$exists": true}}', INSERT, True),
    ('{"fullDocument": {"$exists": true}}', DELETE, False),
    ('{"fullDocument": {"$exists": false}}', DELETE, True),
    ('{"fullDocument.note": {"$exists": true}}', INSERT, True),
    ('{"fullDocument.items.opts.color": {"$exists": true}}', INSERT, True),
    ('{"fullDocument.items.2": {"$exists": true}}', INSERT, False),
    ('{"updateDescription.updatedFields.status": {"$exists": true}}', UPDATE, True),
    ('{"updateDescription.truncatedArrays": {"$exists": true}}', UPDATE, True),
    ('{"updateDescription.truncatedArrays.x": {"$exists": true}}', UPDATE, False),
    # $ne / $nin match missing fields
    ('{"fullDocument.status": {"$ne": "paid"}}', INSERT, False),
    ('{"fullDocument.status": {"$ne": "paid"}}', DELETE, True),
    ('{"fullDocument.status": {"$nin": ["paid", "shipped"]}}', DELETE, True),
    ('{"fullDocument.status": {"$nin": ["shipped"]}}', INSERT, True),
    ('{"operationType": {"$in": ["insert", "update"]}}', UPDATE, True),
    ('{"operationType": {"$in": ["insert", "update"]}}', DELETE, False),
    ('{"operationType": {"$in": []}}', INSERT, False),
    ('{"operationType": {"$nin": []}}', INSERT, True),
    # arrays
    ('{"fullDocument.tags": "gift"}', INSERT, True),
    ('{"fullDocument.tags": "old"}', INSERT, False),
    ('{"fullDocument.tags": ["new", "gift"]}', INSERT, True),
    ('{"fullDocument.tags": ["gift", "new"]}', INSERT, False),
    ('{"fullDocument.tags": {"$in": ["old", "gift"]}}', INSERT, True),
    ('{"fullDocument.tags": {"$in": [["new", "gift"]]}}', INSERT, True),
    ('{"fullDocument.tags": {"$ne": "gift"}}', INSERT, False),
    ('{"fullDocument.tags": {"$nin": ["old"]}}', INSERT, True),
    ('{"fullDocument.tags.0": "new"}', INSERT, True),
    ('{"fullDocument.tags.1": "new"}', INSERT, False),
    ('{"fullDocument.tags.5": null}', INSERT, True),
    ('{"fullDocument.scores": {"$gt": 10}}', INSERT, True),
    ('{"fullDocument.scores": {"$gt": 15}}', INSERT, False),
    # each operator may be satisfied by a different element, as in MongoDB
    ('{"fullDocument.scores": {"$gt": 5, "$lt": 7}}', INSERT, True),
    ('{"fullDocument.scores": {"$gt": 15, "$lt": 7}}', INSERT, False),
    ('{"fullDocument.scores": {"$gt": 4, "$lt": 9}}', INSERT, True),
    ('{"fullDocument.items.sku": "B2"}', INSERT, True),
    ('{"fullDocument.items.qty": {"$gte": 2}}', INSERT, True),
    ('{"fullDocument.items.qty": {"$gt": 2}}', INSERT, False),
    ('{"fullDocument.items.1.sku": "B2"}', INSERT, True),
    ('{"fullDocument.items.0.sku": "B2"}', INSERT, False),
    ('{"fullDocument.items.opts.color": "red"}', INSERT, True),
    ('{"fullDocument.items": {"sku": "A1", "qty": 2}}', INSERT, True),
    ('{"fullDocument.items": {"sku": "A1"}}', INSERT, False),
    ('{"fullDocument.matrix": [1, 2]}', INSERT, True),
    ('{"fullDocument.matrix": 1}', INSERT, False),  # only one array level is unwound
    ('{"fullDocument.matrix.0": [1, 2]}', INSERT, True),
    ('{"fullDocument.customer.address.city": "London"}', INSERT, True),
    (
        '{"fullDocument.customer.address": {"city": "London", "zip": "N1"}}',
        INSERT,
        True,
    ),
    ('{"fullDocument.customer.address.city.x": "London"}', INSERT, False),
    ('{"updateDescription.removedFields": "coupon"}', UPDATE, True),
    ('{"updateDescription.updatedFields.qty": {"$gte": 5}}', UPDATE, True),
    (
        {"fullDocument.0": "x"},
        {"fullDocument": {"0": "x"}},
        True,
    ),  # numeric key on a dict
    # NaN equals NaN, but is never ordered
    ('{"fullDocument.nan": NaN}', INSERT, True),
    ('{"fullDocument.nan": {"$numberDecimal": "NaN"}}', INSERT, True),
    ('{"fullDocument.nan": {"$gte": NaN}}', INSERT, True),
    ('{"fullDocument.nan": {"$gt": 0}}', INSERT, False),
    ('{"fullDocument.nan": {"$lt": 0}}', INSERT, False),
    ('{"fullDocument.count": {"$lt": NaN}}', INSERT, False),
    ('{"fullDocument.count": {"$ne": NaN}}', INSERT, True),
    # $not
    ('{"fullDocument.scores": {"$not": {"$gt": 20}}}', INSERT, True),
    ('{"fullDocument.scores": {"$not": {"$gt": 10}}}', INSERT, False),
    ('{"fullDocument.status": {"$not": {"$in": ["paid"]}}}', DELETE, True),
    ('{"fullDocument.status": {"$not": {"$eq": "paid"}}}', INSERT, False),
    ('{"fullDocument.qty": {"$not": {"$gt": 1, "$lt": 3}}}', INSERT, True),
    ('{"fullDocument.qty": {"$not": {"$not": {"$gt": 1}}}}', INSERT, True),
    ('{"fullDocument": {"$not": {"$exists": true}}}', DELETE, True),
    # $and / $or
    (
        '{"$and": [{"operationType": "insert"}, {"fullDocument.qty": {"$gt": 2}}]}',
        INSERT,
        True,
    ),
    (
        '{"$and": [{"operationType": "insert"}, {"fullDocument.qty": {"$gt": 3}}]}',
        INSERT,
        False,
    ),
    (
        '{"$or": [{"operationType": "delete"}, {"fullDocument.status": "paid"}]}',
        INSERT,
        True,
    ),
    (
        '{"$or": [{"operationType": "delete"}, {"fullDocument.status": "paid"}]}',
        DELETE,
        True,
    ),
    (
        '{"$or": [{"operationType": "delete"}, {"fullDocument.status": "paid"}]}',
        UPDATE,
        False,
    ),
    ('{"$or": [{"ns.coll": "users"}], "operationType": "insert"}', DELETE, False),
    ('{"$or": [{"$and": [{"a": 1}, {"b": 2}]}, {"ns.db": "shop"}]}', UPDATE, True),
    ('{"$or": [{}]}', DELETE, True),
    (
        '{"$and": [{"ns.coll": "orders"}], "$or": [{"operationType": "update"}]}',
        UPDATE,
        True,
    ),
]


@pytest.mark.parametrize(
    "spec,event,expected", CASES, ids=[str(i) for i in range(len(CASES))]
)
def test_match(spec, event, expected):
    assert compile_filter(spec)(event) is expected


# (filter, text the FilterError message must contain)
REJECTED = [
    ('{"$where": "sleep(1000)"}', "unsupported operator $where"),
    ('{"$nor": [{"a": 1}]}', "unsupported operator $nor"),
    ('{"$expr": {"$eq": ["$a", 1]}}', "unsupported operator $expr"),
    ('{"$text": {"$search": "x"}}', "unsupported operator $text"),
    ('{"$jsonSchema": {}}', "unsupported operator $jsonSchema"),
    (
        '{"$function": {"body": "x", "args": [], "lang": "js"}}',
        "unsupported operator $function",
    ),
    ('{"$accumulator": {}}', "unsupported operator $accumulator"),
    ('{"$eq": 1}', "unsupported operator $eq"),
    ('{"$comment": "hi"}', "unsupported operator $comment"),
    ('{"a": {"$where": "x"}}', "unsupported operator $where (at a)"),
    ('{"a": {"$regex": "^x"}}', "unsupported operator $regex (at a)"),
    (
        '{"a": {"$not": {"$regex": "x", "$options": "i"}}}',
        "$not needs an operator object",
    ),
    ('{"a": {"$in": [{"$regex": "x"}]}}', "unsupported operator $regex"),
    ('{"a": {"$elemMatch": {"b": 1}}}', "unsupported operator $elemMatch (at a)"),
    ('{"a": {"$size": 2}}', "unsupported operator $size"),
    ('{"a": {"$type": "string"}}', "unsupported operator $type"),
    ('{"a": {"$mod": [2, 0]}}', "unsupported operator $mod"),
    ('{"a": {"$all": [1]}}', "unsupported operator $all"),
    ('{"a": {"$and": [{"b": 1}]}}', "unsupported operator $and (at a)"),
    ('{"a": {"$bogus": 1}}', "unsupported operator $bogus"),
    ('{"a": {"$in": 1}}', "$in needs a list (at a)"),
    (
        '{"fullDocument.status": {"$in": "paid"}}',
        "$in needs a list (at fullDocument.status)",
    ),
    ('{"a": {"$nin": {"x": 1}}}', "$nin needs a list (at a)"),
    ('{"a": {"$exists": 1}}', "$exists needs true or false"),
    ('{"a": {"$exists": "yes"}}', "$exists needs true or false"),
    ('{"a": {"$not": 5}}', "$not needs an operator object"),
    ('{"a": {"$not": {}}}', "$not needs an operator object"),
    ('{"a": {"$not": {"b": 1}}}', "$not needs an operator object"),
    ('{"a": {"$gt": [1, 2]}}', "$gt needs a single value"),
    ('{"a": {"$lt": {"b": 1}}}', "$lt needs a single value"),
    ('{"$and": []}', "$and needs a non-empty list"),
    ('{"$or": {"a": 1}}', "$or needs a non-empty list"),
    ('{"$or": [1, 2]}', "$or items must be objects"),
    ('{"a": {"$gt": 1, "b": 2}}', "cannot mix operators and plain keys (at a)"),
    ('{"a": {"b": 2, "$gt": 1}}', "cannot mix operators and plain keys"),
    ('{"a": {"b": {"$gt": 1}}}', "unexpected $gt in a plain value (at a)"),
    ('{"a": {"$eq": {"$ne": 1}}}', "unexpected $ne in a plain value"),
    ('{"": 1}', "field path must be a non-empty string"),
    ('{"a..b": 1}', "empty component in field path (at a..b)"),
    ('{".a": 1}', "empty component in field path"),
    ('{"a.": 1}', "empty component in field path"),
    ('{"a.$b": 1}', "may not start with $"),
    ('{"a": {"$code": "function() {}"}}', "unsupported value type Code"),
    ('{"a": {"$maxKey": 1}}', "unsupported value type MaxKey"),
    ('{"a": {"$ref": "c", "$id": 1}}', "unsupported value type DBRef"),
    ('{"a": 1', "filter is not valid JSON"),
    ("{'a': 1}", "filter is not valid JSON"),
    ("", "filter is not valid JSON"),
    ('{"a": {"$oid": "nothex"}}', "filter is not valid JSON"),
    ('[{"a": 1}]', "filter must be a JSON object"),
    ('"a"', "filter must be a JSON object"),
    ("null", "filter must be a JSON object"),
    ("42", "filter must be a JSON object"),
    ('{"$numberLong": "5"}', "filter must be a JSON object"),
    ('{"a": "' + "x" * 5000 + '"}', "filter too large: 5009 bytes > 4096"),
    ('{"a": "' + "é" * 2100 + '"}', "filter too large: 4209 bytes > 4096"),
    ("[" * 100_000, "filter too large"),
    (
        "[" * 3000,
        "filter nested too deep (max 8)",
    ),  # fits max_bytes, never reaches json
    ('{"a": ' * 9 + "1" + "}" * 9, "filter nested too deep (max 8)"),
    ('{"a": {"$in": [[[[[[[1]]]]]]]}}', "filter nested too deep (max 8)"),
    (
        '{"$or": [' + ", ".join(f'{{"a": {i}}}' for i in range(201)) + "]}",
        "filter too complex",
    ),
    (
        '{"a": {"$in": [' + ", ".join(str(i) for i in range(200)) + "]}}",
        "more than 200 terms",
    ),
    ([("a", 1)], "filter must be a JSON object"),
    (None, "filter must be a JSON object"),
    ({1: "x"}, "field path must be a non-empty string"),
    ({"a": Regex("x")}, "unsupported operator $regex"),
    ({"a": {"$in": [MaxKey()]}}, "unsupported value type MaxKey"),
    ({"a": Code("x")}, "unsupported value type Code"),
    ({"a": object()}, "unsupported value type object"),
    ({"a": {"b": {1: 2}}}, "document keys must be strings"),
]


@pytest.mark.parametrize(
    "spec,message", REJECTED, ids=[str(i) for i in range(len(REJECTED))]
)
def test_rejected(spec, message):
    with pytest.raises(FilterError) as info:
        compile_filter(spec)
    reason = str(info.value)
    assert message in reason
    assert isinstance(info.value, ValueError)
    assert len(reason.encode("utf-8")) <= 120  # fits a WebSocket close reason


def test_limits_are_configurable():
    spec = '{"a": {"$in": [1, 2, 3]}}'
    with pytest.raises(FilterError, match="too large: 25 bytes > 10"):
        compile_filter(spec, max_bytes=10)
    with pytest.raises(FilterError, match=r"nested too deep \(max 2\)"):
        compile_filter(spec, max_depth=2)
    with pytest.raises(FilterError, match="more than 4 terms"):
        compile_filter(spec, max_nodes=4)  # "a", "$in" and three items
    assert compile_filter(spec, max_depth=3, max_nodes=5)({"a": 2})
    event = 1
    for _ in range(8):
        event = {"a": event}
    assert compile_filter('{"a": ' * 8 + "1" + "}" * 8)(
        event
    )  # exactly max_depth is fine


def test_extended_json_wrappers_do_not_count_as_depth():
    # 8 real levels plus $date/$numberLong wrappers that vanish on parsing
    spec = '{"$or": [{"$and": [{"a": {"$in": [[{"$date": {"$numberLong": "0"}}]]}}]}]}'
    assert compile_filter(spec)({"a": [[datetime(1970, 1, 1)]]})


def test_deep_json_is_refused_without_recursion():
    deep = '{"a": ' * 50_000 + "1" + "}" * 50_000
    with pytest.raises(FilterError, match="nested too deep"):
        compile_filter(deep, max_bytes=10**7)
    deep_list = '{"a": {"$in": ' + "[" * 50_000 + "]" * 50_000 + "}}"
    with pytest.raises(FilterError, match="nested too deep"):
        compile_filter(deep_list, max_bytes=10**7)
    brackets_in_strings = '{"a": "' + "[" * 3000 + '"}'
    assert compile_filter(brackets_in_strings)({"a": "[" * 3000})


def test_deep_dict_spec_is_refused():
    spec = leaf = {}
    for _ in range(5000):
        leaf["a"] = {}
        leaf = leaf["a"]
    with pytest.raises(FilterError, match="nested too deep"):
        compile_filter({"x": spec})


def test_cyclic_dict_spec_is_refused():
    spec = {"a": {"$in": []}}
    spec["a"]["$in"].append(spec["a"]["$in"])
    with pytest.raises(FilterError):
        compile_filter(spec)


def test_messages_do_not_echo_huge_input():
    cases = [
        '{"$' + "w" * 3000 + '": 1}',
        '{"a": {"$' + "x" * 3000 + '": 1}}',
        '{"' + "p" * 3000 + '..": 1}',
        '{"a": {"$oid": "' + "z" * 3000 + '"}}',
        '{"' + "\U0001f600" * 900 + '": {"$in": 1}}',
        '{"\\ud800' + "p" * 100 + '": {"$in": 1}}',  # a lone surrogate in a path
    ]
    for spec in cases:
        with pytest.raises(FilterError) as info:
            compile_filter(spec)
        assert len(str(info.value).encode("utf-8")) <= 120


def test_dict_spec_uses_python_values():
    pred = compile_filter(
        {"documentKey._id": OID, "fullDocument.total": {"$gte": Decimal128("19")}}
    )
    assert pred(INSERT) is True
    assert pred(DELETE) is False


def test_compiled_predicate_is_reusable():
    pred = compile_filter('{"operationType": {"$in": ["insert", "delete"]}}')
    assert [pred(e) for e in (INSERT, UPDATE, DELETE, INSERT)] == [
        True,
        False,
        True,
        True,
    ]


class _Hostile(dict):
    def get(self, *args):
        raise RuntimeError("boom")

    def __contains__(self, key):
        raise RuntimeError("boom")


WEIRD_EVENTS = [
    {},
    None,
    [],
    "insert",
    42,
    object(),
    {"operationType": None},
    {"fullDocument": None},
    {"fullDocument": "text"},
    {"fullDocument": [1, [2, {"status": {}}], {"status": ["paid", None]}]},
    {"fullDocument": {"status": {"$gt": 1}, "qty": [[[]]], "total": {}}},
    {"fullDocument": {"qty": Decimal128("sNaN"), "total": Decimal128("-Infinity")}},
    {"fullDocument": {"qty": float("inf"), "total": float("nan"), "createdAt": "2024"}},
    {
        "fullDocument": {
            "createdAt": datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))
        }
    },
    {
        "fullDocument": {
            "createdAt": datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))
        }
    },
    {"fullDocument": {"status": Regex("paid"), "qty": MaxKey(), "tags": set([1])}},
    {"fullDocument": _Hostile(status="paid")},
    {"fullDocument": {"items": [_Hostile(sku="A1")]}},
    {"fullDocument": {"tags": tuple(["gift"]), "status": b"paid", "_id": 10**400}},
    {1: 2, None: 3, ("a",): 4},
]

WEIRD_FILTERS = [
    '{"fullDocument.status": "paid"}',
    '{"fullDocument.status": {"$ne": "paid"}}',
    '{"fullDocument.qty": {"$gt": 1}}',
    '{"fullDocument.qty": {"$lte": {"$numberDecimal": "1"}}}',
    '{"fullDocument.total": {"$nin": [1, null, [1], {"a": 1}]}}',
    '{"fullDocument.createdAt": {"$gte": {"$date": "2024-01-01T00:00:00Z"}}}',
    '{"fullDocument.items.sku": {"$in": ["A1"]}}',
    '{"fullDocument.tags.0": {"$exists": true}}',
    '{"fullDocument": {"status": "paid"}}',
    '{"fullDocument.status": {"$not": {"$in": [null]}}}',
    '{"$or": [{"fullDocument._id": {"$gte": 0}}, {"fullDocument.qty": NaN}]}',
]


@pytest.mark.parametrize("spec", WEIRD_FILTERS)
def test_evaluation_never_raises_on_odd_events(spec):
    pred = compile_filter(spec)
    for event in WEIRD_EVENTS:
        assert pred(event) in (True, False)


def _random_value(rng, depth=0):
    choices = [
        None,
        True,
        False,
        0,
        1,
        -1,
        1.5,
        float("nan"),
        Int64(2),
        Decimal128("1"),
        Decimal128("NaN"),
        "a",
        "",
        OID,
        WHEN,
        Timestamp(1, 1),
        b"x",
        Binary(b"x", 5),
    ]
    if depth < 3 and rng.random() < 0.3:
        if rng.random() < 0.5:
            return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        return {
            rng.choice("ab0"): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(3))
        }
    return rng.choice(choices)


def _random_filter(rng):
    path = rng.choice(["a", "a.b", "a.0", "b.a.b", "a.b.0.a"])
    scalars = [
        None,
        True,
        1,
        1.5,
        "a",
        {"$oid": str(OID)},
        {"$date": "2024-01-02T03:04:05Z"},
        {"$numberDecimal": "1"},
    ]
    literal = rng.choice(scalars + [[1, "a"], {"a": 1}])
    op = rng.choice(
        ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not"]
    )
    if op in ("$in", "$nin"):
        arg = [literal, 1]
    elif op == "$exists":
        arg = rng.random() < 0.5
    elif op == "$not":
        arg = {"$gt": 0}
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        arg = rng.choice(scalars)
    else:
        arg = literal
    return json.dumps({path: {op: arg}})


def test_random_filters_on_random_events_return_bools():
    rng = random.Random(20240102)
    events = [{"a": _random_value(rng), "b": _random_value(rng)} for _ in range(60)]
    for _ in range(150):
        pred = compile_filter(_random_filter(rng))
        for event in events:
            assert pred(event) in (True, False)


def test_negations_are_complements():
    rng = random.Random(7)
    events = [{"a": _random_value(rng), "b": _random_value(rng)} for _ in range(200)]
    pairs = [
        ('{"a": 1}', '{"a": {"$ne": 1}}'),
        ('{"a.b": null}', '{"a.b": {"$ne": null}}'),
        ('{"a": {"$in": [1, "a", null]}}', '{"a": {"$nin": [1, "a", null]}}'),
        ('{"a.0": {"$gt": 0}}', '{"a.0": {"$not": {"$gt": 0}}}'),
        ('{"a.b": {"$exists": true}}', '{"a.b": {"$exists": false}}'),
        ('{"a": [1, "a"]}', '{"a": {"$not": {"$eq": [1, "a"]}}}'),
    ]
    for positive, negative in pairs:
        pos, neg = compile_filter(positive), compile_filter(negative)
        for event in events:
            assert pos(event) is not neg(event), (positive, event)
