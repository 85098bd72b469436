"""The blueprint: the WebSocket route, health endpoints and the page.

Everything that can be refused is refused before the WebSocket upgrade, as
an HTTP status with a JSON reason: not an upgrade (426), a foreign origin
(403), no or bad credentials (401/403), a bad subscription or resume id
(400), a full or stopping worker (503). After the upgrade only close codes
are left (see :mod:`wsproxy.protocol`), and the replies to a client's
messages (:mod:`wsproxy.http.control`).

A browser cannot read the HTTP status of a refused handshake (it sees a
1006 close), so the same URL fetched as a plain GET with ``Accept:
application/json`` answers the admission decision itself: ``{"ok": true}``
or ``{"error": reason, "status": N}`` with that status (see
:func:`_decide` for what it costs).
"""

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request
from flask_sock import Sock

from .. import access, metrics
from ..errors import ClientError
from ..fanout import subscription as subscriptions
from ..fanout.connection import ClientConnection
from ..fanout.subscription import Subscription
from ..limits import budget, throttle, tickets
from ..live import snapshot
from ..live.documents import LiveDocuments
from ..logsafe import shown
from ..protocol import CloseCode, MessageType, ResumeMode, SourceState
from ..stream.catchup import CatchUp, CatchUpInputs, catch_up
from ..transport import codec, websocket
from . import control

if TYPE_CHECKING:
    from werkzeug.datastructures import MultiDict

    from .extension import ProxyState

# The settings (the app's config, see wsproxy.config).
Config = Mapping[str, Any]

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.views")

# The page's assets are served here, by the blueprint's own static route;
# the page itself is wsproxy/templates/wsproxy/index.html.
STATIC_PATH = "/wsproxy-static"


# The wsproxy package's folder (this module is in its http/ layer): the
# blueprint's root, where its templates/ are.
PACKAGE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _static_folder() -> str:
    """Where the page's assets are: ``wsproxy/static`` in an installed
    package (the wheel maps the repository's top-level ``static/`` there,
    see pyproject.toml), else ``static/`` beside the package: a checkout,
    or an editable install of one."""
    installed = os.path.join(PACKAGE_FOLDER, "static")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(PACKAGE_FOLDER), "static")


STATIC_FOLDER = _static_folder()
PAGE_TEMPLATE = "wsproxy/index.html"

# Registers wsproxy's WebSocket route on its blueprint only; it never
# touches the app, so it sits beside a host app's own Sock(app).
_sock = Sock()


def _state() -> "ProxyState":
    return current_app.extensions["wsproxy"]


def _refuse(error: ClientError, status_field: bool = False) -> Response:
    body: dict[str, Any] = {"error": error.reason}
    if status_field:
        body["status"] = error.status
    response = Response(
        json.dumps(body), status=error.status, mimetype="application/json"
    )
    if error.status == 503:
        response.headers["Retry-After"] = "5"
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if getattr(error, "retry_after", None):  # 429 (throttle.Throttled)
        response.headers["Retry-After"] = str(
            cast(throttle.Throttled, error).retry_after
        )
    return response


def _authorize(state: "ProxyState") -> access.Principal:
    authorizer = state.authorizer
    if authorizer is None:
        return access.ANYONE
    principal = authorizer(request)
    if principal is None:
        raise ClientError("authentication required", status=401)
    if not isinstance(principal, access.Principal):
        raise TypeError("an authorizer must return a Principal or None")
    return principal


@dataclasses.dataclass(slots=True)
class Admission:
    """What the checks before the upgrade decided, for the handler."""

    subscription: Subscription
    resume_id: str | None
    principal: access.Principal
    pending: websocket.Pending
    # The connection's share of its principal's budget (wsproxy.limits.budget),
    # given back when the connection ends (or the upgrade never happens).
    reservation: budget.Reservation
    # The reconnect ticket its hello carries (wsproxy.limits.tickets).
    ticket: str | None = None


# Where every update carries the whole document, as live documents need.
_WHOLE_DOCUMENTS = ("updateLookup", "required")


