"""The demo's gunicorn config: ``gunicorn -c gunicorn.conf.py wsgi:app``.

All of it is the packaged config (``wsproxy/gunicorn.py``, which any host
app can use as ``gunicorn -c python:wsproxy.gunicorn myapp:app``), plus a
default address. ``python3 dev.py demo`` sets WSPROXY_EMBEDDED=1, so with no
WSPROXY_MONGODB_URI it starts the embedded server and a demo writer.
"""

import os

from wsproxy.gunicorn import *  # noqa: F401,F403 - settings and hooks

# Where to listen; `-b HOST:PORT` on the command line overrides this.
bind = os.environ.get("WSPROXY_BIND", "127.0.0.1:8000")
