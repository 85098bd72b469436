"""What a snapshot asks MongoDB for (wsproxy/access/documentquery.py), on
its own: event paths translated to document paths, a total sort order,
and nothing that touches a hidden field. (Snapshots end to end:
test_live.py, test_documents.py.)"""

import pytest
from werkzeug.datastructures import MultiDict

from wsproxy import ClientError
from wsproxy.access.documentquery import (
    DocumentQuery,
    parse,
    parse_limit,
    parse_sort,
    to_query,
)
from wsproxy.errors import FilterError


def test_event_paths_become_document_paths():
    assert to_query({"fullDocument.status": "open", "documentKey._id": 3}) == {
        "status": "open",
        "_id": 3,
    }
    assert to_query({"$or": [{"fullDocument.a": 1}, {"fullDocument.b": 2}]}) == {
        "$or": [{"a": 1}, {"b": 2}]
    }
    # Two clauses on one path are kept apart, not merged into one.
    assert to_query({"fullDocument._id": 1, "documentKey._id": 1}) == {
        "$and": [{"_id": 1}, {"_id": 1}]
    }
    with pytest.raises(FilterError, match="not a document path"):
        to_query({"operationType": "insert"})


def test_the_sort_is_total_and_the_limit_bounded():
    assert parse_sort("-fullDocument.at,fullDocument.name", ()) == (
        ("at", -1),
        ("name", 1),
        ("_id", 1),
    )
    assert parse_sort("documentKey._id", ()) == (("_id", 1),)
    with pytest.raises(ClientError, match="given twice"):
        parse_sort("fullDocument.a,-fullDocument.a", ())
    assert parse_limit("10", 100) == 10
    with pytest.raises(ClientError):
        parse_limit("1000", 100)


def test_nothing_may_touch_a_hidden_field():
    with pytest.raises(ClientError, match="the sort uses a hidden field"):
        parse_sort("fullDocument.card.number", ["card"])
    with pytest.raises(ClientError, match="the filter uses a hidden field"):
        to_query({"fullDocument.card": {"$exists": True}}, hide=["card.number"])
    assert to_query({"fullDocument.cardinal": 1}, hide=["card"]) == {"cardinal": 1}


def test_a_snapshot_url_is_one_collection():
    query = parse(
        MultiDict({"snapshot": "1", "sort": "-fullDocument.at", "limit": "5"}),
        namespaces=["shop.orders"],
        client_spec=None,
        principal_filter=None,
        hide=(),
        max_docs=100,
    )
    assert query == DocumentQuery("shop", "orders", {}, (("at", -1), ("_id", 1)), 5)
    assert query.ns == "shop.orders"
    for namespaces in (None, ["shop"], ["shop.orders", "shop.items"]):
        with pytest.raises(ClientError):
            parse(
                MultiDict({"snapshot": "1"}),
                namespaces=namespaces,
                client_spec=None,
                principal_filter=None,
                hide=(),
                max_docs=100,
            )