def _parse_subscription(
    args: "MultiDict[str, str]", principal: access.Principal, config: Config
) -> Subscription:
    sub = subscriptions.parse(
        args,
        scope=config["WSPROXY_WATCH"],
        principal=principal,
        operator_hide=config["WSPROXY_HIDE_FIELDS"],
        filter_limits={"max_bytes": config["WSPROXY_MAX_FILTER_BYTES"]},
        snapshot_max_docs=config["WSPROXY_SNAPSHOT_MAX_DOCS"],
    )
    if sub.snapshot is not None and config["WSPROXY_FULL_DOCUMENT"] not in (
        _WHOLE_DOCUMENTS
    ):
        raise ClientError(
            "snapshot: this server's updates do not carry whole documents "
            "(WSPROXY_FULL_DOCUMENT is not updateLookup or required)"
        )
    return sub


def _decide(
    state: "ProxyState", config: Config, *, upgrade: bool
) -> tuple[
    access.Principal, str | None, Subscription, budget.Reservation | None, str | None
]:
    """Every admission check, for the upgrade (``upgrade``) or for the
    JSON answer to a plain GET (:func:`_decision`): returns (principal,
    resume id, subscription) or raises ClientError.

    The JSON answer runs the same checks in the same order, but costs one
    token of the connect budget (a resume's replay cost is not spent:
    nothing is replayed) and takes no connection slot."""
    state.check_server(request.environ)
    if state.stopping.is_set():
        raise ClientError("server shutting down", status=503)
    if upgrade:
        websocket.check_handshake(request.environ)
    access.check_host(
        request,
        config["WSPROXY_ALLOWED_HOSTS"],
        websocket.local_address(request.environ),
    )
    access.check_origin(request, config["WSPROXY_ALLOWED_ORIGINS"])
    principal = _authorize(state)
    key = throttle.client_key(principal, request.remote_addr)
    ticket = _charge_connection(state, key, upgrade)
    if len(state.hub) >= config["WSPROXY_MAX_CLIENTS"]:
        raise ClientError("this worker is full; retry", status=503)
    resume_id = request.args.get("resume_after")
    if resume_id is not None:
        resume_id = state.sealer.canonical(resume_id)  # 400 unless ours
    sub = _parse_subscription(request.args, principal, config)
    if not upgrade:
        state.budgets.check(key, sub)  # 429 over the principal's share
        return principal, resume_id, sub, None, None
    reservation = state.budgets.reserve(key, sub)
    # (an upgrade is always given a ticket)
    sealed = state.tickets.seal(cast(tickets.Ticket, ticket), key)
    return principal, resume_id, sub, reservation, sealed


def _charge_connection(
    state: "ProxyState", key: Hashable, upgrade: bool
) -> tickets.Ticket | None:
    """Charge a connection to ``key``'s connect budget (429 beyond it), or,
    when it presents a reconnect ticket with a reconnect left, to its
    reconnect budget (see wsproxy.limits.tickets). Returns the ticket the
    connection is to be given (for an upgrade; None otherwise)."""
    if not upgrade:
        # The JSON decision costs one token and reads no ticket.
        state.connect_rate.admit(key)
        return None
    presented = state.tickets.open(request.args.get("ticket"), key)
    if presented is None:
        ticket = state.tickets.new()
    else:
        reconnect = presented.allowance(state.tickets.now()) >= 1.0 and (
            state.reconnect_rate.take(key) == 0
        )
        ticket = state.tickets.after(presented, used=reconnect)
        if reconnect:
            return ticket
    state.connect_rate.admit(  # 429 beyond WSPROXY_CONNECT_RATE
        key,
        cost=throttle.connect_cost(
            request.args.get("resume_after"),
            request.args.get("filter"),
            state.hub.history_length(),
        ),
    )
    return ticket


def _admit(state: "ProxyState", config: Config) -> Admission:
    """All the checks before the upgrade; returns an Admission or raises
    ClientError."""
    principal, resume_id, sub, reservation, ticket = _decide(
        state, config, upgrade=True
    )
    # An upgrade always reserves (see _decide).
    reservation = cast(budget.Reservation, reservation)
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    try:
        pending = websocket.prepare(
            request.environ,
            send_timeout=config["WSPROXY_SEND_TIMEOUT"],
            subprotocols=[access.BEARER_SUBPROTOCOL]
            if access.BEARER_SUBPROTOCOL in offered
            else None,
            max_message_size=config["WSPROXY_MAX_MESSAGE_SIZE"],
            frame_rate=config["WSPROXY_CLIENT_MESSAGE_RATE"],
            frame_burst=config["WSPROXY_CLIENT_MESSAGE_BURST"],
            compression=config["WSPROXY_COMPRESSION"] != "off",
        )
    except BaseException:
        state.budgets.release(reservation)
        raise
    return Admission(sub, resume_id, principal, pending, reservation, ticket)


