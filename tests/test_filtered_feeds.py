"""Filtered feeds tell the whole truth (issue 21): deletes and documents
leaving a filter reach exactly the clients that could see them, decided by
pre-images where the collection keeps them and by what each connection was
sent where it does not; never another tenant's key or content, never the
new content of a document that left. Through the two-tenant host app
(tests/tenantapp.py) on the real gunicorn."""

import json
import logging
import urllib.parse

import pytest
from werkzeug.datastructures import MultiDict

from wsproxy import access
from wsproxy.fanout.subscription import parse
from wsproxy.stream.preimages import PreImages

from .helpers import WSClient, wait_for

APP = "tests.tenantapp:app"
PRE, NOPRE = "pre", "nopre"  # collections with and without pre-images


@pytest.fixture
def tenants(mongo, mongo_client, namespace, gunicorn):
    db, _ = namespace
    mongo_client[db].create_collection(
        PRE, changeStreamPreAndPostImages={"enabled": True}
    )
    mongo_client[db].create_collection(NOPRE)

    def start(**env):
        settings = {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "TENANT_DB": db,
            "WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE": "whenAvailable",
        }
        settings.update({k: str(v) for k, v in env.items()})
        return gunicorn(settings, app=APP)

    return start


def _as(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


class Feed:
    """A client of one collection that records what it receives."""

    def __init__(self, server, token, coll, query=None):
        params = {"ns": f"{server.env['TENANT_DB']}.{coll}", **(query or {})}
        self.client = WSClient(
            server.ws_url(urllib.parse.urlencode(params)), **_as(token)
        )
        self.hello = self.client.recv()
        assert self.hello["type"] == "hello"
        self.messages = []

    def until_marker(self, marker):
        """Every change and leave up to the change inserting ``marker``."""
        got = []
        while True:
            message = self.client.recv(timeout=10)
            if message["type"] not in ("change", "leave"):
                continue
            doc = (message.get("event") or {}).get("fullDocument") or {}
            if message["type"] == "change" and doc.get("marker") == marker:
                return got
            got.append(message)

    def close(self):
        self.client.close()


def _described(messages):
    """["insert 1", "update 1 +before", "leave 1 filter", "delete 2 +before"]"""
    out = []
    for m in messages:
        if m["type"] == "leave":
            out.append(f"leave {m['documentKey']['_id']} {m['reason']}")
            continue
        event = m["event"]
        before = " +before" if event.get("fullDocumentBeforeChange") else ""
        out.append(f"{event['operationType']} {event['documentKey']['_id']}{before}")
    return out


def _script(coll, admin):
    """Documents moving between tenants and in and out of status "open",
    each step seen by the admin (so updateLookup reads each as it was)."""
    steps = [
        lambda: coll.insert_one(
            {"_id": 1, "tenant": "a", "status": "open", "secret": "SECRET-1"}
        ),
        lambda: coll.insert_one(
            {
                "_id": 2,
                "tenant": "b",
                "status": "open",
                "secret": "SECRET-2",
                "note": "b-private",
            }
        ),
        lambda: coll.update_one({"_id": 1}, {"$set": {"status": "closed"}}),
        lambda: coll.update_one({"_id": 2}, {"$set": {"tenant": "a", "note": "now-a"}}),
        lambda: coll.update_one({"_id": 1}, {"$set": {"tenant": "b", "note": "now-b"}}),
        lambda: coll.replace_one(
            {"_id": 2}, {"tenant": "a", "status": "open", "secret": "SECRET-3", "v": 2}
        ),
        lambda: coll.delete_one({"_id": 1}),
        lambda: coll.delete_one({"_id": 2}),
    ]
    for step in steps:
        step()
        admin.until_one_change()
    coll.insert_one({"marker": "end", "tenant": "a", "status": "open"})
    coll.insert_one({"marker": "end", "tenant": "b", "status": "open"})


class Admin(Feed):
    def until_one_change(self):
        while self.client.recv(timeout=10)["type"] != "change":
            pass


# What each client receives of _script, with pre-images ("exact") and
# without ("tracked"): the same deletes and leaves; a pre-image only where
# its tenant (and the client's filter) admits it.
EXPECTED = {
    PRE: {
        "a": [
            "insert 1",
            "update 1 +before",
            "update 2",
            "leave 1 filter",
            "replace 2 +before",
            "delete 2 +before",
        ],
        "b": ["insert 2", "leave 2 filter", "update 1", "delete 1 +before"],
        "a-open": [
            "insert 1",
            "leave 1 filter",
            "update 2",
            "replace 2 +before",
            "delete 2 +before",
        ],
    },
    NOPRE: {
        "a": [
            "insert 1",
            "update 1",
            "update 2",
            "leave 1 filter",
            "replace 2",
            "delete 2",
        ],
        "b": ["insert 2", "leave 2 filter", "update 1", "delete 1"],
        "a-open": ["insert 1", "leave 1 filter", "update 2", "replace 2", "delete 2"],
    },
}


@pytest.mark.parametrize("coll", [PRE, NOPRE])
def test_each_tenant_gets_exactly_its_deletes_and_leaves(
    tenants, mongo_client, namespace, coll
):
    server = tenants()
    open_only = {"filter": json.dumps({"fullDocument.status": "open"})}
    feeds = {
        "a": Feed(server, "token-a", coll),
        "b": Feed(server, "token-b", coll),
        "a-open": Feed(server, "token-a2", coll, open_only),
    }
    admin = Admin(server, "token-admin", coll)
    _script(mongo_client[namespace[0]][coll], admin)
    for name, feed in feeds.items():
        got = feed.until_marker("end")
        assert _described(got) == EXPECTED[coll][name], name
        text = json.dumps(got)
        # Never a hidden field, never another tenant's content.
        assert "SECRET" not in text
        if name == "a":
            assert "b-private" not in text and "now-b" not in text
        if name == "b":
            assert "now-a" not in text
        for message in got:
            if message["type"] == "leave":
                assert set(message) == {"type", "id", "documentKey", "reason"}
        expected_word = "exact" if coll == PRE else "tracked"
        assert feed.hello["deletes"] == expected_word, name
        feed.close()
    admin.close()


def test_the_log_names_the_collections_without_pre_images(tenants):
    server = tenants()
    wait_for(lambda: "keep no pre-images" in server.output(), 10, "the warning")
    log = server.output()
    line = next(li for li in log.splitlines() if "keep no pre-images" in li)
    assert "WARNING" in line and NOPRE in line and "collMod" in line
    assert f".{PRE}" not in line.split("(", 1)[1].split(")", 1)[0]
    assert log.count("keep no pre-images") == 1


def test_without_pre_images_configured_the_log_says_how(tenants):
    server = tenants(WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE="off")
    wait_for(
        lambda: "WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE is not set" in server.output(),
        10,
        "the warning",
    )
    feed = Feed(server, "token-a", PRE)
    assert feed.hello["deletes"] == "tracked"
    feed.close()


def test_a_feed_without_a_document_filter_is_exact():
    sub = parse(MultiDict(), scope="", principal=access.ANYONE)
    assert PreImages("off").deletes(sub) == "exact"


@pytest.mark.parametrize("where", ["history", "catch-up"])
def test_documents_replayed_on_a_resume_are_followed_again(
    tenants, mongo_client, namespace, where
):
    """Without pre-images: a client that resumes from before a document
    was inserted is sent it again, and so told when it leaves."""
    env = {"WSPROXY_HISTORY_SIZE": 1} if where == "catch-up" else {}
    server = tenants(**env)
    coll = mongo_client[namespace[0]][NOPRE]
    feed = Feed(server, "token-a", NOPRE)
    coll.insert_one({"_id": "before", "tenant": "a"})
    first = feed.until_one()
    feed.close()
    witness = Feed(server, "token-a", NOPRE)  # the one worker's live feed
    coll.insert_one({"_id": 7, "tenant": "a", "status": "open"})
    coll.insert_one({"_id": "filler", "tenant": "a"})  # out of a 1-event history
    # Resumed once the worker has the filler: the history is what it says.
    while witness.until_one()["event"]["documentKey"]["_id"] != "filler":
        pass
    witness.close()
    resumed = Feed(server, "token-a", NOPRE, {"resume_after": first["id"]})
    assert resumed.hello["resume"] == where
    coll.update_one({"_id": 7}, {"$set": {"tenant": "b"}})
    coll.delete_one({"_id": 7})
    coll.insert_one({"marker": "end", "tenant": "a"})
    got = _described(resumed.until_marker("end"))
    assert got == ["insert 7", "insert filler", "leave 7 filter"]
    resumed.close()


def _until_one(self):
    while True:
        message = self.client.recv(timeout=10)
        if message["type"] == "change":
            return message


Feed.until_one = _until_one


def test_a_subscribe_starts_what_is_followed_afresh(tenants, mongo_client, namespace):
    server = tenants()
    coll = mongo_client[namespace[0]][NOPRE]
    feed = Feed(server, "token-a", NOPRE)
    coll.insert_one({"_id": 1, "tenant": "a", "status": "open"})
    feed.until_one()
    feed.client.ws.send(
        json.dumps({"type": "subscribe", "filter": {"fullDocument.status": "open"}})
    )
    assert feed.client.recv_type("subscribed")["deletes"] == "tracked"
    # Sent before the subscribe: not followed by the new subscription.
    coll.delete_one({"_id": 1})
    coll.insert_one({"marker": "end", "tenant": "a", "status": "open"})
    assert _described(feed.until_marker("end")) == []
    feed.close()


def test_the_untracked_document_leaves(tenants, mongo_client, namespace):
    """Over WSPROXY_TRACKED_DOCS the document sent longest ago is no longer
    followed, and the client is told to drop it."""
    server = tenants(WSPROXY_TRACKED_DOCS=2)
    coll = mongo_client[namespace[0]][NOPRE]
    feed = Feed(server, "token-a", NOPRE)
    for n in range(3):
        coll.insert_one({"_id": n, "tenant": "a"})
    coll.insert_one({"marker": "end", "tenant": "a"})
    assert _described(feed.until_marker("end")) == [
        "insert 0",
        "insert 1",
        "insert 2",
        "leave 0 untracked",
    ]
    feed.close()


def test_a_scope_it_cannot_read_gets_no_warning(caplog):
    """An account that may not list collections: no answer, no warning,
    and the weaker claim."""

    class Unreadable:
        def list_database_names(self):
            raise PermissionError("not authorized")

    caplog.set_level(logging.DEBUG)
    preimages = PreImages("whenAvailable")
    preimages.check(Unreadable())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    sub = parse(
        MultiDict({"filter": '{"fullDocument.a": 1}'}),
        scope="",
        principal=access.ANYONE,
    )
    assert preimages.deletes(sub) == "tracked"
