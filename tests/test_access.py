"""Authorization, partial grants, hidden fields and the origin check, on a
host app (tests/hostapp.py) served by the real gunicorn."""

import json
import urllib.parse

import pytest

from .helpers import WSClient, http_get, refused, scaled

APP = "tests.hostapp:app"


@pytest.fixture
def host(mongo, namespace, gunicorn):
    db, _ = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "HOSTAPP_DB": db,
        },
        app=APP,
    )
    return server, db


_refused = refused


def _login(server, user):
    status, _ = http_get(server.url + f"/account/login/{user}")
    assert status == 200
    # urllib drops the cookie; log in again to read it from the response.
    import urllib.request

    with urllib.request.urlopen(
        server.url + f"/account/login/{user}", timeout=scaled(5)
    ) as resp:
        return resp.headers["Set-Cookie"].split(";", 1)[0]


def _texts(client, count):
    """The next ``count`` change messages as raw JSON text."""
    texts = []
    while len(texts) < count:
        text = client.ws.recv(timeout=scaled(5))
        if json.loads(text)["type"] == "change":
            texts.append(text)
    return texts


def test_the_host_app_keeps_its_own_routes(host):
    server, _ = host
    assert http_get(server.url + "/")[1] == b"the host app's own home page"
    assert http_get(server.url + "/live")[0] == 200  # the page, moved


def test_the_host_apps_own_sock_route_keeps_its_options(host):
    # The host's route: its subprotocol and its 64-byte limit.
    server, _ = host
    echo = WSClient(server.ws_url().replace("/ws", "/echo"), subprotocols=["chat"])
    assert echo.ws.subprotocol == "chat"
    echo.ws.send("hello")
    assert echo.ws.recv(timeout=scaled(5)) == "hello"
    echo.ws.send("x" * 100)
    assert echo.wait_closed()[0] == 1009
    # wsproxy's route beside it: its own subprotocol and limit.
    client = WSClient(server.ws_url(), subprotocols=["bearer", "token-admin"])
    assert client.ws.subprotocol == "bearer"
    assert client.recv()["type"] == "hello"
    client.ws.send(json.dumps({"type": "ping", "pad": "x" * 1000}))
    assert client.recv_type("pong")["type"] == "pong"
    client.close()


@pytest.mark.parametrize(
    "kw, status, reason",
    [
        ({}, 401, "authentication required"),
        (
            {"additional_headers": {"Authorization": "Bearer nope"}},
            403,
            "unknown token",
        ),
        ({"subprotocols": ["bearer", "nope"]}, 403, "unknown token"),
    ],
)
def test_refusals_happen_before_the_upgrade(host, kw, status, reason):
    server, _ = host
    assert _refused(server.ws_url(), **kw) == (status, reason)
    assert _refused(server.ws_url("access_token=nope")) == (403, "unknown token")


def test_a_logged_in_user_outside_the_table_is_forbidden(host):
    server, _ = host
    cookie = _login(server, "mallory")
    assert _refused(server.ws_url(), additional_headers={"Cookie": cookie}) == (
        403,
        "user mallory may not watch changes",
    )


@pytest.mark.parametrize("how", ["cookie", "header", "query", "subprotocol"])
def test_every_way_of_presenting_credentials_works(host, mongo_client, how):
    server, db = host
    url, kw = server.ws_url(), {}
    if how == "cookie":
        kw["additional_headers"] = {"Cookie": _login(server, "admin")}
    elif how == "header":
        kw["additional_headers"] = {"Authorization": "Bearer token-admin"}
    elif how == "query":
        url = server.ws_url("access_token=token-admin")
    else:
        kw["subprotocols"] = ["bearer", "token-admin"]
    client = WSClient(url, **kw)
    if how == "subprotocol":
        assert client.ws.subprotocol == "bearer"
    assert client.recv()["type"] == "hello"
    mongo_client[db].users.insert_one({"n": 1})
    assert client.recv_type("change")["event"]["ns"]["coll"] == "users"
    client.close()


SECRET_CARD = "4111-1111-1111-1111"
SECRET_EMAIL = "ada@secret.example"