def _wants_decision() -> bool:
    """A plain GET that asks for JSON by name (``Accept:
    application/json``; ``*/*`` is not enough): it gets the admission
    decision instead of 426."""
    return any(
        value == "application/json" and quality > 0
        for value, quality in request.accept_mimetypes
    )


def _cors(response: Response, config: Config) -> Response:
    """Let a page of an allowed other origin read the decision (and send
    its bearer token in ``Authorization``, after a preflight)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return response
    response.vary.add("Origin")
    try:
        access.check_origin(request, config["WSPROXY_ALLOWED_ORIGINS"])
    except ClientError:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    return response


def _decision(state: "ProxyState", config: Config) -> Response:
    """The admission decision as JSON, for a browser: it cannot read the
    HTTP status of a refused WebSocket handshake (it only sees 1006)."""
    try:
        _decide(state, config, upgrade=False)
    except ClientError as exc:
        response = _refuse(exc, status_field=True)
    else:
        response = Response(
            json.dumps({"ok": True}), status=200, mimetype="application/json"
        )
    response.headers["Cache-Control"] = "no-store"
    return _cors(response, config)


class _Blueprint(Blueprint):
    def get_send_file_max_age(self, filename: str | None) -> int:
        # The page's assets: a minute of caching unless the app sets
        # SEND_FILE_MAX_AGE_DEFAULT.
        max_age = super().get_send_file_max_age(filename)
        return 60 if max_age is None else max_age


def create_blueprint(config: Config) -> Blueprint:
    page_path = config["WSPROXY_PAGE_PATH"]
    # Flask serves the assets (endpoint "wsproxy.static") and loads the
    # page through the app's Jinja environment, which caches it; the
    # template's own folder keeps it from shadowing the app's templates.
    bp = _Blueprint(
        "wsproxy",
        __name__,
        static_folder=STATIC_FOLDER if page_path else None,
        static_url_path=STATIC_PATH,
        template_folder="templates" if page_path else None,
        root_path=PACKAGE_FOLDER,
    )

    def refused(exc: ClientError) -> Response:
        log.info(
            "refused %s (%s): %s",
            shown(request.remote_addr),
            exc.status,
            shown(exc.reason),
        )
        metrics.REFUSED.labels(str(exc.status)).inc()
        return _refuse(exc)

    @bp.before_request
    def admit() -> Response | None:
        # Runs before flask-sock's wrapper starts the handshake, so every
        # refusal is an HTTP status with a reason, never a half-open socket.
        if request.endpoint != "wsproxy.websocket":
            return check_host()
        state = _state().ensure_started(current_app)
        if "resume_after" in request.args:
            # A worker that just started reads back recent history: a
            # client resuming now resumes from it once it is in (see
            # wsproxy.stream.source), waiting without a turn.
            state.hub.prefilled.wait(_PREFILL_WAIT)
        # From here to the client's place in the hub, a few at a time.
        g.wsproxy_handshake = slot = _HandshakeSlot(state.stopping)
        slot.take()
        try:
            g.wsproxy_admission = _admit(state, config)
        except ClientError as exc:
            slot.give_back()
            return refused(exc)
        return None

    def check_host() -> Response | None:
        # Every other route (page, assets, metrics, health) answers only the
        # names the WebSocket route does: a rebound DNS name must not read
        # them either. The admission decision checks it in its own order.
        if request.endpoint == "wsproxy.upgrade_required" and _wants_decision():
            return None
        try:
            access.check_host(
                request,
                config["WSPROXY_ALLOWED_HOSTS"],
                websocket.local_address(request.environ),
            )
        except ClientError as exc:
            return refused(exc)
        return None

    @bp.teardown_request
    def release_unused_admission(exc: BaseException | None) -> None:
        # An admission whose connection never ran (the handshake failed
        # after before_request) gives its share back here.
        admission = g.pop("wsproxy_admission", None)
        if admission is not None:
            _state().budgets.release(admission.reservation)
        slot = g.pop("wsproxy_handshake", None)
        if slot is not None:
            slot.give_back()

    @websocket.route(_sock, config["WSPROXY_PATH"], bp=bp, endpoint="websocket")
    def websocket_view(ws: Any) -> None:
        # After the upgrade an exception must not reach Flask: it would
        # write an HTML 500 page into the WebSocket.
        try:
            _run_connection(ws, g.pop("wsproxy_admission"))
        except Exception:  # noqa: BLE001 - one connection must not hurt others
            log.exception("wsproxy: connection failed")

    def _run_connection(ws: Any, admission: Admission) -> None:
        client = ClientConnection(
            websocket.Connection(ws, admission.pending),
            max_messages=config["WSPROXY_OUTBOX_MAX_MESSAGES"],
            max_bytes=config["WSPROXY_OUTBOX_MAX_BYTES"],
            ping_interval=config["WSPROXY_PING_INTERVAL"],
            close_timeout=config["WSPROXY_CLOSE_TIMEOUT"],
            subscription=admission.subscription,
            remote_addr=request.remote_addr,
            contexts=_state().contexts,
            max_held=config["WSPROXY_TRACKED_DOCS"],
            owner=admission.reservation.key,
            holders=_state().hub.routes.holders,
            principal=admission.principal,
        )
        serve(
            _state(),
            client,
            admission.resume_id,
            admission.reservation,
            handshake=g.get("wsproxy_handshake"),
            ticket=admission.ticket,
        )

    @bp.route(
        config["WSPROXY_PATH"],
        endpoint="upgrade_required",
        methods=["GET", "OPTIONS"],
        provide_automatic_options=False,
    )
    def upgrade_required() -> Response:
        # The same path without an Upgrade header: the admission decision
        # for a client that asks for it as JSON (see _decision), else 426.
        if request.method == "OPTIONS":  # a CORS preflight for _decision
            response = _cors(Response(status=204), config)
            if "Access-Control-Allow-Origin" in response.headers:
                response.headers["Access-Control-Allow-Methods"] = "GET"
                response.headers["Access-Control-Allow-Headers"] = "Authorization"
                response.headers["Access-Control-Max-Age"] = "600"
            return response
        if _wants_decision():
            return _decision(_state().ensure_started(current_app), config)
        return _refuse(ClientError("this is a WebSocket endpoint", status=426))

    if config["WSPROXY_METRICS_PATH"]:

        @bp.route(config["WSPROXY_METRICS_PATH"], endpoint="metrics")
        def metrics_view() -> Response:
            body, content_type = metrics.exposition()
            return Response(body, content_type=content_type)

    if config["WSPROXY_HEALTH_PATH"]:

        @bp.route(config["WSPROXY_HEALTH_PATH"], endpoint="healthz")
        def healthz() -> Response:
            return jsonify(status="ok", pid=os.getpid())

    if config["WSPROXY_READY_PATH"]:

        @bp.route(config["WSPROXY_READY_PATH"], endpoint="readyz")
        def readyz() -> tuple[Response, int]:
            state = _state().ensure_started(current_app)
            source = state.source
            watcher = source.state  # read once: the body agrees with itself
            # A full worker refuses new connections (503): not ready for
            # more, so a load balancer sends them elsewhere.
            full = len(state.hub) >= config["WSPROXY_MAX_CLIENTS"]
            reason = _not_ready_reason(state, watcher, full)
            ready = reason is None
            body = {
                "ready": ready,
                # Why not, in words: "watcher" alone cannot say it when the
                # watcher is connected but MongoDB has stopped answering.
                "reason": reason,
                "pid": os.getpid(),
                "watcher": watcher,
                # The error text names hosts and topology: only for
                # operators who asked for it; the log always has it.
                "last_error": (
                    None
                    if source.last_error is None
                    else str(source.last_error)
                    if config["WSPROXY_READY_DETAILS"]
                    else type(source.last_error).__name__
                ),
                "last_event_at": source.last_event_at,
                "last_ok_at": source.last_ok_at,
                "clients": len(state.hub),
                "full": full,
            }
            return jsonify(body), 200 if ready else 503

    if page_path:

        @bp.route(page_path, endpoint="page")
        def page() -> str:
            return render_template(
                PAGE_TEMPLATE,
                ws_path=request.script_root + config["WSPROXY_PATH"],
                static_base=request.script_root + STATIC_PATH + "/",
            )

    return bp


def _not_ready_reason(
    state: "ProxyState", watcher: SourceState, full: bool = False
) -> str | None:
    """Why /readyz answers 503, or None if it answers 200; ``watcher`` is
    the watcher's state as the body reports it, ``full`` whether the worker
    holds WSPROXY_MAX_CLIENTS connections."""
    if state.stopping.is_set():
        return "the worker is shutting down"
    if full:
        return "the worker is full (WSPROXY_MAX_CLIENTS)"
    if not state.hub.running:
        return "the broadcaster has stopped"
    if not state.hub.prefilled.is_set():
        return "the worker is reading back recent history (WSPROXY_HISTORY_PREFILL)"
    if watcher != SourceState.CONNECTED:
        return f"the change stream is {watcher}"
    if not state.source.answered_recently:
        return "MongoDB has not answered the change stream recently"
    return None


def registered_paths(config: Config) -> dict[str, str]:
    """Every URL rule the blueprint registers, for collision checks: each
    with the setting that places it (the assets come with the page)."""
    paths = {
        config[key]: key
        for key in (
            "WSPROXY_PATH",
            "WSPROXY_METRICS_PATH",
            "WSPROXY_HEALTH_PATH",
            "WSPROXY_READY_PATH",
        )
        if config[key]
    }
    if config["WSPROXY_PAGE_PATH"]:
        paths[config["WSPROXY_PAGE_PATH"]] = "WSPROXY_PAGE_PATH"
        paths[STATIC_PATH + "/<path:filename>"] = "WSPROXY_PAGE_PATH"
    return paths


# Connections are tidied up after at most four at a time per worker. When
# a thousand clients vanish at once, their handler threads would otherwise
# all want the GIL at the same moment, and the broadcaster, which gives it
# up at every socket write, would wait behind each of them (live delivery
# to the others stalled 0.5-1.4 s; 0.1-0.15 s in turns). Four rather than
# one: under ordinary churn a handler seldom waits, so gthread's pool does
# not grow for handlers queued to leave (one at a time, it grew by up to
# 14 threads in 2,000 connect/disconnect cycles from 8 clients). Not while
# the worker stops: then every client is leaving and nobody is waiting for
# delivery.
_TIDYING_AT_ONCE = 4
_tidying = threading.BoundedSemaphore(_TIDYING_AT_ONCE)


class _Turn:
    """A turn at ``_tidying`` (none while the worker is stopping)."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._held = False

    def take(self) -> None:
        if not self._held and not self._stopping.is_set():
            self._held = _tidying.acquire()

    def give_back(self) -> None:
        if self._held:
            self._held = False
            _tidying.release()


