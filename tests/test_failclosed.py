"""Fail closed (issue 10): what a client cannot see, it cannot learn or
forge; an empty grant is nothing; the operator's rules see the whole event.
(That nothing one client does can hold up the others: test_containment.
The unit tests of the rules themselves are named after their modules:
test_redaction, test_subscription, test_principal.)"""

import json

import pytest
from websockets.exceptions import InvalidStatus

from .helpers import WSClient

HOSTAPP = "tests.hostapp:app"


@pytest.fixture
def host(mongo, namespace, gunicorn):
    """tests/hostapp.py (bearer tokens, principals) on the real gunicorn."""
    db, _ = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "HOSTAPP_DB": db,
        },
        app=HOSTAPP,
    )
    return server, db


def _bearer(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


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
    host, mongo_client
):
    server, db = host
    client = WSClient(server.ws_url(), **_bearer("token-public"))
    assert client.recv()["type"] == "hello"
    orders = mongo_client[db].orders
    orders.insert_many(
        [
            {"_id": 1, "confidential": True, "title": "merger"},
            {"_id": 2, "title": "picnic"},
        ]
    )
    event = client.recv_type("change")["event"]
    assert event["documentKey"] == {"_id": 2}
    assert "confidential" not in event["fullDocument"]
    with pytest.raises(AssertionError, match="no message"):
        client.recv_type("change", timeout=1)
    client.close()


# ---------------------------------------------------------------------------
# Sealed resume ids (sealing.py).

TOKENS = [
    {"_data": "8263A1B2C3000000012B022C0100296E5A1004"},
    {"_data": "82ab"},  # lowercase hex
    {"_data": "82aB"},  # mixed: kept as BSON
    {"_data": "82A"},  # odd length: BSON
    {"_data": "82AB", "_typeBits": b"\x01"},
]


@pytest.mark.parametrize("token", TOKENS)
def test_ids_round_trip_and_are_the_same_in_every_process(token):
    from wsproxy.access.sealing import Sealer

    one, other = Sealer(["k" * 32]), Sealer(["k" * 32])
    sealed = one.seal(token)
    assert other.seal(token) == sealed  # deterministic
    assert other.unseal(sealed) == token
    assert Sealer(["j" * 32]).seal(token) != sealed
    assert set(sealed) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )  # URL-safe as it is


def test_an_id_reveals_nothing_of_the_token():
    from wsproxy.access.sealing import Sealer

    secret = b"ada@secret.example".hex().upper()
    token = {"_data": "8263A1B2C3" + secret}
    sealed = Sealer(["k" * 32]).seal(token)
    for fragment in (secret, secret.lower(), token["_data"][:10]):
        assert fragment not in sealed


def test_hex_tokens_of_either_case_are_packed_as_bytes():
    # The id's length is most of a compressed message's: a hex token is
    # sealed as its bytes, not as BSON text, whether MongoDB's uppercase
    # or SecantusDB's lowercase.
    from wsproxy.access.sealing import Sealer

    sealer, data = Sealer(["k" * 32]), "8263a1b2c3000000012b022c0100296e5a1004" * 3
    lower = sealer.seal({"_data": data})
    assert len(lower) == len(sealer.seal({"_data": data.upper()}))
    assert len(lower) < len(sealer.seal({"_data": data[:-1] + "G"})) * 2 // 3
    assert sealer.unseal(lower) == {"_data": data}


def _flip(text, at):
    swap = "A" if text[at] != "A" else "B"
    return text[:at] + swap + text[at + 1 :]


