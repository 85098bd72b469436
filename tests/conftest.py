import hashlib
import json
import os

import pymongo
import pytest

from demo.embedded import EmbeddedMongo

from .helpers import Gunicorn, stable_port

# How the suite runs fast (``python3 dev.py test``; markers and their lists
# in pyproject.toml): a parallel pass with pytest-xdist workers, then a serial
# pass of the tests that measure (latency or capacity against a baseline of
# the same run), alone on the machine. ``--serial-tests`` picks the pass; a
# plain ``pytest`` runs everything in series, both kinds.


def pytest_addoption(parser):
    parser.addini("slow_markers", type="args", default=[],
                  help="markers of slow tests: each of their tests is also "
                       "marked slow, so -m 'not slow' is the inner loop")
    parser.addini("serial_markers", type="args", default=[],
                  help="markers of tests that measure and so must run alone "
                       "(see --serial-tests)")
    parser.addoption("--serial-tests", choices=("include", "exclude", "only"),
                     default="include",
                     help="include (default), exclude or only run the tests "
                          "with a serial_markers marker: python3 dev.py test "
                          "runs 'exclude' on parallel workers, then 'only' "
                          "in series")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    slow = set(config.getini("slow_markers"))
    serial = set(config.getini("serial_markers"))
    which = config.getoption("serial_tests")
    kept, deselected = [], []
    for item in items:
        if "browser_page" in item.fixturenames:
            item.add_marker(pytest.mark.browser)
        names = {mark.name for mark in item.iter_markers()}
        if names & slow:
            item.add_marker(pytest.mark.slow)
        alone = bool(names & serial)
        if which == "include" or alone == (which == "only"):
            kept.append(item)
        else:
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_terminal_summary(terminalreporter, config):
    """For python3 dev.py test, which adds up its two passes: this pass's
    counts, in the file WSPROXY_TEST_COUNTS names (the controller only, under
    xdist: it has every worker's reports)."""
    path = os.environ.get("WSPROXY_TEST_COUNTS")
    if not path or hasattr(config, "workerinput"):
        return
    counts = {key: len(terminalreporter.stats.get(key, ()))
              for key in ("passed", "failed", "error", "skipped")}
    with open(path, "w") as f:
        json.dump(counts, f)


@pytest.fixture(scope="session")
def mongo(tmp_path_factory):
    """One SecantusDB for the session (for each xdist worker), on a free
    port with its own data."""
    server = EmbeddedMongo(str(tmp_path_factory.mktemp("secantus")),
                           port=stable_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_mongo(tmp_path):
    """A SecantusDB of this test's own, for tests that kill it: durable, so
    acknowledged writes survive kill -9. Its port is outside the ephemeral
    range, so a test beside it cannot take it while it is down."""
    server = EmbeddedMongo(str(tmp_path / "data"), durable=True,
                           port=stable_port())
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
    """A fresh db.coll per test, so tests never see each other's events:
    readable (the test's name, cut to fit MongoDB's 64-byte database names)
    and unique (a digest of the test's full id, parameters included)."""
    name = "".join(c for c in request.node.name if c.isalnum())[:40]
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    db = f"t_{name}_{digest}"
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


@pytest.fixture(scope="session")
def chromium():
    """One Chromium for the session (for each xdist worker): Debian's
    browser, driven by Playwright. Tests get a fresh context of it
    (browser_page), as isolated as a browser of their own."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), (
        "the browser tests need Chromium: python3 dev.py test installs it")
    with sync_playwright() as pw:
        def launch():
            return pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                      "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"])

        browser = [launch()]

        def get():
            if not browser[0].is_connected():  # a test crashed it
                browser[0] = launch()
            return browser[0]

        yield get
        browser[0].close()


@pytest.fixture
def browser_page(chromium):
    """A page in a fresh browser context (no cookies, storage or cache from
    another test). Uncaught errors of its scripts are collected in
    ``page.script_errors``."""
    browser = chromium()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.script_errors = []
    page.on("pageerror", lambda exc: page.script_errors.append(str(exc)))
    yield page
    # Every context, with the pages a test opened itself
    # (page.context.browser.new_page()): none outlives its test.
    for each in list(browser.contexts):
        each.close()
