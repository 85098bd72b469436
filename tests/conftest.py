import hashlib
import json
import os

import pymongo
import pytest

from demo.embedded import EmbeddedMongo

from .helpers import Gunicorn, stable_port

# How the suite runs fast (``python3 dev.py test``; the markers and their
# lists are in pyproject.toml): a parallel pass on pytest-xdist workers, then
# a serial pass of the tests that measure (latency against a baseline of the
# same run, memory or file descriptors under load), alone on the machine.
# ``--serial-tests`` picks the pass; a plain ``pytest`` runs both kinds.

# Which tests a worker starts first (lower first; unlisted markers 3): the
# longest, so that none of them starts last and holds up the end of the run.
_FIRST = {
    "install": 0,
    "bench": 0,
    "heavy": 1,
    "capacity": 1,
    "timing": 1,
    "browser": 2,
}


# Modules whose tests share module-scoped fixtures (a server and its
# bystander, a fresh virtualenv): one xdist worker runs each of them whole.
# (Not xdist_group marks: pytest-xdist 3.8 groups them by a suffix to the
# node id that pytest 9 no longer reads.)
TOGETHER = {"tests/test_hostile.py", "tests/test_install.py"}


@pytest.hookimpl(optionalhook=True)  # without xdist (-p no:xdist): unused
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup, by TOGETHER: each other test on its own, to the
    next free worker, in the order the workers collected them."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return module if module in TOGETHER else nodeid

    return Scheduler(config, log)


def pytest_addoption(parser):
    parser.addini(
        "slow_markers",
        type="args",
        default=[],
        help="markers of slow tests: each of their tests is also "
        "marked slow, so -m 'not slow' is the inner loop",
    )
    parser.addini(
        "serial_markers",
        type="args",
        default=[],
        help="markers of tests that measure and so must run alone (see --serial-tests)",
    )
    parser.addoption(
        "--serial-tests",
        choices=("include", "exclude", "only"),
        default="include",
        help="include (default), exclude or only run the tests "
        "with a serial_markers marker: python3 dev.py test "
        "runs 'exclude' on parallel workers, then 'only' "
        "in series",
    )


def pytest_configure(config):
    # python3 dev.py test prints the slowest tests of both passes together
    # at the end (see pytest_terminal_summary): not each pass its own.
    if os.environ.get("DEV_PY_TEST_SUMMARY"):
        config.option.durations = None


@pytest.hookimpl(tryfirst=True)  # before -m and xdist read the marks
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
    if hasattr(config, "workerinput"):  # on xdist workers: the longest first
        kept.sort(
            key=lambda item: min(
                [_FIRST.get(mark.name, 3) for mark in item.iter_markers()], default=3
            )
        )
    items[:] = kept


def pytest_terminal_summary(terminalreporter, config):
    """For python3 dev.py test, which adds up its two passes: this pass's
    counts, failures and slowest tests, in the file DEV_PY_TEST_SUMMARY
    names (by the controller only, under xdist: it has every worker's
    reports)."""
    path = os.environ.get("DEV_PY_TEST_SUMMARY")
    if not path or hasattr(config, "workerinput"):
        return
    stats = terminalreporter.stats
    took = {}
    for reports in stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                took[report.nodeid] = took.get(report.nodeid, 0.0) + report.duration
    summary = {
        key: len(stats.get(key, ())) for key in ("passed", "failed", "error", "skipped")
    }
    summary["failures"] = sorted(
        {report.nodeid for key in ("failed", "error") for report in stats.get(key, ())}
    )
    summary["slowest"] = sorted(took.items(), key=lambda kv: -kv[1])[:30]
    with open(path, "w") as f:
        json.dump(summary, f)


@pytest.fixture(scope="session")
def mongo(tmp_path_factory):
    """One SecantusDB for the session (for each xdist worker), on a free
    port with its own data."""
    server = EmbeddedMongo(str(tmp_path_factory.mktemp("secantus")), port=stable_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_mongo(tmp_path):
    """A SecantusDB of this test's own, for tests that kill it: durable, so
    acknowledged writes survive kill -9. Its port is outside the ephemeral
    range, so a test beside it cannot take it while it is down."""
    server = EmbeddedMongo(str(tmp_path / "data"), durable=True, port=stable_port())
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
    """A fresh db.coll per test, so tests never see each other's events,
    also from parallel workers: readable (the start of the test's name) and
    unique (a digest of its full id, parameters included). 42 characters at
    most, as long as the names were before: tests and the server cut
    namespaces in messages (e.g. to 60 characters)."""
    name = "".join(c for c in request.node.name if c.isalnum())[:29]
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    db = f"t_{name}_{digest}"
    mongo_client.drop_database(db)
    return db, "items"


@pytest.fixture
def gunicorn():
    """Factory: start real gunicorn servers; all are stopped at the end."""
    servers = []

    def start(env, workers=1, args=(), ready=True, app="wsgi:app", listen=True, **kw):
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
        "the browser tests need Chromium: python3 dev.py test installs it"
    )
    with sync_playwright() as pw:

        def launch():
            return pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )

        browser = [launch()]

        def get():
            if not browser[0].is_connected():  # a test crashed it
                browser[0] = launch()
            return browser[0]

        yield get
        browser[0].close()


@pytest.fixture(autouse=True)
def _no_playwright_loop_outside_browser_tests(request):
    """Playwright's sync API marks its asyncio loop as the thread's running
    loop between its calls, so while the session's Chromium (above) lives,
    asyncio.run() would refuse to start in any later test of the worker. A
    test that does not drive the browser runs without it (an earlier test
    of the worker may have started it); the mark is put back afterwards."""
    import asyncio

    loop = asyncio._get_running_loop()
    if loop is None or "chromium" in request.fixturenames:
        yield
        return
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)


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
