"""A host app with two tenants, an admin and anonymous clients sharing one
worker: how our users run wsproxy, and what the fair-share and
filtered-feed tests attack. Each tenant sees only its own rows of the
watched database (a row filter on ``fullDocument.tenant``), never the
``secret`` field."""

import os

from flask import Flask

from wsproxy import AccessDenied, Principal, WSProxy
from wsproxy.access import bearer_token
from wsproxy.config import from_env

DB = os.environ.get("TENANT_DB", "tenants")


def tenant(name):
    return Principal(
        f"tenant-{name}",
        namespaces={DB},
        filter={"fullDocument.tenant": name},
        hide=["secret"],
    )


PRINCIPALS = {
    "token-a": tenant("a"),
    "token-a2": tenant("a"),  # a second token of tenant a: the same principal
    "token-b": tenant("b"),
    "token-admin": Principal("admin"),
    # Part of every document's _id is not for it to see.
    "token-owner-hidden": Principal(
        "no-owner",
        namespaces={DB},
        filter={"fullDocument.status": "open"},
        hide=["_id.owner"],
    ),
}

proxy = WSProxy()


@proxy.authorize
def authorize(request):
    token = bearer_token(request)
    if token is None:
        # Anonymous: charged by remote address.
        return Principal(None, namespaces={DB}, hide=["secret"])
    if token not in PRINCIPALS:
        raise AccessDenied("unknown token")
    return PRINCIPALS[token]


def create_app():
    app = Flask(__name__)
    app.secret_key = "test-only-secret"
    app.config.update(from_env())
    proxy.init_app(app)
    return app


app = create_app()
