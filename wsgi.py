"""The demo app: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every ``WSPROXY_*`` setting can come from the environment. Your own app
does the same thing in two lines: ``WSProxy(app)`` after configuring it
(see examples/).
"""

import os

from flask import Flask

from wsproxy import WSProxy
from wsproxy.config import from_env


def create_app(config=None):
    app = Flask(__name__)
    # Resume ids are sealed with WSPROXY_SECRET_KEYS (from_env) or this.
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY")
    app.config.update(from_env())
    if config:
        app.config.update(config)
    # This app is nothing but the page, so the page may have the root.
    app.config.setdefault("WSPROXY_PAGE_PATH", "/")
    WSProxy(app)
    return app


app = create_app()
