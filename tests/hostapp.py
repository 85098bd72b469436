"""An existing Flask app with its own routes, session login and bearer
tokens, with wsproxy mounted in: what docs/mounting.md (and the README)
describes, served by the real gunicorn in the access tests."""

import os

from flask import Blueprint, Flask, jsonify, session
from flask_sock import Sock

from wsproxy import AccessDenied, Principal, WSProxy
from wsproxy.access import bearer_token
from wsproxy.config import from_env

DB = os.environ.get("HOSTAPP_DB", "hostapp")

# Who each user or token may see.
PRINCIPALS = {
    "admin": Principal("admin"),
    "shop": Principal(
        "shop", namespaces={f"{DB}.orders"}, hide=["card", "customer.email"]
    ),
    "open-only": Principal("open-only", filter={"fullDocument.status": "open"}),
    # Granted an empty set of namespaces: nothing.
    "nothing": Principal("nothing", namespaces=set()),
    # The operator's row filter on a field it also hides.
    "public": Principal(
        "public",
        filter={"fullDocument.confidential": {"$ne": True}},
        hide=["confidential"],
    ),
    # Never sees a document's key (its _id).
    "keyless": Principal("keyless", hide=["_id"]),
}
TOKENS = {
    "token-admin": "admin",
    "token-shop": "shop",
    "token-nothing": "nothing",
    "token-public": "public",
    "token-keyless": "keyless",
}

proxy = WSProxy()


@proxy.authorize
def authorize(request):
    token = bearer_token(request)
    if token is not None:
        if token not in TOKENS:
            raise AccessDenied("unknown token")
        return PRINCIPALS[TOKENS[token]]
    user = session.get("user")
    if user is None:
        return None
    if user not in PRINCIPALS:
        raise AccessDenied(f"user {user} may not watch changes")
    return PRINCIPALS[user]


def create_app():
    app = Flask(__name__)
    app.secret_key = "test-only-secret"
    app.config.update(from_env())
    app.config.setdefault("WSPROXY_PAGE_PATH", "/live")

    account = Blueprint("account", __name__, url_prefix="/account")

    @account.route("/login/<user>")
    def login(user):
        session["user"] = user
        return jsonify(user=user)

    @app.route("/")
    def home():
        return "the host app's own home page"

    # The host's own Flask-Sock route, with the host's own server options
    # (small messages, a "chat" subprotocol, a ping thread): none of them
    # applies to wsproxy's route, and none of wsproxy's to this one.
    app.config["SOCK_SERVER_OPTIONS"] = {
        "max_message_size": 64,
        "subprotocols": ["chat"],
        "ping_interval": 25,
    }
    sock = Sock(app)

    @sock.route("/echo")
    def echo(ws):
        while True:
            # Not receive() without a timeout: when simple-websocket closes
            # a too big message with 1009 itself, its reader thread may set
            # the event before it marks the socket closed, and a receive()
            # waiting on it waits forever (a worker stopping then waits out
            # its graceful timeout). With one, it looks again and raises
            # ConnectionClosed.
            message = ws.receive(timeout=1)
            if message is not None:
                ws.send(message)

    app.register_blueprint(account)
    proxy.init_app(app)
    return app


app = create_app()
