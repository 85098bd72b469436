"""Wrong setups fail loudly, once, with the fix: bad WSPROXY_WATCH and
WSPROXY_PIPELINE values, a server that cannot hold a
WebSocket, a gunicorn worker without wsproxy's hooks, no URI at all."""

import json
import re
import socket

import pytest
from flask import Flask

from wsproxy import ConfigError, WSProxy
from wsproxy.config import apply_defaults, validate

from .helpers import ROOT, WSClient, http_get, refused, scaled, wait_for

URI = "mongodb://127.0.0.1:9/?replicaSet=none"  # never contacted here


def make_app(**config):
    app = Flask(__name__)
    app.config["WSPROXY_MONGODB_URI"] = URI
    app.config["SECRET_KEY"] = "setup-tests-secret-key"
    app.config.update(config)
    return app


@pytest.mark.parametrize(
    "watch, why",
    [
        ("$bad", "cannot contain '$'"),
        ("shop/orders", "cannot contain '/'"),
        ("sh op", "cannot contain ' '"),
        (".orders", "empty database name"),
        ("shop.", "empty collection name"),
        ("shop.$cmd", "cannot contain '$'"),
        ("shop.system.users", "system collections"),
        # PyMongo's InvalidName killed the worker at boot.
        ("shop..orders", "cannot start or end with '.'"),
        ("shop.orders.", "cannot start or end with '.'"),
        ("x" * 64, "at most 63 bytes"),
        (42, "a string"),
    ],
)
def test_a_bad_watch_is_refused_at_init_app(watch, why):
    with pytest.raises(ConfigError) as info:
        WSProxy(make_app(WSPROXY_WATCH=watch))
    assert "WSPROXY_WATCH" in str(info.value) and why in str(info.value)


@pytest.mark.parametrize(
    "watch", ["", "shop", "shop.orders", "shop.orders.2026", "my-db_1.c"]
)
def test_a_good_watch_is_accepted(watch):
    app = make_app(WSPROXY_WATCH=watch)
    WSProxy(app)
    assert app.config["WSPROXY_WATCH"] == watch


@pytest.mark.parametrize(
    "pipeline, why",
    [
        ('[{"$bogus": 1}]', "'$bogus' is not allowed"),
        ('[{"$lookup": {"from": "x"}}]', "'$lookup' is not allowed"),
        ('[{"$project": {"_id": 0}}]', "$project changes _id"),
        ('[{"$project": {"_id": "$fullDocument"}}]', "$project changes _id"),
        ('[{"$project": {"_id._data": 0}}]', "$project changes _id._data"),
        ('[{"$unset": "_id"}]', "$unset removes _id"),
        ('[{"$unset": ["a", "_id"]}]', "$unset removes _id"),
        ('[{"$set": {"_id": 1}}]', "$set rewrites _id"),
        ('[{"$addFields": {"_id._data": "x"}}]', "$addFields rewrites _id._data"),
        ('[{"$replaceRoot": {"newRoot": "$fullDocument"}}]', "must keep _id"),
        (
            '[{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"_id": 1}]}}]',
            "must keep _id",
        ),
        ('[{"$match": {}, "$project": {}}]', "a stage is one"),
        ('{"$match": {}}', "a list of stages"),
        ('[{"$match": ', "not JSON"),
    ],
)
def test_a_bad_pipeline_is_refused_at_init_app(pipeline, why):
    with pytest.raises(ConfigError) as info:
        WSProxy(make_app(WSPROXY_PIPELINE=pipeline))
    assert "WSPROXY_PIPELINE" in str(info.value) and why in str(info.value)


def test_a_good_pipeline_is_accepted():
    stages = [
        {"$match": {"operationType": {"$in": ["insert", "update"]}}},
        {"$project": {"fullDocument.card": 0, "_id": 1}},
        {"$set": {"seen": True}},
        {"$unset": ["fullDocument.secret"]},
        {"$replaceWith": {"$mergeObjects": ["$$ROOT", {"extra": 1}]}},
        {"$replaceRoot": {"newRoot": {"_id": "$_id", "ns": "$ns"}}},
        {"$redact": "$$KEEP"},
    ]
    app = make_app(WSPROXY_PIPELINE=json.dumps(stages))
    WSProxy(app)
    assert app.config["WSPROXY_PIPELINE"] == stages