# Handshakes in progress at once per worker, from the admission checks to
# the client's place in the hub (hello queued). After a mass disconnect
# (a load balancer restarting, a network blip) a thousand clients come
# back at once, and gthread hands each to an idle pool thread at once (in
# a fresh worker each one waits for a new thread to start, which paces
# them): a thousand runnable threads wanting the GIL, and any lock one of
# them holds across a GIL switch (the rate limit's, the hub's, a log
# handler's) became a convoy. Handshakes waited 5-17 s (p50), the
# worker burning up to 12 CPU-seconds on 1,000 of them; eight at a time,
# 1.5-2 CPU-seconds and a p99 under 2 s (python -m bench.reconnect).
# Eight rather than fewer: a handshake waits on its socket writes too.
_HANDSHAKES_AT_ONCE = 8
_handshaking = threading.BoundedSemaphore(_HANDSHAKES_AT_ONCE)
# Seconds a client resuming from a just-started worker waits for the
# history it reads back; then it is caught up from MongoDB instead.
_PREFILL_WAIT = 5.0
# A turn that is not given back (a stuck handshake) holds nobody up for
# longer than this: the next one goes ahead without a turn.
_HANDSHAKE_WAIT = 5.0


class _HandshakeSlot:
    """A turn at ``_handshaking`` (none while the worker is stopping)."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._held = False

    def take(self) -> None:
        if not self._held and not self._stopping.is_set():
            self._held = _handshaking.acquire(timeout=_HANDSHAKE_WAIT)

    def give_back(self) -> None:
        if self._held:
            self._held = False
            _handshaking.release()


def serve(
    state: "ProxyState",
    client: ClientConnection,
    resume_id: str | None,
    reservation: budget.Reservation | None = None,
    handshake: "_HandshakeSlot | None" = None,
    ticket: str | None = None,
) -> None:
    """Run one connection from hello to close; ``reservation`` (its share
    of its principal's budget) is given back when it ends, ``handshake``
    (its turn at :data:`_handshaking`) once it has joined the hub;
    ``ticket`` goes in its hello."""
    try:
        _serve(state, client, resume_id, reservation, handshake, ticket)
    finally:
        if handshake is not None:
            handshake.give_back()
        if reservation is not None:
            state.budgets.release(reservation)


def _serve(
    state: "ProxyState",
    client: ClientConnection,
    resume_id: str | None,
    reservation: budget.Reservation | None,
    handshake: "_HandshakeSlot | None" = None,
    ticket: str | None = None,
) -> None:
    hub = state.hub
    config = state.config
    source = state.source
    key = throttle.client_key(client.principal, client.remote_addr)

    def parse_subscribe(args: "MultiDict[str, str]") -> Subscription:
        # A subscribe costs what a connection does: a token of the connect
        # budget, and its filter's terms in its principal's share.
        state.connect_rate.admit(key, what="subscriptions")
        # (a served connection has its principal: _run_connection)
        sub = _parse_subscription(
            args, cast(access.Principal, client.principal), config
        )
        if reservation is not None:
            state.budgets.replace(reservation, sub)
        return sub

    messages = control.Control(
        parse_subscribe,
        hub=hub,
        stopping=state.stopping,
        watcher=lambda: source.state,
        describe=lambda sub: {"deletes": source.preimages.deletes(sub)},
    )

    def hello(mode: ResumeMode) -> str:
        return codec.control_message(
            MessageType.HELLO,
            worker=os.getpid(),
            watch=config["WSPROXY_WATCH"] or "",
            resume=mode,
            watcher=messages.told(source.state),
            # How a delete or a document leaving the filter reaches this
            # client: decided by the event itself, or by what it was sent.
            deletes=source.preimages.deletes(client.subscription),
            # Presented when it reconnects: a cheaper admission.
            **({"ticket": ticket} if ticket else {}),
        )

    def catch_up_from_mongodb(
        client: ClientConnection,
    ) -> tuple[CatchUp, Callable[[], None]]:
        # Not in this worker's history: replay from MongoDB, then splice.
        member = CatchUp(client, config["WSPROXY_OUTBOX_MAX_MESSAGES"])
        messages.catchup = member
        thread = threading.Thread(
            target=catch_up,
            args=(CatchUpInputs.from_state(state), member, resume_id),
            name=f"wsproxy-catchup-{client.id}",
            daemon=True,
        )
        return member, thread.start

    documents: LiveDocuments | None = None
    if client.subscription.snapshot is not None:
        # Live documents: always a fresh snapshot (resume_after is not
        # used; see wsproxy.live.documents).
        documents = LiveDocuments(client, max_held=config["WSPROXY_SNAPSHOT_MAX_DOCS"])
        documents.start_snapshot = snapshot.starter(
            snapshot.SnapshotInputs.from_state(state), documents
        )
        joined = hub.subscribe(
            documents, None, lambda _: hello(ResumeMode.SNAPSHOT), None
        )
    else:
        joined = hub.subscribe(client, resume_id, hello, catch_up_from_mongodb)
    started = time.monotonic()
    metrics.CLIENTS.inc()
    turn = _Turn(state.stopping)
    try:
        with joined as resume:
            if documents is not None:
                resume = ResumeMode.SNAPSHOT
                documents.start_snapshot()
            log.info(
                "client %s connected from %s as %s (resume: %s, ns: %s)",
                client.id,
                shown(client.remote_addr),
                shown(cast(access.Principal, client.principal).name),
                resume,
                shown(",".join(sorted(client.subscription.namespaces or ())) or "*"),
            )
            metrics.RESUMES.labels(resume).inc()
            if handshake is not None:
                handshake.give_back()
            try:
                client.run(messages.on_message, messages.on_wake)
            except Exception:  # noqa: BLE001 - one connection must not hurt others
                log.exception("client %s: handler failed", client.id)
                client.request_close(CloseCode.INTERNAL_ERROR, "internal error")
                client.close_now()
            client.stop_reading()  # may wait for the peer: not in turn
            turn.take()  # before leaving the hub
    finally:
        client.stop_reading()
        turn.take()
        try:
            metrics.CLIENTS.dec()
            client.finish()
            log.info(
                "client %s disconnected after %.1fs (code %s), compressed "
                "frames: %d shared, %d own",
                client.id,
                time.monotonic() - started,
                client.close_code,
                client.shared_frames,
                client.own_frames,
            )
        finally:
            turn.give_back()
