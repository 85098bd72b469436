"""As a user would: a fresh virtualenv, ``pip install`` of the project
(the library only: no benchmark, no demo server), and the example host app
(examples/shop), copied outside the repository, served by that
virtualenv's gunicorn with wsproxy's packaged config and with the shop's
own config built on it."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from .helpers import ROOT, WSClient, http_get, metric, scaled, scrape, wait_for

# One xdist worker runs them all (TOGETHER in tests/conftest.py): the fresh
# virtualenv is made once a module.
pytestmark = pytest.mark.install


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with wsproxy installed, the example's copy)."""
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # From a copy of the working tree without build artefacts: setuptools
    # puts whatever a stale build/ holds into the wheel.
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            "test-artifacts",
        ),
    )
    subprocess.run(
        [python, "-m", "pip", "install", "-q", str(source)],
        check=True,
        timeout=scaled(600),
    )
    app_dir = base / "shop"
    shutil.copytree(ROOT / "examples" / "shop", app_dir)
    where = subprocess.run(
        [python, "-c", "import wsproxy; print(wsproxy.__file__)"],
        cwd=app_dir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(venv) in where and str(source) not in where
    return python, app_dir


def _serve(gunicorn, installed, mongo, db, config, workers=1, **env):
    python, app_dir = installed
    # The app's own SECRET_KEY seals ids, as for a user: no test key.
    return gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "SHOP_DB": db,
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_SECRET_KEYS": None,
            **env,
        },
        workers=workers,
        app="shop:app",
        config=config,
        python=python,
        cwd=app_dir,
    )


_INSPECT = """
import importlib, importlib.metadata, importlib.util, json, pkgutil, sys
import wsproxy
modules = sorted(m.name for m in pkgutil.walk_packages(wsproxy.__path__,
                                                       "wsproxy."))
for name in modules:
    importlib.import_module(name)
print(json.dumps({
    "files": sorted(str(f) for f in importlib.metadata.files("wsproxy")),
    "modules": modules,
    "absent": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None],
    "imported": [m for m in sys.argv[1:] if m in sys.modules],
}))
"""
# What the benchmark and the demo need, and wsproxy must not.
_NOT_DEPENDENCIES = [
    "tornado",
    "motor",
    "websockets",
    "psutil",
    "secantusdb",
    "bench",
    "demo",
]