def test_no_uri_anywhere_says_both_ways_out(monkeypatch):
    monkeypatch.delenv("WSPROXY_MONGODB_URI", raising=False)
    with pytest.raises(ConfigError) as info:
        WSProxy(Flask(__name__))
    message = str(info.value)
    # What to set first; the demo only for a checkout of the repository.
    assert message.startswith(
        "WSPROXY_MONGODB_URI is not set: set it, in "
        "app.config or the environment, to your"
    )
    assert "dev.py demo" in message and "WSPROXY_EMBEDDED=1" in message
    assert message.index("in a checkout of wsproxy's repository") < (
        message.index("dev.py demo")
    )


@pytest.mark.parametrize(
    "key, closest",
    [
        ("WSPROXY_WACTH", "WSPROXY_WATCH"),
        ("WSPROXY_MAX_CLIENT", "WSPROXY_MAX_CLIENTS"),
        ("WSPROXY_ALLOWED_HOST", "WSPROXY_ALLOWED_HOSTS"),
        ("WSPROXY_SECRET_KEY", "WSPROXY_SECRET_KEYS"),
    ],
)
def test_a_misspelt_setting_is_refused_with_the_closest_name(monkeypatch, key, closest):
    with pytest.raises(ConfigError) as info:
        WSProxy(make_app(**{key: "x"}))
    assert str(info.value) == (
        f"{key} (in app.config) is not a wsproxy setting; did you mean {closest}?"
    )
    monkeypatch.setenv(key, "x")
    with pytest.raises(ConfigError) as info:
        WSProxy(make_app())
    assert str(info.value) == (
        f"{key} (in the environment) is not a wsproxy setting; did you mean {closest}?"
    )


def test_a_name_like_no_setting_points_to_the_readme():
    with pytest.raises(
        ConfigError,
        match="is not a wsproxy setting; the settings are listed in the README",
    ):
        WSProxy(make_app(WSPROXY_QQQQQQQQ=1))


def test_environment_only_variables_are_known_names(monkeypatch):
    for name in (
        "WSPROXY_THREADS",
        "WSPROXY_BIND",
        "WSPROXY_LOG_LEVEL",
        "WSPROXY_GRACEFUL_TIMEOUT",
        "WSPROXY_DEMO_WRITER",
        "WSPROXY_EMBEDDED_STORAGE",
        "WSPROXY_TEST_TIMEOUT_SCALE",
        "WSPROXY_CHROMIUM",
        "WSPROXY_TEST_ARTIFACTS",
        "WSPROXY_EMBEDDED",
    ):
        monkeypatch.setenv(name, "1")
    WSProxy(make_app())
    # In app.config one of them would do nothing: refused, saying where.
    with pytest.raises(
        ConfigError,
        match="WSPROXY_THREADS \\(in app.config\\) is read from the environment only",
    ):
        WSProxy(make_app(WSPROXY_THREADS=50))


@pytest.mark.parametrize(
    "value, why",
    [
        (
            "nope.mod:fn",
            "WSPROXY_AUTHORIZE='nope.mod:fn': cannot import module "
            "'nope.mod' (No module named 'nope'); give 'package.module:function' "
            "with a module the app can import",
        ),
        (
            "json:nope",
            "WSPROXY_AUTHORIZE='json:nope': module 'json' has no "
            "'nope'; give 'package.module:function' naming a function it defines",
        ),
        ("json.nope", "WSPROXY_AUTHORIZE='json.nope': module 'json' has no 'nope'"),
        ("nomodule", "WSPROXY_AUTHORIZE='nomodule': must be 'package.module:function'"),
    ],
)
def test_an_authorizer_that_cannot_be_imported_says_why(value, why):
    with pytest.raises(ConfigError) as info:
        WSProxy(make_app(WSPROXY_AUTHORIZE=value))
    assert str(info.value).startswith(why)