def test_crafted_foreign_and_tampered_ids_are_not_resume_tokens():
    from wsproxy import ClientError
    from wsproxy.access.sealing import Sealer

    sealer = Sealer(["k" * 32])
    good = sealer.seal(TOKENS[0])
    bad = [
        TOKENS[0]["_data"],  # crafted: unsealed
        Sealer(["f" * 32]).seal(TOKENS[0]),  # foreign key
        _flip(good, 0),
        _flip(good, len(good) // 2),
        _flip(good, -2),
        good[:-1],
        good + "A",
        good + "==",
        "A" * 40,
        "",
        "not a token",
        "b64:AAAA",
        "x" * 9000,
        42,
        None,
    ]
    for text in bad:
        with pytest.raises(ClientError) as info:
            sealer.unseal(text)
        assert info.value.reason == "resume_after: not a resume token"
        assert info.value.status == 400


def test_key_rotation_opens_old_ids_and_reseals_them_with_the_current_key():
    from wsproxy import ClientError
    from wsproxy.access.sealing import Sealer

    old, new = "o" * 32, "n" * 32
    before = Sealer([old]).seal(TOKENS[0])
    rotated = Sealer([new, old])
    assert rotated.unseal(before) == TOKENS[0]
    assert rotated.canonical(before) == Sealer([new]).seal(TOKENS[0])
    assert rotated.seal(TOKENS[0]) != before
    with pytest.raises(ClientError):
        Sealer([new]).unseal(before)  # old key retired


def test_keys_come_from_config_or_secret_key_and_fail_closed_without():
    from wsproxy import ConfigError
    from wsproxy.access.sealing import Sealer, from_config

    token = TOKENS[0]
    listed = from_config(
        {"WSPROXY_SECRET_KEYS": ["n" * 32, "o" * 32], "SECRET_KEY": "s" * 32}
    )
    assert listed.seal(token) == Sealer(["n" * 32]).seal(token)
    assert from_config({"WSPROXY_SECRET_KEYS": "n" * 32}).seal(token) == listed.seal(
        token
    )
    flask = from_config({"SECRET_KEY": "s" * 32, "SECRET_KEY_FALLBACKS": ["o" * 32]})
    assert flask.seal(token) == Sealer(["s" * 32]).seal(token)
    assert flask.unseal(Sealer(["o" * 32]).seal(token)) == token
    for config in (
        {},
        {"SECRET_KEY": None},
        {"SECRET_KEY": ""},
        {"WSPROXY_SECRET_KEYS": []},
    ):
        with pytest.raises(ConfigError, match="WSPROXY_SECRET_KEYS"):
            from_config(config)
    for config in (
        {"WSPROXY_SECRET_KEYS": ["short"]},
        {"SECRET_KEY": "s" * 32, "SECRET_KEY_FALLBACKS": ["x"]},
        {"WSPROXY_SECRET_KEYS": [123]},
    ):
        with pytest.raises(ConfigError):
            from_config(config)


def test_init_app_refuses_to_start_without_a_key():
    from flask import Flask

    from wsproxy import ConfigError, WSProxy

    app = Flask(__name__)
    app.config["WSPROXY_MONGODB_URI"] = "mongodb://127.0.0.1:1/?replicaSet=x"
    with pytest.raises(ConfigError, match="WSPROXY_SECRET_KEYS"):
        WSProxy(app)
    app.config["SECRET_KEY"] = "s" * 32
    WSProxy(app)  # Flask's own key will do


def test_hidden_key_fields_do_not_leak_through_ids(host, mongo_client):
    server, db = host
    client = WSClient(server.ws_url(), **_bearer("token-keyless"))
    assert client.recv()["type"] == "hello"
    secret = "ada@secret.example"
    mongo_client[db].orders.insert_one({"_id": secret, "n": 1})
    text = client.ws.recv(timeout=5)
    while json.loads(text)["type"] != "change":
        text = client.ws.recv(timeout=5)
    message = json.loads(text)
    assert message["event"]["fullDocument"] == {"n": 1}
    for fragment in (secret, secret.encode().hex(), secret.encode().hex().upper()):
        assert fragment not in text
    # The id still resumes, and a tampered one is refused like garbage.
    again = WSClient(
        server.ws_url("resume_after=" + message["id"]), **_bearer("token-keyless")
    )
    assert again.recv()["resume"] == "history"
    again.close()
    with pytest.raises(InvalidStatus) as info:
        WSClient(
            server.ws_url("resume_after=" + _flip(message["id"], 5)),
            **_bearer("token-keyless"),
        )
    assert info.value.response.status_code == 400
    assert (
        json.loads(info.value.response.body)["error"]
        == "resume_after: not a resume token"
    )
    client.close()


@pytest.mark.parametrize(
    "env, works",
    [
        ({"WSPROXY_SECRET_KEYS": "k" * 32}, True),
        ({"SECRET_KEY": "s" * 32}, True),
        ({}, False),
    ],
)
def test_wsgi_app_takes_its_key_from_the_environment(env, works):
    import os
    import subprocess
    import sys

    from .helpers import ROOT, scaled

    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WSPROXY_SECRET_KEYS", "SECRET_KEY")
    }
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={
            **clean,
            **env,
            "WSPROXY_MONGODB_URI": "mongodb://127.0.0.1:1/?replicaSet=x",
        },
    )
    assert (result.returncode == 0) == works, result.stderr[-2000:]
    if not works:
        assert "ConfigError" in result.stderr
        assert "WSPROXY_SECRET_KEYS" in result.stderr
