"""A shop's existing Flask app, with wsproxy mounted beside its own routes,
its own blueprint, its own login and its own Flask-Sock route.

Serve it (see README.md beside this file):

    gunicorn -c python:wsproxy.gunicorn shop:app      # wsproxy's config
    gunicorn -c gunicorn.conf.py shop:app             # your own config
    flask --app shop run                              # development
"""

import os

from flask import Blueprint, Flask, jsonify, session
from flask_sock import Sock
from werkzeug.middleware.proxy_fix import ProxyFix

from wsproxy import AccessDenied, Principal, WSProxy
from wsproxy.access import bearer_token

DB = os.environ.get("SHOP_DB", "shop")

app = Flask(__name__)
# Served behind one nginx (wsproxy's docs/serving.md, "Behind nginx"), which sets
# X-Forwarded-For: request.remote_addr is then the browser's address, so
# each anonymous client has its own connect budget and share of a worker,
# and the log names it. Only right when the app cannot be reached but
# through that one proxy (gunicorn listens on 127.0.0.1 here).
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)
# Signs the session cookie and, through wsproxy, seals resume ids: the same
# in every worker and process, and a real secret in production.
app.secret_key = os.environ.get("SHOP_SECRET_KEY", "dev-only-secret-change-me")
# The shop's own WebSocket routes: small messages, a "chat" subprotocol, a
# ping every 20 s. None of it applies to wsproxy's route.
app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": 64,
                                     "subprotocols": ["chat"],
                                     "ping_interval": 20}
# wsproxy: what to watch, and where its page lives (the shop has "/").
# WSPROXY_MONGODB_URI comes from the environment.
app.config["WSPROXY_WATCH"] = DB
app.config["WSPROXY_PAGE_PATH"] = "/live"

sock = Sock(app)


@app.route("/")
def home():
    return "Welcome to the shop"


@sock.route("/echo")
def echo(ws):
    while True:
        ws.send(ws.receive())


account = Blueprint("account", __name__, url_prefix="/account")


@account.route("/login/<user>")
def login(user):
    session["user"] = user
    return jsonify(user=user)


app.register_blueprint(account)

# Who may watch what: staff see everything, the packing station sees only
# orders and never card numbers; API tokens for scripts.
PRINCIPALS = {
    "staff": Principal("staff"),
    "packing": Principal("packing", namespaces={f"{DB}.orders"},
                         hide=["card"]),
}
TOKENS = {os.environ.get("SHOP_API_TOKEN", "dev-token"): "staff"}

proxy = WSProxy(app)


@proxy.authorize
def authorize(request):
    token = bearer_token(request)
    if token is not None:
        if token not in TOKENS:
            raise AccessDenied("unknown token")
        return PRINCIPALS[TOKENS[token]]
    user = session.get("user")
    if user is None:
        return None  # 401: log in first
    if user not in PRINCIPALS:
        raise AccessDenied(f"{user} may not watch orders")
    return PRINCIPALS[user]