def test_an_authorizer_by_name_is_imported():
    from wsproxy.access import bearer_token  # any function will do here

    for name in ("wsproxy.access:bearer_token", "wsproxy.access.bearer_token"):
        app = make_app(WSPROXY_AUTHORIZE=name)
        WSProxy(app)
        assert app.config["WSPROXY_AUTHORIZE"] is bearer_token


def test_settings_come_from_the_app_then_the_environment_then_defaults():
    config = {"WSPROXY_WATCH": "from_app", "WSPROXY_MONGODB_URI": URI}
    apply_defaults(
        config,
        {
            "WSPROXY_WATCH": "from_env",
            "WSPROXY_MAX_CLIENTS": "7",
            "WSPROXY_HIDE_FIELDS": "card, customer.email",
            "WSPROXY_READY_DETAILS": "yes",
        },
    )
    validate(config)
    assert config["WSPROXY_WATCH"] == "from_app"
    assert config["WSPROXY_HIDE_FIELDS"] == ["card", "customer.email"]
    assert config["WSPROXY_READY_DETAILS"] is True
    assert config["WSPROXY_MAX_CLIENTS"] == 7
    assert config["WSPROXY_PATH"] == "/ws"


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("WSPROXY_MAX_CLIENTS", "many", "invalid literal"),
        ("WSPROXY_MAX_CLIENTS", 0, "must be >= 1"),
        ("WSPROXY_SEND_TIMEOUT", -1, "must be > 0"),
        ("WSPROXY_READY_DETAILS", "perhaps", "must be true or false"),
        ("WSPROXY_FULL_DOCUMENT", "always", "must be one of"),
        ("WSPROXY_HIDE_FIELDS", ["$where"], "dotted field names"),
        ("WSPROXY_AUTHORIZE", "no_such_module:authorize", "no_such_module"),
        ("WSPROXY_AUTHORIZE", 42, "must be a callable"),
        ("WSPROXY_PAGE_PATH", "live", "must be a path starting with /"),
    ],
)
def test_each_bad_value_names_its_key_and_why(key, value, why):
    with pytest.raises(ConfigError) as info:
        WSProxy(make_app(**{key: value}))
    assert str(info.value).startswith(f"{key}=") and why in str(info.value)


# -- served by the real gunicorn -------------------------------------------


def _env(mongo, db):
    return {"WSPROXY_MONGODB_URI": mongo.uri, "WSPROXY_WATCH": db}


def test_the_sync_worker_refuses_websockets_with_the_fix(gunicorn, mongo, namespace):
    server = gunicorn(_env(mongo, namespace[0]), args=["-k", "sync", "--threads", "1"])
    for _ in range(2):
        status, reason = refused(server.ws_url())
        assert status == 500 and "-c python:wsproxy.gunicorn" in reason
    # A browser, which cannot see that status, can ask for it.
    status, body = http_get(server.url + "/ws", headers={"Accept": "application/json"})
    assert status == 500 and json.loads(body)["status"] == 500
    # The worker was not blocked: it still answers.
    assert http_get(server.url + "/healthz")[0] == 200
    errors = re.findall(r"\[ERROR\] wsproxy[^\n]*", server.output())
    assert len(errors) == 1, errors
    assert "-c python:wsproxy.gunicorn" in errors[0]


def test_plain_gunicorn_refuses_websockets_with_one_logged_error(
    gunicorn, mongo, namespace, tmp_path
):
    # `gunicorn myapp:app`: the sync worker and no logging config for
    # wsproxy. The body and the log name the same fix, and the log line is
    # gunicorn's, with its time and level.
    server = gunicorn(
        _env(mongo, namespace[0]),
        config=None,
        cwd=tmp_path,
        args=["--pythonpath", str(ROOT)],
    )
    for _ in range(2):
        status, reason = refused(server.ws_url())
        assert status == 500
        assert reason.endswith(
            "serve with gunicorn -c python:wsproxy.gunicorn "
            "(or -k gthread --threads N, N the connections "
            "a worker holds)"
        )
    lines = [
        line for line in server.output().splitlines() if "one request at a time" in line
    ]
    assert len(lines) == 1, lines
    assert re.match(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] "
        r"\[\d+\] \[ERROR\] wsproxy: ",
        lines[0],
    ), lines[0]
    assert "-c python:wsproxy.gunicorn (or -k gthread --threads N" in lines[0]


