"""wsproxy.client.ejson, the Python client's decoder: Extended JSON types where a
value is one, and whatever a document holds that is not one, as sent."""

import datetime
import json

import pytest
from bson import (
    Binary,
    Code,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    json_util,
)

from wsproxy.client import ejson

# Field values any document writer can store: each looks like Extended
# JSON, and json_util.loads raises on the whole text for every one of them.
NOT_DECODABLE = [
    {"$oid": "zz"},
    {"$date": {"$numberLong": "999999999999999999"}},
    {"$numberDecimal": "1e99999999"},
    {"$code": "x", "$scope": 5},
    {"$date": "not-a-date"},
    {"$numberLong": "abc"},
    {"$timestamp": {"t": -1, "i": -1}},
    {"$uuid": "nope"},
    {"$binary": {"base64": "AA==", "subType": "zz"}},
    {"$minKey": 2},
    {"$numberDouble": "x"},
    {"$regularExpression": {"pattern": 1, "options": ""}},
    {"$dbPointer": 1},
]


@pytest.mark.parametrize("value", NOT_DECODABLE, ids=json.dumps)
def test_a_value_json_util_cannot_decode_is_kept_as_sent(value):
    text = json.dumps({"before": 1, "v": value, "after": {"$oid": "0" * 24}})
    with pytest.raises(Exception):  # noqa: B017 - why this module exists
        json_util.loads(text)
    assert ejson.loads(text) == {"before": 1, "v": value, "after": ObjectId("0" * 24)}


def test_the_raw_value_keeps_what_is_inside_it_as_sent():
    # The inner {"$numberLong": ...} alone would decode; the raw value is
    # the whole object as the server sent it.
    value = {"$date": {"$numberLong": "999999999999999999"}}
    got = ejson.loads(json.dumps([value]))[0]
    assert got == value and type(got["$date"]["$numberLong"]) is str


def test_every_type_decodes_as_json_util_decodes_it():
    doc = {
        "oid": ObjectId(),
        "date": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "dec": Decimal128("12.50"),
        "long": Int64(2**40),
        "bin": Binary(b"\x00\x01", 0),
        "uuid": Binary(b"u" * 16, 4),
        "code": Code("f()", {"a": Int64(1)}),
        "ts": Timestamp(5, 6),
        "re": Regex("^a", "i"),
        "min": MinKey(),
        "max": MaxKey(),
        "nested": [{"n": Int64(3)}, [1, {"$d": 2}]],
        "inf": float("inf"),
    }
    for options in (
        json_util.RELAXED_JSON_OPTIONS,
        json_util.CANONICAL_JSON_OPTIONS,
        json_util.LEGACY_JSON_OPTIONS,
    ):
        text = json_util.dumps(doc, json_options=options)
        assert repr(ejson.loads(text)) == repr(json_util.loads(text))


def test_a_document_with_a_dollar_field_keeps_its_other_fields():
    # json_util would make the first None and the second a Regex, losing
    # the document; a document's other fields are decoded as usual.
    for doc in (
        {"_id": 1, "$undefined": True, "at": {"$date": 0}},
        {"_id": 1, "$regex": "a", "at": {"$date": 0}},
        {"_id": 1, "$binary": "AA==", "at": {"$date": 0}},
        {"_id": 1, "$oid": "zz", "at": {"$date": 0}},
    ):
        got = ejson.loads(json.dumps(doc))
        assert got == {**doc, "at": datetime.datetime(1970, 1, 1)}


def test_deep_documents_decode():
    # MongoDB nests documents 100 levels deep at most.
    text = '{"a": ' * 150 + '{"$numberLong": "7"}' + "}" * 150
    value = ejson.loads(text)
    for _ in range(150):
        value = value["a"]
    assert value == Int64(7)


def test_only_text_that_is_not_json_raises():
    with pytest.raises(ValueError):
        ejson.loads("{not json")
