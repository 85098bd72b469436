"""End to end: the real gunicorn process, SecantusDB and WebSocket clients."""

import time

import pymongo
import pytest
from bson import Decimal128, ObjectId
from websockets.exceptions import InvalidStatus

from .helpers import WSClient, scaled, server_env, wait_for


def _env(mongo, db, coll, **extra):
    return server_env(mongo.uri, db, coll, **extra)


def test_two_clients_receive_every_operation_in_order(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(_env(mongo, db, coll))
    clients = [WSClient(server.ws_url()) for _ in range(2)]
    for client in clients:
        hello = client.recv()
        assert hello["type"] == "hello" and hello["watch"] == f"{db}.{coll}"
    wait_for(lambda: server.readyz()[1]["clients"] == 2, 5, "2 clients")

    items = mongo_client[db][coll]
    doc_id = ObjectId()
    started = time.monotonic()
    items.insert_one({"_id": doc_id, "price": Decimal128("9.99"), "n": 1})
    items.update_one({"_id": doc_id}, {"$set": {"n": 2}})
    items.replace_one({"_id": doc_id}, {"n": 3})
    items.delete_one({"_id": doc_id})

    for client in clients:
        events = client.changes(4, timeout=2)
        assert time.monotonic() - started < scaled(2)
        assert [e["event"]["operationType"] for e in events] == [
            "insert",
            "update",
            "replace",
            "delete",
        ]
        key = {"_id": {"$oid": str(doc_id)}}
        for message in events:
            event = message["event"]
            assert event["ns"] == {"db": db, "coll": coll}
            assert event["documentKey"] == key
            assert "$timestamp" in event["clusterTime"]
            assert "$date" in event["wallTime"]
            assert isinstance(message["id"], str) and message["id"]
            assert "_id" not in event  # the token travels as "id"
        insert, update, replace, delete = (m["event"] for m in events)
        assert insert["fullDocument"] == {
            "_id": {"$oid": str(doc_id)},
            "price": {"$numberDecimal": "9.99"},
            "n": 1,
        }
        assert update["updateDescription"]["updatedFields"] == {"n": 2}
        # full_document="updateLookup" by default: the document as it is
        # when the watcher reads the event (null once it is deleted).
        assert update["fullDocument"] is None or update["fullDocument"]["n"] in (2, 3)
        assert replace["fullDocument"] == {"_id": {"$oid": str(doc_id)}, "n": 3}
        assert "fullDocument" not in delete
        assert len({m["id"] for m in events}) == 4
        client.close()


def test_abrupt_disconnect_is_removed_and_others_keep_receiving(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(_env(mongo, db, coll))
    stays, leaves = WSClient(server.ws_url()), WSClient(server.ws_url())
    stays.recv(), leaves.recv()
    wait_for(lambda: server.readyz()[1]["clients"] == 2, 5, "2 clients")
    leaves.drop()
    mongo_client[db][coll].insert_many([{"i": i} for i in range(50)])
    got = [m["event"]["fullDocument"]["i"] for m in stays.changes(50)]
    assert got == list(range(50))
    wait_for(
        lambda: server.readyz()[1]["clients"] == 1,
        10,
        "the dropped client to be unregistered",
    )
    stays.close()


def test_watcher_recovers_after_the_database_is_killed_and_restarted(
    own_mongo, gunicorn
):
    server = gunicorn(_env(own_mongo, "shop", "orders"))
    client = WSClient(server.ws_url())
    client.recv()
    writer = pymongo.MongoClient(own_mongo.uri)
    writer.shop.orders.insert_one({"i": 0})
    assert client.recv_type("change")["event"]["fullDocument"]["i"] == 0

    own_mongo.kill()
    wait_for(
        lambda: server.readyz()[0] == 503,
        15,
        "readiness to notice the database is gone",
    )
    # The live feed paused: clients are told, and nothing is lost.
    assert client.recv_type("status", 15)["watcher"] == "reconnecting"
    own_mongo.start()
    writer.shop.orders.insert_one({"i": 1})
    server.wait_ready(30)
    assert client.recv_type("change", 30)["event"]["fullDocument"]["i"] == 1
    assert "wsproxy.source" in server.output()  # the outage was logged
    writer.close()
    client.close()


def test_bad_resume_token_is_refused_before_the_upgrade(mongo, namespace, gunicorn):
    db, coll = namespace
    server = gunicorn(_env(mongo, db, coll))
    with pytest.raises(InvalidStatus) as info:
        WSClient(server.ws_url("resume_after=not%20a%20token"))
    assert info.value.response.status_code == 400
    assert b"resume_after" in info.value.response.body
