"""A host app whose authorizer takes a while and counts how many of it run
at once: how many handshakes a worker works on at the same moment
(tests/test_storms.py). ``GET /authorizing`` answers the most seen."""

import threading
import time

from flask import Flask, jsonify

from wsproxy import Principal, WSProxy
from wsproxy.config import from_env

proxy = WSProxy()
# Guards _running and _most.
_lock = threading.Lock()
_running = 0
_most = 0


@proxy.authorize
def authorize(request):
    global _running, _most
    with _lock:
        _running += 1
        _most = max(_most, _running)
    try:
        time.sleep(0.02)  # an authorizer asking a session store
        return Principal(None)
    finally:
        with _lock:
            _running -= 1


def create_app():
    app = Flask(__name__)
    app.secret_key = "test-only-secret"
    app.config.update(from_env())
    proxy.init_app(app)

    @app.route("/authorizing")
    def authorizing():
        return jsonify(most=_most)

    return app


app = create_app()
