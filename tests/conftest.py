import os

import pymongo
import pytest

from demo.embedded import EmbeddedMongo

from .helpers import Gunicorn


@pytest.fixture(scope="session")
def mongo(tmp_path_factory):
    """One SecantusDB for the session, on a free port with its own data."""
    server = EmbeddedMongo(str(tmp_path_factory.mktemp("secantus")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_mongo(tmp_path):
    """A SecantusDB of this test's own, for tests that kill it: durable, so
    acknowledged writes survive kill -9."""
    server = EmbeddedMongo(str(tmp_path / "data"), durable=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_client(mongo):
    client = pymongo.MongoClient(mongo.uri)
    yield client
    client.close()


@pytest.fixture
def namespace(request, mongo_client):
    """A fresh db.coll per test, so tests never see each other's events."""
    name = "".join(c for c in request.node.name if c.isalnum())[:40]
    db = f"t_{name}"
    mongo_client.drop_database(db)
    return db, "items"


@pytest.fixture
def gunicorn():
    """Factory: start real gunicorn servers; all are stopped at the end."""
    servers = []

    def start(env, workers=1, args=(), ready=True, app="wsgi:app",
              listen=True, **kw):
        server = Gunicorn(env, workers=workers, args=args, app=app, **kw)
        servers.append(server)
        return server.start(ready=ready, listen=listen)

    yield start
    for server in servers:
        server.stop()


CHROMIUM = os.environ.get("WSPROXY_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser_page():
    """A Chromium page (Debian's browser, driven by Playwright). Uncaught
    errors of its scripts are collected in ``page.script_errors``."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), (
        "the browser tests need Chromium: python3 dev.py test installs it")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.script_errors = []
        page.on("pageerror", lambda exc: page.script_errors.append(str(exc)))
        yield page
        browser.close()
