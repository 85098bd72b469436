"""Fail closed (issue 10): what a client cannot see, it cannot learn or
forge; an empty grant is nothing; the operator's rules see the whole event;
and nothing one client does can hold up the others."""

import json

import pytest
from websockets.exceptions import InvalidStatus

from wsproxy.redaction import redact

from .helpers import WSClient

HOSTAPP = "tests.hostapp:app"


@pytest.fixture
def host(mongo, namespace, gunicorn):
    """tests/hostapp.py (bearer tokens, principals) on the real gunicorn."""
    db, _ = namespace
    server = gunicorn({"WSPROXY_MONGODB_URI": mongo.uri, "WSPROXY_WATCH": db,
                       "WSPROXY_MAX_AWAIT_MS": "100", "HOSTAPP_DB": db},
                      app=HOSTAPP)
    return server, db


def _bearer(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


# ---------------------------------------------------------------------------
# Hidden paths with numeric components (redaction.py).

def _update(updated=None, removed=(), truncated=(), **extra):
    description = {"updatedFields": updated or {},
                   "removedFields": list(removed),
                   "truncatedArrays": list(truncated), **extra}
    return {"_id": {"_data": "82AB"}, "operationType": "update",
            "documentKey": {"_id": 1}, "updateDescription": description}


@pytest.mark.parametrize("key", [
    "scores.2024",          # a field named "2024"
    "scores.2024.points",   # inside it
    "scores.0.2024",        # "2024" inside an element of a scores array
    "scores",               # the parent as a whole: checked below
])
def test_a_hidden_path_with_a_numeric_component_is_hidden_in_updated_fields(
        key):
    value = {"2024": 99} if key == "scores" else 99
    event = redact(_update({key: value, "name": "ada"}), ["scores.2024"])
    updated = event["updateDescription"]["updatedFields"]
    assert "99" not in repr(updated), updated
    assert updated["name"] == "ada"


def test_numeric_hidden_paths_in_removed_and_truncated_lists_and_documents():
    raw = _update(removed=["scores.2024", "scores.2023", "other.2024"],
                  truncated=[{"field": "scores.2024", "newSize": 1},
                             {"field": "scores.2023", "newSize": 1}],
                  disambiguatedPaths={"scores.2024": ["scores", "2024"],
                                      "items.0": ["items", 0]})
    raw["fullDocument"] = {"scores": {"2024": 1, "2023": 2}}
    event = redact(raw, ["scores.2024"])
    description = event["updateDescription"]
    assert description["removedFields"] == ["scores.2023", "other.2024"]
    assert description["truncatedArrays"] == [
        {"field": "scores.2023", "newSize": 1}]
    assert description["disambiguatedPaths"] == {"items.0": ["items", 0]}
    assert event["fullDocument"] == {"scores": {"2023": 2}}


@pytest.mark.parametrize("updated, hide, kept", [
    # Array positions in the changed path still match a field path.
    ({"items.0.price": 5, "items.0.sku": "a"}, ["items.price"],
     {"items.0.sku": "a"}),
    ({"items.3": {"price": 5, "sku": "a"}}, ["items.price"],
     {"items.3": {"sku": "a"}}),
    ({"items": [{"price": 5, "sku": "a"}]}, ["items.price"],
     {"items": [{"sku": "a"}]}),
    # A different numeric field stays.
    ({"scores.2023": 1}, ["scores.2024"], {"scores.2023": 1}),
    # A numeric hidden component does not hide a position with that number
    # of another field, nor a longer number.
    ({"scores.20240": 1, "other.2024": 2}, ["scores.2024"],
     {"scores.20240": 1, "other.2024": 2}),
    # Nested numeric names and positions together.
    ({"a.1.2.b": 1, "a.2.b": 2, "a.1.b": 3, "a.b": 4, "a.2.c": 5},
     ["a.2.b"], {"a.1.b": 3, "a.b": 4, "a.2.c": 5}),
])
def test_array_positions_and_numeric_names_in_changed_paths(updated, hide,
                                                            kept):
    event = redact(_update(updated), hide)
    assert event["updateDescription"]["updatedFields"] == kept


# ---------------------------------------------------------------------------
# Grants and the operator's rules (subscription.py), unit level.

def _change(doc, db="shop", coll="orders"):
    from wsproxy import codec
    return codec.Change({"_id": {"_data": "82AB"}, "operationType": "insert",
                         "ns": {"db": db, "coll": coll},
                         "documentKey": {"_id": 1}, "fullDocument": doc})


def _parse(principal, **args):
    from werkzeug.datastructures import MultiDict

    from wsproxy import subscription
    return subscription.parse(MultiDict(args), scope="", principal=principal)


def test_an_empty_grant_is_refused_not_everything():
    from wsproxy import ClientError, Principal
    for empty in (set(), frozenset(), [], ()):
        with pytest.raises(ClientError) as info:
            _parse(Principal("nobody", namespaces=empty))
        assert info.value.status == 403
        assert "no namespaces are granted" in info.value.reason
    # Only None means the whole scope.
    assert _parse(Principal("all", namespaces=None)).wants(_change({"a": 1}))


def test_an_empty_set_in_a_subscription_matches_nothing():
    from wsproxy.subscription import Subscription
    assert not Subscription(namespaces=set()).wants(_change({"a": 1}))
    assert not Subscription(ops=()).wants(_change({"a": 1}))
    assert Subscription().wants(_change({"a": 1}))


def test_the_principal_filter_sees_hidden_fields_the_client_filter_does_not():
    from wsproxy import Principal
    public = Principal("public", hide=["confidential"],
                       filter={"fullDocument.confidential": {"$ne": True}})
    secret, plain = _change({"confidential": True}), _change({"n": 1})
    sub = _parse(public)
    assert not sub.wants(secret)
    assert sub.wants(plain)
    # The client's own filter still cannot probe the hidden field.
    probe = _parse(public, filter='{"fullDocument.confidential": false}')
    assert not probe.wants(_change({"confidential": False}))


# ---------------------------------------------------------------------------
# Grants and the operator's rules, end to end (tests/hostapp.py).

def test_a_principal_granted_no_namespaces_is_refused_at_connect(host):
    server, _ = host
    with pytest.raises(InvalidStatus) as info:
        WSClient(server.ws_url(), **_bearer("token-nothing"))
    response = info.value.response
    assert response.status_code == 403
    assert json.loads(response.body)["error"] == "no namespaces are granted"


def test_a_principal_row_filter_on_a_hidden_field_does_not_fail_open(
        host, mongo_client):
    server, db = host
    client = WSClient(server.ws_url(), **_bearer("token-public"))
    assert client.recv()["type"] == "hello"
    orders = mongo_client[db].orders
    orders.insert_many([{"_id": 1, "confidential": True, "title": "merger"},
                        {"_id": 2, "title": "picnic"}])
    event = client.recv_type("change")["event"]
    assert event["documentKey"] == {"_id": 2}
    assert "confidential" not in event["fullDocument"]
    with pytest.raises(AssertionError, match="no message"):
        client.recv_type("change", timeout=1)
    client.close()