def test_a_partial_grant_sees_only_its_namespace_and_never_hidden_fields(
    host, mongo_client
):
    server, db = host
    auth = {"additional_headers": {"Authorization": "Bearer token-shop"}}
    shop = WSClient(server.ws_url(), **auth)
    shop.recv()
    orders, users = mongo_client[db].orders, mongo_client[db].users
    users.insert_one({"_id": "u1", "email": SECRET_EMAIL})
    orders.insert_one(
        {
            "_id": 1,
            "status": "open",
            "card": {"number": SECRET_CARD},
            "customer": {"name": "Ada", "email": SECRET_EMAIL},
        }
    )
    orders.update_one(
        {"_id": 1},
        {
            "$set": {
                "card.number": SECRET_CARD,
                "customer.email": SECRET_EMAIL,
                "status": "paid",
            }
        },
    )
    orders.replace_one({"_id": 1}, {"status": "new", "card": SECRET_CARD})
    texts = _texts(shop, 3)
    events = [json.loads(t)["event"] for t in texts]
    assert [e["ns"]["coll"] for e in events] == ["orders"] * 3
    assert [e["operationType"] for e in events] == ["insert", "update", "replace"]
    assert events[0]["fullDocument"]["customer"] == {"name": "Ada"}
    assert events[1]["updateDescription"]["updatedFields"] == {"status": "paid"}
    for text in texts:
        assert SECRET_CARD not in text and SECRET_EMAIL not in text
        assert '"card"' not in text

    # Through resume too: away while more happens, back from history and
    # from MongoDB (a forged-looking old id forces the catch-up path).
    last = json.loads(texts[-1])["id"]
    shop.drop()
    users.insert_one({"_id": "u2", "email": SECRET_EMAIL})
    orders.insert_one({"_id": 2, "card": {"number": SECRET_CARD}})
    first_id = json.loads(texts[0])["id"]
    for resume in (last, first_id):
        query = urllib.parse.urlencode({"resume_after": resume})
        again = WSClient(server.ws_url(query), **auth)
        again.recv()
        replay = _texts(again, 1 if resume == last else 3)
        for text in replay:
            event = json.loads(text)["event"]
            assert event["ns"]["coll"] == "orders"
            assert SECRET_CARD not in text and SECRET_EMAIL not in text
        again.close()


def test_filters_cannot_probe_hidden_fields(host, mongo_client):
    server, db = host
    auth = {"additional_headers": {"Authorization": "Bearer token-shop"}}
    probe = urllib.parse.urlencode(
        {"filter": json.dumps({"fullDocument.card.number": SECRET_CARD})}
    )
    prober = WSClient(server.ws_url(probe), **auth)
    visible = urllib.parse.urlencode(
        {"filter": json.dumps({"fullDocument.status": "open"})}
    )
    honest = WSClient(server.ws_url(visible), **auth)
    prober.recv(), honest.recv()
    mongo_client[db].orders.insert_one(
        {"_id": 9, "status": "open", "card": {"number": SECRET_CARD}}
    )
    assert honest.recv_type("change")["event"]["documentKey"] == {"_id": 9}
    with pytest.raises(AssertionError, match="no message"):
        prober.recv_type("change", timeout=1)
    prober.close(), honest.close()


def test_a_principal_filter_always_applies(host, mongo_client):
    server, db = host
    client = WSClient(
        server.ws_url(), additional_headers={"Cookie": _login(server, "open-only")}
    )
    client.recv()
    mongo_client[db].orders.insert_many(
        [{"_id": i, "status": s} for i, s in enumerate(["paid", "open", "late"])]
    )
    assert client.recv_type("change")["event"]["documentKey"] == {"_id": 1}
    client.close()


def test_asking_for_a_namespace_outside_the_grant_is_forbidden(host):
    server, db = host
    auth = {"additional_headers": {"Authorization": "Bearer token-shop"}}
    assert _refused(server.ws_url(f"ns={db}.users"), **auth) == (
        403,
        f"ns: {db}.users is not granted",
    )


def test_origin_check(mongo, namespace, gunicorn):
    db, coll = namespace
    env = {"WSPROXY_MONGODB_URI": mongo.uri, "WSPROXY_WATCH": db}
    same = gunicorn(env)
    own_origin = f"http://127.0.0.1:{same.port}"
    WSClient(same.ws_url(), origin=own_origin).close()
    assert _refused(same.ws_url(), origin="https://evil.example") == (
        403,
        "origin https://evil.example is not allowed",
    )
    listed = gunicorn(
        dict(env, WSPROXY_ALLOWED_ORIGINS="https://app.example, https://admin.example")
    )
    WSClient(listed.ws_url(), origin="https://admin.example").close()
    assert _refused(listed.ws_url(), origin="https://evil.example")[0] == 403
    # Listing origins replaces same-origin, it does not add to it.
    assert _refused(listed.ws_url(), origin=f"http://127.0.0.1:{listed.port}")[0] == 403
