"""The blueprint: the WebSocket route, health endpoints and the page.

Everything that can be refused is refused in ``before_request``, before the
WebSocket upgrade, as an HTTP status with a JSON reason; after the upgrade
only close codes are left (see :mod:`wsproxy.protocol`).
"""

import json
import logging
import os
import threading
import time

from flask import (Blueprint, Response, current_app, g, jsonify, request,
                   send_from_directory, render_template_string)
from flask_sock import Sock

from . import codec, protocol
from .client import Client, GuardedSocket
from .errors import ClientError
from .resume import CatchUp, catch_up
from .subscription import EVERYTHING

log = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Installed: wsproxy/static (see pyproject.toml); from a checkout: ./static.
STATIC_DIR = next(
    (d for d in (os.path.join(_PACKAGE_DIR, "static"),
                 os.path.join(os.path.dirname(_PACKAGE_DIR), "static"))
     if os.path.isdir(d)), os.path.join(_PACKAGE_DIR, "static"))
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def _state():
    return current_app.extensions["wsproxy"]


def _refuse(error):
    return Response(json.dumps({"error": error.reason}), status=error.status,
                    mimetype="application/json")


def create_blueprint(config):
    bp = Blueprint("wsproxy", __name__)
    sock = Sock()

    @bp.before_request
    def before_upgrade():
        if request.endpoint != "wsproxy.websocket":
            return None
        state = _state().ensure_started()
        if state.stopping.is_set():
            return _refuse(ClientError("server shutting down", status=503))
        environ = request.environ
        try:
            resume_id = request.args.get("resume_after")
            if resume_id is not None:
                codec.id_to_token(resume_id)  # validates
            g.wsproxy_resume_after = resume_id
        except ClientError as exc:
            return _refuse(exc)
        if not config["WSPROXY_COMPRESSION"]:
            # simple-websocket accepts permessage-deflate whenever offered;
            # not offering it keeps frames shareable between clients.
            environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        key = next((k for k in _SOCKET_KEYS if k in environ), None)
        if key is None:
            return _refuse(ClientError("this server cannot upgrade to "
                                       "WebSocket", status=500))
        guarded = GuardedSocket(environ[key], config["WSPROXY_SEND_TIMEOUT"])
        environ[key] = guarded
        g.wsproxy_socket = guarded
        g.wsproxy_state = state
        return None

    @sock.route(config["WSPROXY_PATH"], bp=bp, endpoint="websocket")
    def websocket(ws):
        ws.max_message_size = config["WSPROXY_MAX_MESSAGE_SIZE"]
        client = Client(
            ws, g.wsproxy_socket,
            max_messages=config["WSPROXY_OUTBOX_MAX_MESSAGES"],
            max_bytes=config["WSPROXY_OUTBOX_MAX_BYTES"],
            ping_interval=config["WSPROXY_PING_INTERVAL"],
            close_timeout=config["WSPROXY_CLOSE_TIMEOUT"],
            subscription=EVERYTHING,
            remote_addr=request.remote_addr)
        serve(g.wsproxy_state, client, g.wsproxy_resume_after)

    @bp.route("/healthz")
    def healthz():
        return jsonify(status="ok", pid=os.getpid())

    @bp.route("/readyz")
    def readyz():
        state = _state().ensure_started()
        source = state.source
        ready = source.healthy and state.hub.running
        body = {
            "ready": ready,
            "pid": os.getpid(),
            "watcher": source.state,
            "last_error": str(source.last_error) if source.last_error else None,
            "last_event_at": source.last_event_at,
            "last_ok_at": source.last_ok_at,
            "clients": len(state.hub),
        }
        return jsonify(body), 200 if ready else 503

    page_path = config["WSPROXY_PAGE_PATH"]
    if page_path:
        @bp.route(page_path, endpoint="page")
        def page():
            with open(os.path.join(STATIC_DIR, "index.html"),
                      encoding="utf-8") as f:
                template = f.read()
            return render_template_string(
                template, ws_path=request.script_root + config["WSPROXY_PATH"],
                static_base=request.script_root + "/wsproxy-static/")

        @bp.route("/wsproxy-static/<path:filename>", endpoint="static_file")
        def static_file(filename):
            return send_from_directory(STATIC_DIR, filename, max_age=60)

    return bp


def serve(state, client, resume_id):
    """Run one connection from hello to close."""
    hub = state.hub

    def hello(mode):
        return codec.control_message(
            protocol.HELLO, worker=os.getpid(),
            watch=state.config["WSPROXY_WATCH"] or "", resume=mode)

    member = client
    resume = hub.register(client, resume_id, hello)
    if resume is None:
        # Not in this worker's history: replay from MongoDB, then splice.
        resume = "catch-up"
        client.preload([codec.frame(hello(resume))])
        member = CatchUp(client, state.config["WSPROXY_OUTBOX_MAX_MESSAGES"])
        hub.add(member)
        threading.Thread(target=catch_up, args=(state, member, resume_id),
                         name=f"wsproxy-catchup-{client.id}",
                         daemon=True).start()
    log.info("client %s connected from %s (resume: %s)", client.id,
             client.remote_addr, resume)
    started = time.monotonic()
    try:
        client.run(on_client_message)
    except Exception:  # noqa: BLE001 - one connection must not hurt others
        log.exception("client %s: handler failed", client.id)
        client.sock.abort()
    finally:
        hub.unregister(member)
        client.finish()
        log.info("client %s disconnected after %.1fs (code %s)", client.id,
                 time.monotonic() - started, client.close_code)


def on_client_message(client, data):
    """Client-to-server messages are small JSON control messages."""
    if isinstance(data, (bytes, bytearray)):
        client.request_close(protocol.CLOSE_UNSUPPORTED_DATA,
                             "binary messages are not accepted")
        return
    try:
        message = json.loads(data)
    except ValueError:
        client.request_close(protocol.CLOSE_POLICY, "message is not JSON")
        return
    if isinstance(message, dict) and message.get("type") == "ping":
        client.send_text(codec.control_message(protocol.PONG))
        return
    client.request_close(protocol.CLOSE_POLICY,
                         "unknown message; only {\"type\": \"ping\"} is accepted")
