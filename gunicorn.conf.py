"""The repository's gunicorn config (the demo's, the tests' and the
benchmark's): ``gunicorn -c gunicorn.conf.py wsgi:app``.

The packaged config (``wsproxy/gunicorn.py``, which any host app can use as
``gunicorn -c python:wsproxy.gunicorn myapp:app``), plus a default address
and the demo: with WSPROXY_EMBEDDED=1 (``python3 dev.py demo`` sets it) and
no WSPROXY_MONGODB_URI, the master starts the embedded SecantusDB
(``demo/embedded.py``) for every worker and a demo writer
(``demo/writer.py``), and stops both on exit. Neither ships in the package.
"""

import logging
import os
import secrets
import subprocess
import sys

from wsproxy import gunicorn as wsproxy_gunicorn
from wsproxy.gunicorn import *  # noqa: F401,F403 - settings and hooks

# Where to listen; `-b HOST:PORT` on the command line overrides this.
bind = os.environ.get("WSPROXY_BIND", "127.0.0.1:8000")

_TRUE = ("1", "true", "yes", "on")

# The master's embedded server and demo writer, when it started them.
_embedded = None
_demo_writer = None


def _flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() in _TRUE


def on_starting(server):
    """Master, before forking: with WSPROXY_EMBEDDED=1 and no URI, start the
    embedded server and hand its URI to every worker (environment).

    Replaces wsproxy.gunicorn's on_starting, whose only job is to warn that
    WSPROXY_EMBEDDED does nothing outside this config."""
    global _embedded
    if not _flag("WSPROXY_EMBEDDED"):
        return
    if os.environ.get("WSPROXY_MONGODB_URI"):
        server.log.warning("WSPROXY_EMBEDDED is set but so is "
                           "WSPROXY_MONGODB_URI; using the URI")
        return
    from demo.embedded import EmbeddedMongo

    _embedded = EmbeddedMongo(os.environ.get("WSPROXY_EMBEDDED_STORAGE"))
    _embedded.start()
    os.environ["WSPROXY_MONGODB_URI"] = _embedded.uri
    os.environ.setdefault("WSPROXY_WATCH", "demo")
    # Resume ids are sealed; a demo needs no key kept between runs, but
    # every worker needs the same one.
    if not os.environ.get("SECRET_KEY"):
        os.environ.setdefault("WSPROXY_SECRET_KEYS", secrets.token_urlsafe(32))
    server.log.info("embedded SecantusDB at %s", _embedded.uri)


def when_ready(server):
    """Master, listening: the demo writer, with the embedded server."""
    global _demo_writer
    if _embedded is None or not _flag("WSPROXY_DEMO_WRITER", "1"):
        return
    _demo_writer = subprocess.Popen(
        [sys.executable, "-m", "demo.writer", _embedded.uri],
        stdin=subprocess.DEVNULL, start_new_session=True)
    server.log.info("demo writer pid %s", _demo_writer.pid)


def on_exit(server):
    """Master, last: stop the demo writer, then the embedded server, then
    wsproxy's own clean-up."""
    try:
        if _demo_writer is not None and _demo_writer.poll() is None:
            _demo_writer.terminate()
            _demo_writer.wait(10)
        if _embedded is not None:
            _embedded.stop()
            logging.getLogger("gunicorn.error").info(
                "embedded SecantusDB stopped")
    finally:
        wsproxy_gunicorn.on_exit(server)
