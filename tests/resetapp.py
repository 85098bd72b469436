"""The demo app plus one test-only route that makes this worker's live feed
announce a reset, exactly as the watcher does when it loses its place in
the change stream (tests/test_documents.py)."""

from flask import jsonify

from wsgi import app
from wsproxy.fanout.hub import Announcement
from wsproxy.protocol import MessageType
from wsproxy.transport import codec


@app.post("/test/reset")
def announce_reset():
    state = app.extensions["wsproxy"].ensure_started(app)
    state.hub.submit(
        Announcement(
            codec.control_message(
                MessageType.RESET, lost=True, reason="the proxy lost its place (test)"
            ),
            forget_history=True,
        ),
        state.stopping,
    )
    return jsonify(ok=True)