def test_only_the_library_is_installed(installed, tmp_path):
    python, app_dir = installed
    found = subprocess.run(
        [python, "-c", _INSPECT, *_NOT_DEPENDENCIES],
        cwd=app_dir,
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert found.returncode == 0, found.stderr
    report = json.loads(found.stdout)
    # Every wsproxy module imports without any of them installed.
    assert report["absent"] == _NOT_DEPENDENCIES
    assert report["imported"] == []
    assert "wsproxy.gunicorn" in report["modules"]
    assert not [
        m
        for m in report["modules"]
        if any(word in m for word in ("bench", "demo", "embedded"))
    ]
    # The distribution installs the package and its page, nothing else.
    files = report["files"]
    assert not [f for f in files if not f.startswith(("wsproxy/", "wsproxy-"))]
    assert not [
        f for f in files if any(word in f for word in ("bench", "demo", "embedded"))
    ]
    # Every module of the package and of its layers.
    assert {
        str(path.relative_to(ROOT)) for path in (ROOT / "wsproxy").rglob("*.py")
    } <= set(files)
    assert {
        "wsproxy/templates/wsproxy/index.html",
        "wsproxy/static/app.js",
        "wsproxy/static/app.css",
        "wsproxy/static/wsproxy-client.js",
        "wsproxy/static/wsproxy-client.d.ts",
        "wsproxy/static/ejson.js",
    } <= set(files)


def test_the_example_app_with_the_packaged_config(
    installed, mongo, mongo_client, namespace, gunicorn
):
    db, _ = namespace
    server = _serve(
        gunicorn, installed, mongo, db, "python:wsproxy.gunicorn", workers=2
    )
    server.wait_every_worker_ready()

    # The shop's own routes and blueprint.
    assert http_get(server.url + "/") == (200, b"Welcome to the shop")
    assert http_get(server.url + "/account/login/staff")[0] == 200
    status, page = http_get(server.url + "/live")  # wsproxy's page
    assert status == 200
    # Its assets come from the installed package: the repository's
    # top-level static/, shipped as wsproxy/static/.
    base = re.search(rb'src="([^"]*)app\.js"', page)[1].decode()
    for name in ("app.js", "app.css", "ejson.js", "wsproxy-client.js"):
        assert http_get(server.url + base + name) == (
            200,
            (ROOT / "static" / name).read_bytes(),
        ), name

    clients = [
        WSClient(server.ws_url(), subprotocols=["bearer", "dev-token"])
        for _ in range(4)
    ]
    for client in clients:
        assert client.recv()["type"] == "hello"
    mongo_client[db]["orders"].insert_many([{"n": i, "card": "4111"} for i in range(3)])
    for client in clients:
        changes = client.changes(3)
        assert [c["event"]["fullDocument"]["n"] for c in changes] == [0, 1, 2]
    # Ids are sealed with a key derived from the shop's SECRET_KEY, the
    # same in both workers: a resume is accepted whichever one answers.
    for _ in range(4):
        again = WSClient(
            server.ws_url(f"resume_after={changes[0]['id']}"),
            subprotocols=["bearer", "dev-token"],
        )
        assert again.recv()["resume"] in ("history", "catch-up")
        assert again.changes(2)[1]["id"] == changes[2]["id"]
        again.close()

    # Every worker's watcher read the 3 events; any worker's /metrics says 6.
    wait_for(
        lambda: metric(scrape(server), "wsproxy_events_received_total") == 6,
        10,
        "events counted across both workers",
    )

    server.terminate_expecting_1001(clients, within=5)
    output = server.output()
    assert "without wsproxy's hooks" not in output
    assert "wsproxy.views: client" in output  # wsproxy's INFO log is shown


def test_the_example_app_with_its_own_config(
    installed, mongo, mongo_client, namespace, gunicorn
):
    db, _ = namespace
    server = _serve(gunicorn, installed, mongo, db, "gunicorn.conf.py", workers=2)
    server.wait_every_worker_ready()
    login = "/account/login/packing"
    import urllib.request

    with urllib.request.urlopen(server.url + login, timeout=scaled(5)) as r:
        cookie = r.headers["Set-Cookie"].split(";", 1)[0]
    # Behind nginx (ProxyFix in shop.py): known by the address it forwards.
    client = WSClient(
        server.ws_url(),
        additional_headers={"Cookie": cookie, "X-Forwarded-For": "203.0.113.7"},
    )
    assert client.recv()["type"] == "hello"
    assert "connected from 203.0.113.7 as packing" in server.output()
    mongo_client[db]["orders"].insert_one({"n": 1, "card": "4111"})
    document = client.changes(1)[0]["event"]["fullDocument"]
    assert document["n"] == 1 and "card" not in document
    server.terminate_expecting_1001([client], within=5)
    assert "without wsproxy's hooks" not in server.output()


def test_the_shops_flask_sock_route_and_wsproxy_keep_their_own_limits(
    installed, mongo, namespace, gunicorn
):
    db, _ = namespace
    server = _serve(gunicorn, installed, mongo, db, "python:wsproxy.gunicorn")
    # The shop's own Flask-Sock route, with the shop's SOCK_SERVER_OPTIONS.
    echo = WSClient(server.ws_url().replace("/ws", "/echo"), subprotocols=["chat"])
    assert echo.ws.subprotocol == "chat"
    echo.ws.send("hello")
    assert echo.ws.recv(timeout=scaled(5)) == "hello"
    echo.ws.send("x" * 100)  # over the shop's 64-byte limit
    assert echo.wait_closed()[0] == 1009

    # wsproxy's route: its own subprotocol, limit and heartbeat.
    client = WSClient(server.ws_url(), subprotocols=["bearer", "dev-token"])
    assert client.ws.subprotocol == "bearer"
    assert client.recv()["type"] == "hello"
    client.ws.send(json.dumps({"type": "ping", "pad": "x" * 1000}))
    assert client.recv_type("pong")["type"] == "pong"
    client.ws.send("x" * 5000)  # over wsproxy's 4096-byte limit
    assert client.wait_closed()[0] == 1009


def test_no_uri_fails_the_boot_with_both_ways_out(installed, gunicorn):
    python, app_dir = installed
    server = gunicorn(
        {},
        app="shop:app",
        config="python:wsproxy.gunicorn",
        python=python,
        cwd=app_dir,
        listen=False,
    )
    assert server.process.wait(scaled(30)) != 0
    output = server.output()
    assert "WSPROXY_MONGODB_URI is not set" in output
    assert "dev.py demo" in output and "WSPROXY_EMBEDDED=1" in output


def test_embedded_under_the_packaged_config_is_only_a_warning(installed, gunicorn):
    # WSPROXY_EMBEDDED belongs to the repository's demo config: the packaged
    # one says so once and still needs a URI.
    python, app_dir = installed
    server = gunicorn(
        {"WSPROXY_EMBEDDED": "1"},
        app="shop:app",
        config="python:wsproxy.gunicorn",
        python=python,
        cwd=app_dir,
        listen=False,
    )
    assert server.process.wait(scaled(30)) != 0
    output = server.output()
    assert output.count("WSPROXY_EMBEDDED is ignored") == 1
    assert "WSPROXY_MONGODB_URI is not set" in output
    assert "SecantusDB" not in output and "secantusd" not in output


def test_wsproxy_refusals_in_the_shop_are_http_statuses(
    installed, mongo, namespace, gunicorn
):
    db, _ = namespace
    server = _serve(gunicorn, installed, mongo, db, "python:wsproxy.gunicorn")
    from .helpers import refused

    assert refused(server.ws_url()) == (401, "authentication required")
    status, reason = refused(server.ws_url(), subprotocols=["bearer", "wrong"])
    assert (status, reason) == (403, "unknown token")


_LIVE_DOCUMENTS = """
import json, sys, time
from wsproxy.client import LiveDocuments, Snapshot, WSProxyClient
url, ns, cookie = sys.argv[1:4]
docs = LiveDocuments()
with WSProxyClient(url, ns=ns, snapshot=True, headers={"Cookie": cookie},
                   filter={"fullDocument.status": "open"}) as feed:
    item = feed.receive(timeout=30)
    assert isinstance(item, Snapshot), item
    docs.apply(item)
    print(json.dumps(sorted(docs.documents.values(), key=lambda d: d["n"])),
          flush=True)
    sys.stdin.readline()  # the test has changed the collection
    deadline = time.monotonic() + 30
    while len(docs.documents) != int(sys.argv[4]) and time.monotonic() < deadline:
        docs.apply(feed.receive(timeout=1))
print(json.dumps(sorted(docs.documents.values(), key=lambda d: d["n"])))
"""


def test_live_documents_from_the_installed_client(
    installed, mongo, mongo_client, namespace, gunicorn
):
    # A script of the user's, in the fresh venv, outside the repository:
    # the current open orders of the shop, then their changes.
    python, app_dir = installed
    db, _ = namespace
    orders = mongo_client[db]["orders"]
    orders.insert_many(
        [
            {"_id": n, "n": n, "card": "4111", "status": "open" if n % 2 else "paid"}
            for n in range(6)
        ]
    )
    server = _serve(gunicorn, installed, mongo, db, "python:wsproxy.gunicorn")
    import urllib.request

    with urllib.request.urlopen(
        server.url + "/account/login/packing", timeout=scaled(5)
    ) as r:
        cookie = r.headers["Set-Cookie"].split(";", 1)[0]
    with subprocess.Popen(
        [python, "-c", _LIVE_DOCUMENTS, server.ws_url(), f"{db}.orders", cookie, "2"],
        cwd=app_dir,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as script:
        first = json.loads(script.stdout.readline())
        # The packing station never sees card numbers.
        assert first == [{"_id": n, "n": n, "status": "open"} for n in (1, 3, 5)]
        orders.update_one({"_id": 3}, {"$set": {"status": "paid"}})
        script.stdin.write("\n")
        script.stdin.flush()
        last = json.loads(script.stdout.readline())
        assert [d["n"] for d in last] == [1, 5]
        assert script.wait(scaled(30)) == 0