def test_a_worker_without_the_hooks_warns_once(gunicorn, mongo, namespace, tmp_path):
    # Run elsewhere: gunicorn reads ./gunicorn.conf.py when given no -c.
    server = gunicorn(
        _env(mongo, namespace[0]),
        config=None,
        cwd=tmp_path,
        args=["-k", "gthread", "--threads", "20", "--pythonpath", str(ROOT)],
    )
    for _ in range(2):
        client = WSClient(server.ws_url())
        assert client.recv()["type"] == "hello"
        client.close()
    wait_for(
        lambda: "without wsproxy's hooks" in server.output(),
        5,
        "the missing-hooks warning",
    )
    # No logging config for wsproxy here: gunicorn's error log has it.
    warnings = re.findall(r"[^\n]*without wsproxy's hooks[^\n]*", server.output())
    assert len(warnings) == 1
    assert "1001" in warnings[0] and "/metrics" in warnings[0]


def test_the_packaged_hooks_give_no_warning(gunicorn, mongo, namespace):
    server = gunicorn(_env(mongo, namespace[0]), config="python:wsproxy.gunicorn")
    client = WSClient(server.ws_url())
    assert client.recv()["type"] == "hello"
    client.close()
    server.stop()
    assert "without wsproxy's hooks" not in server.output()


def test_a_malformed_request_line_never_logs_its_access_token(
    gunicorn, mongo, namespace
):
    # gunicorn's WARNING quotes a malformed request line whole.
    server = gunicorn(_env(mongo, namespace[0]), config="python:wsproxy.gunicorn")
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET /ws?x=1&access_token=SECRET-line\r\n\r\n")
        raw.settimeout(scaled(5))
        assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    wait_for(
        lambda: "Invalid HTTP request line" in server.output(), 5, "gunicorn's warning"
    )
    output = server.output()
    assert "SECRET" not in output
    assert "Invalid HTTP request line: 'GET /ws?x=1&access_token=***'" in output


@pytest.mark.parametrize(
    "scope, what",
    [
        ("{db}.orders", "collection '{db}.orders'"),
        ("{db}", "database '{db}'"),
    ],
)
def test_a_missing_watched_scope_is_one_warning(
    gunicorn, mongo, mongo_client, namespace, scope, what
):
    db = namespace[0]  # dropped: neither it nor its collection exists
    server = gunicorn(
        _env(mongo, scope.format(db=db)), config="python:wsproxy.gunicorn"
    )
    warning = f"the watched {what.format(db=db)} does not exist (yet)"
    wait_for(lambda: warning in server.output(), 10, "the warning")
    assert server.output().count("does not exist") == 1
    assert "[WARNING] wsproxy.scopecheck" in server.output()
    # It may be created later: the feed works once it is.
    client = WSClient(server.ws_url())
    assert client.recv()["type"] == "hello"
    mongo_client[db].orders.insert_one({"_id": 1})
    assert client.recv_type("change")["event"]["fullDocument"] == {"_id": 1}
    client.close()


def test_an_existing_watched_scope_gives_no_warning(
    gunicorn, mongo, mongo_client, namespace
):
    db = namespace[0]
    mongo_client[db].orders.insert_one({"_id": 1})
    server = gunicorn(_env(mongo, f"{db}.orders"), config="python:wsproxy.gunicorn")
    client = WSClient(server.ws_url())
    assert client.recv()["watcher"] == "connected"
    mongo_client[db].orders.insert_one({"_id": 2})
    client.recv_type("change")
    client.close()
    assert "does not exist" not in server.output()
