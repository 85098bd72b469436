"""What a connection holds (wsproxy/fanout/tracking.py), on its own: which
document a change is about, and what a tracking connection is sent when
a document leaves its view, is deleted, or falls off its bound. (Routing
by what is held: test_routing.py; deletes and leaves end to end:
test_filtered_feeds.py.)"""

from bson import Int64, ObjectId

from wsproxy.fanout.tracking import Held, document_key, held_key
from wsproxy.transport.codec import Shape


def _raw(op, _id, doc=True, db="shop", coll="orders"):
    raw = {"operationType": op, "ns": {"db": db, "coll": coll}}
    if _id is not None:
        raw["documentKey"] = {"_id": _id}
    if doc and op in ("insert", "update", "replace"):
        raw["fullDocument"] = {"_id": _id}
    return raw


def test_the_document_a_change_is_about():
    assert held_key(_raw("insert", 1)) == ("shop", "orders", 1)
    assert held_key({"operationType": "insert"}) is None  # no namespace
    # Numbers compare across types, as MongoDB's do; other ids by their BSON.
    assert document_key(1) == document_key(Int64(1)) == document_key(1.0)
    oid = ObjectId()
    assert document_key(oid) == oid
    assert document_key({"a": 1}) != document_key({"a": 2})
    assert isinstance(document_key({"a": 1}), bytes)


def test_a_held_document_that_leaves_or_goes_is_told_once():
    held = Held(10)
    assert held.route(_raw("insert", 1), Shape.CHANGE) == (Shape.CHANGE, [])
    assert ("shop", "orders", 1) in held and held.ids() == [1]
    # No longer in the view: a leave, once.
    assert held.route(_raw("update", 1), None) == (Shape.LEAVE, [])
    assert held.route(_raw("update", 1), None) == (None, [])
    # A delete of a held document is sent (its key only) even undecided.
    held.route(_raw("insert", 2), Shape.CHANGE)
    assert held.route(_raw("delete", 2), None) == (Shape.CHANGE_WITHOUT_BEFORE, [])
    assert held.route(_raw("delete", 2), None) == (None, [])
    assert len(held) == 0


def test_what_is_held_is_bounded_and_cleared_with_its_namespace():
    held = Held(2)
    for _id in (1, 2):
        held.route(_raw("insert", _id), Shape.CHANGE)
    held.route(_raw("update", 1), Shape.CHANGE)  # 1 is now the newest
    assert held.route(_raw("insert", 3), Shape.CHANGE) == (Shape.CHANGE, [2])
    assert held.ids() == [1, 3]
    held.route(_raw("insert", 4, coll="items"), Shape.CHANGE)  # drops 1
    # A drop of the collection takes its documents: sent though undecided.
    assert held.route(_raw("drop", None), None) == (Shape.CHANGE, [])
    assert held.ids() == [4]
    assert held.route(_raw("drop", None), None) == (None, [])
