"""Subscriptions (wsproxy/fanout/subscription.py), unit level: an empty
grant or set is nothing, never everything; the operator's rules see the
whole event, the client's filter only what the client may see. (Its
decisions about deletes and leaves: test_filtered_feeds.py; the routing
by them: test_routing.py.)"""

import pytest

from .helpers import sealer_for_tests


def _change(doc, db="shop", coll="orders"):
    from wsproxy.transport import codec

    return codec.Change(
        {
            "_id": {"_data": "82AB"},
            "operationType": "insert",
            "ns": {"db": db, "coll": coll},
            "documentKey": {"_id": 1},
            "fullDocument": doc,
        },
        sealer_for_tests(),
    )


def _parse(principal, **args):
    from werkzeug.datastructures import MultiDict

    from wsproxy.fanout import subscription

    return subscription.parse(MultiDict(args), scope="", principal=principal)


def test_an_empty_grant_is_refused_not_everything():
    from wsproxy import ClientError, Principal

    for empty in (set(), frozenset(), [], ()):
        with pytest.raises(ClientError) as info:
            _parse(Principal("nobody", namespaces=empty))
        assert info.value.status == 403
        assert "no namespaces are granted" in info.value.reason
    # Only None means the whole scope.
    assert (
        _parse(Principal("all", namespaces=None)).decide(_change({"a": 1})) is not None
    )


def test_an_empty_set_in_a_subscription_matches_nothing():
    from wsproxy.fanout.subscription import Subscription

    assert Subscription(namespaces=set()).decide(_change({"a": 1})) is None
    assert Subscription(ops=()).decide(_change({"a": 1})) is None
    assert Subscription().decide(_change({"a": 1})) is not None


def test_the_principal_filter_sees_hidden_fields_the_client_filter_does_not():
    from wsproxy import Principal

    public = Principal(
        "public",
        hide=["confidential"],
        filter={"fullDocument.confidential": {"$ne": True}},
    )
    secret, plain = _change({"confidential": True}), _change({"n": 1})
    sub = _parse(public)
    assert sub.decide(secret) is None
    assert sub.decide(plain) is not None
    # The client's own filter still cannot probe the hidden field.
    probe = _parse(public, filter='{"fullDocument.confidential": false}')
    assert probe.decide(_change({"confidential": False})) is None
