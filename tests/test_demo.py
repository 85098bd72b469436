"""Start-up: the demo command with no MongoDB configured serves the page and
live events from the embedded server, and cleans up after itself. The
embedded server is the repository's gunicorn.conf.py's doing, never the
packaged config's."""

import re

import psutil

from .helpers import WSClient, http_get, scaled, wait_for


def test_demo_serves_the_page_and_live_events_without_mongodb(gunicorn):
    # What `python3 dev.py demo` runs: the repository's gunicorn.conf.py, no
    # URI, the embedded server asked for, and no key: the config makes one
    # for the run.
    server = gunicorn(
        {"WSPROXY_EMBEDDED": "1", "WSPROXY_SECRET_KEYS": None, "SECRET_KEY": None}
    )
    status, body = http_get(server.url + "/")
    assert status == 200
    page = body.decode()
    assert 'content="/ws"' in page and "/wsproxy-static/app.js" in page
    assert http_get(server.url + "/wsproxy-static/app.js")[0] == 200
    assert http_get(server.url + "/wsproxy-static/app.css")[0] == 200

    client = WSClient(server.ws_url())
    assert client.recv()["watch"] == "demo"
    # The demo writer makes a few changes per second.
    change = client.recv_type("change", timeout=10)
    assert change["event"]["ns"]["db"] == "demo"
    client.close()
    # Its ids are sealed and resume.
    again = WSClient(server.ws_url(f"resume_after={change['id']}"))
    assert again.recv()["resume"] in ("history", "catch-up")
    again.close()

    pids = [
        int(p) for p in re.findall(r"embedded SecantusDB pid (\d+)", server.output())
    ]
    writer = [int(p) for p in re.findall(r"demo writer pid (\d+)", server.output())]
    assert len(pids) == 1 and len(writer) == 1
    assert server.stop() == 0
    for pid in pids + writer:
        wait_for(
            lambda pid=pid: (
                not psutil.pid_exists(pid)
                or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            ),
            10,
            f"pid {pid} to exit",
        )


def test_the_packaged_config_never_starts_the_embedded_server(gunicorn):
    # SecantusDB is installed here (requirements.txt), yet wsproxy.gunicorn
    # only warns that WSPROXY_EMBEDDED is the repository config's setting.
    server = gunicorn(
        {"WSPROXY_EMBEDDED": "1"}, config="python:wsproxy.gunicorn", listen=False
    )
    assert server.process.wait(scaled(30)) != 0
    output = server.output()
    assert output.count("WSPROXY_EMBEDDED is ignored") == 1
    assert "WSPROXY_MONGODB_URI is not set" in output
    assert "embedded SecantusDB" not in output
    assert "Exception during worker exit" not in output
