"""The live-documents rules (wsproxy/liverules.py) on their own: what a
change or a leave does to a map of documents, the keys documents are held
under, and that the Python client gets them without the server."""

import datetime
import json
import subprocess
import sys

import pytest
from bson import Binary, Decimal128, Int64, ObjectId

from wsproxy import liverules
from wsproxy.client import ejson
from wsproxy.liverules import CLEAR, REMOVE, UPSERT, Effect
from wsproxy.transport import codec

from .helpers import ROOT, scaled

NS = {"db": "shop", "coll": "orders"}


def event(op, _id=None, full=None, **extra):
    raw = {"operationType": op, "ns": NS, **extra}
    if _id is not None:
        raw["documentKey"] = {"_id": _id}
    if op in ("insert", "update", "replace"):
        raw["fullDocument"] = full
    return raw


@pytest.mark.parametrize(
    ("raw", "effect"),
    [
        (
            event("insert", 1, {"_id": 1, "a": 1}),
            Effect(UPSERT, 1, {"_id": 1, "a": 1}, detail="insert"),
        ),
        (
            event("update", 1, {"_id": 1, "a": 2}, updateDescription={}),
            Effect(UPSERT, 1, {"_id": 1, "a": 2}, detail="update"),
        ),
        (
            event("replace", 1, {"_id": 1}),
            Effect(UPSERT, 1, {"_id": 1}, detail="replace"),
        ),
        # updateLookup found nothing: deleted since.
        (event("update", 1, None), Effect(REMOVE, 1, reason="delete", detail="update")),
        (
            event("replace", 1, None),
            Effect(REMOVE, 1, reason="delete", detail="replace"),
        ),
        (event("delete", 1), Effect(REMOVE, 1, reason="delete", detail="delete")),
        # A delete's pre-image is not a document to hold.
        (
            event("delete", 1, fullDocumentBeforeChange={"_id": 1}),
            Effect(REMOVE, 1, reason="delete", detail="delete"),
        ),
        (event("drop"), Effect(CLEAR, reason="clear", detail="drop")),
        (
            event("rename", to={"db": "shop", "coll": "x"}),
            Effect(CLEAR, reason="clear", detail="rename"),
        ),
        (event("dropDatabase"), Effect(CLEAR, reason="clear", detail="dropDatabase")),
        (event("invalidate"), Effect(CLEAR, reason="clear", detail="invalidate")),
        (event("createIndexes"), None),
        (event("insert", None, {"x": 1}), None),  # no documentKey._id
        ({"operationType": "insert", "documentKey": ["x"], "fullDocument": {}}, None),
        (
            event("insert", 1, ["not", "a", "document"]),
            Effect(REMOVE, 1, reason="delete", detail="insert"),
        ),
    ],
)
def test_what_a_change_does(raw, effect):
    assert liverules.of_change(raw) == effect


def test_what_a_leave_does():
    assert liverules.of_leave({"_id": 7}, "filter") == Effect(
        REMOVE, 7, reason="leave", detail="filter"
    )
    assert liverules.of_leave({"_id": 7}, "untracked").detail == "untracked"
    assert liverules.of_leave({}, "filter") is None
    assert liverules.of_leave(None, "filter") is None


def test_applying_effects_to_a_map():
    docs = {}
    key = liverules.key

    def run(raw):
        return liverules.apply(docs, liverules.of_change(raw), key)

    assert run(event("insert", 2, {"_id": 2, "v": 1})) is None
    assert run(event("insert", 1, {"_id": 1, "v": 1})) is None
    # A whole document replaces, in place; the previous one is returned.
    assert run(event("update", 2, {"_id": 2, "v": 2})) == {"_id": 2, "v": 1}
    assert list(docs.items()) == [("2", {"_id": 2, "v": 2}), ("1", {"_id": 1, "v": 1})]
    assert run(event("delete", 1)) == {"_id": 1, "v": 1}
    assert run(event("delete", 1)) is None  # not held: nothing
    assert liverules.apply(docs, liverules.of_leave({"_id": 2.0}, "filter"), key) == {
        "_id": 2,
        "v": 2,
    }  # 2.0 is 2
    run(event("insert", 3, {"_id": 3}))
    assert run(event("drop")) == {"3": {"_id": 3}}
    assert docs == {}
    # The server holds the change itself (value), judged later.
    liverules.apply(
        docs,
        liverules.of_change(event("insert", 4, {"_id": 4})),
        key,
        value="the change",
    )
    assert docs == {"4": "the change"}


def _wire(_id):
    """An _id as the client decodes it from the server's message."""
    return ejson.loads(codec.dumps({"_id": _id}))["_id"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (1.0, "1"),  # one _id to MongoDB, one key
        (Int64(1), "1"),
        ("1", '"1"'),  # another
        (-0.0, "0"),
        (0.5, "0.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (2**60, "1152921504606847000"),  # as a browser reads it: rounded
        (ObjectId("65a1b2c3d4e5f60718293a4b"), '{"$oid":"65a1b2c3d4e5f60718293a4b"}'),
        ({"b": 1, "a": [1, 2.5, "x"]}, '{"b":1,"a":[1,2.5,"x"]}'),
        ('é\n"\\\x01\u2028', '"é\\n\\"\\\\\\u0001\u2028"'),
        (Decimal128("1.0"), '{"$numberDecimal":"1.0"}'),
        (
            datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
            '{"$date":"2024-01-02T03:04:05.678Z"}',
        ),
        (Binary(b"ab", 0), '{"$binary":{"base64":"YWI=","subType":"00"}}'),
        (float("nan"), '{"$numberDouble":"NaN"}'),
        (None, "null"),
        (True, "true"),
    ],
)
def test_keys_are_the_ids_json_as_a_browser_writes_it(value, text):
    assert liverules.key(value) == text
    # The same from what the client decodes, and from the plain JSON of a
    # client that does not decode Extended JSON.
    assert liverules.key(_wire(value)) == text
    plain = json.loads(codec.dumps({"_id": value}))["_id"]
    assert liverules.key(plain) == text


def test_a_lone_surrogate_is_escaped_as_a_browser_does():
    assert liverules.key("a\ud800b") == '"a\\ud800b"'


def test_the_python_client_imports_nothing_of_the_server():
    code = (
        "import sys, json, wsproxy.client, wsproxy.liverules; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.startswith(('wsproxy', 'flask', 'pymongo.mongo_client')))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == [
        "wsproxy",
        "wsproxy.client",
        "wsproxy.client.ejson",
        "wsproxy.errors",
        "wsproxy.liverules",
        "wsproxy.protocol",
    ]
