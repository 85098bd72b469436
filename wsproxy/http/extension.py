"""The Flask extension: configuration, per-app state, lazy per-process start.

Nothing here opens a connection or starts a thread at import or at
``init_app``: PyMongo is not fork-safe, so the ``MongoClient`` and the
threads are created in the process that serves requests (the gunicorn
worker), on first use or from gunicorn's ``post_worker_init`` hook.
"""

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, cast

import pymongo
from flask import Flask, Request, current_app
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.uri_parser import split_options

from .. import config as settings
from ..access import Principal, sealing
from ..errors import ClientError, ConfigError
from ..fanout.hub import Hub
from ..limits import budget, throttle, tickets
from ..protocol import CloseCode
from ..stream.source import Backoff, ChangeSource, watch_target
from ..transport.compression import SharedContexts
from . import views

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.extension")

# Seconds closing the MongoClient may take (it ends the server sessions).
CLOSE_BUDGET = 1.0

# The fix for a server that cannot hold WebSockets, as the refusal and the
# log say it.
SERVE_THREADED = (
    "serve with gunicorn -c python:wsproxy.gunicorn (or -k gthread --threads N, "
    "N the connections a worker holds)"
)


def _setup_log(environ: Mapping[str, Any]) -> logging.Logger:
    """Where a wrong setup is reported: wsproxy's logger, or under a
    gunicorn that configured no logging for it (no -c python:wsproxy.gunicorn)
    gunicorn's own error log, so that the line has its time and level
    rather than going to Python's bare last-resort handler."""
    gunicorn = logging.getLogger("gunicorn.error")
    if (
        not log.hasHandlers()
        and environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
        and gunicorn.hasHandlers()
    ):
        return gunicorn
    return log


# How long an operation waits for a server unless the URI says otherwise
# (PyMongo's own default is 30 s): how soon a database that went away
# shows as "reconnecting" (the watcher's resume waits this long for it),
# and how long a catch-up or snapshot waits before it is closed with 1013.
SERVER_SELECTION_TIMEOUT_MS = 2000


def mongo_options(uri: str | None) -> dict[str, Any]:
    """The MongoClient keywords wsproxy adds to ``uri``: defaults only for
    what the URI leaves unset (a keyword would override the URI's own)."""
    _, _, query = (uri or "").partition("?")
    try:
        given = split_options(query, validate=False) if "=" in query else {}
    except PyMongoError:
        return {}  # MongoClient reports what is wrong with the URI
    if "serverSelectionTimeoutMS" in given:  # case-insensitive mapping
        return {}
    return {"serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS}


# Decides who may connect, before the upgrade: a Principal, None (401), or
# raises AccessDenied (403).
Authorizer = Callable[[Request], "Principal | None"]


class ProxyState:
    """Everything one app runs in one process: the MongoClient, the hub
    (broadcaster) and the change source (watcher)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        # Guards start/stop so concurrent first requests start things once.
        self._lock = threading.Lock()
        self._pid: int | None = None
        # Guards _mongo_closed: the shutdown thread and worker_exit both
        # close the client, and PyMongo's close() fails the second time
        # (it kills the cursors closed since, on a closed topology).
        self._close_lock = threading.Lock()
        self._mongo_closed = False
        # Made by ensure_started() in the serving process. None before it,
        # which only begin_shutdown() looks for: typed as they are once
        # started, which is how everything else uses them.
        self.mongo: MongoClient[Any] = None  # type: ignore[assignment]
        self.contexts: SharedContexts | None = None
        self.hub: Hub = None  # type: ignore[assignment]
        self.source: ChangeSource = None  # type: ignore[assignment]
        self.stopping = threading.Event()
        # the WSProxy, for its @authorize function
        self.extension: WSProxy | None = None
        # Set by wsproxy.gunicorn's post_worker_init in this process.
        self.hooks_installed = False
        self._warned: set[str] = set()  # one-time setup warnings already logged
        # Seals resume ids; ConfigError here (init_app) without a key.
        self.sealer = sealing.from_config(config)
        # Bounds how many clients replay from MongoDB at once.
        self.catchup_slots = threading.BoundedSemaphore(config["WSPROXY_MAX_CATCHUPS"])
        # What one principal or address may cost: connections per second,
        # catch-ups at once (wsproxy/limits/throttle.py).
        self.connect_rate = throttle.KeyedRateLimit(
            config["WSPROXY_CONNECT_RATE"], config["WSPROXY_CONNECT_BURST"]
        )
        max_connections = settings.per_principal(
            config, "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL", "WSPROXY_MAX_CLIENTS"
        )
        # ...and reconnects with a ticket (wsproxy/limits/tickets.py): every
        # connection a principal may hold can come back at once, once.
        self.reconnect_rate = throttle.KeyedRateLimit(
            config["WSPROXY_CONNECT_RATE"], max(max_connections, 1)
        )
        self.tickets = tickets.Tickets(self.sealer)
        # One snapshot's slice of CPU work at a time (wsproxy.live.snapshot's
        # Pacer); held for CPU work only, never while waiting on the network.
        self.snapshot_slice_lock = threading.Lock()
        # Bounds how many snapshots are read at once.
        self.snapshot_slots = threading.BoundedSemaphore(
            config["WSPROXY_MAX_SNAPSHOTS"]
        )
        # Bounds one principal's (or address's) catch-ups at once.
        self.catchups_per_key = throttle.KeyedSlots(
            config["WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL"]
        )
        # Bounds one principal's (or address's) snapshots at once.
        self.snapshots_per_key = throttle.KeyedSlots(
            settings.per_principal(
                config, "WSPROXY_MAX_SNAPSHOTS_PER_PRINCIPAL", "WSPROXY_MAX_SNAPSHOTS"
            )
        )
        # What each principal holds open: connections, filter terms.
        self.budgets = budget.Budgets(
            max_connections=max_connections,
            max_terms=config["WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL"],
        )

    @property
    def authorizer(self) -> Authorizer | None:
        # (mypy takes "self.extension and ..." for possibly the extension)
        return cast(
            "Authorizer | None",
            self.config["WSPROXY_AUTHORIZE"]
            or (self.extension and self.extension.authorizer),
        )

    def ensure_started(self, app: Flask | None = None) -> "ProxyState":
        """Start in this process if not yet started; ``app`` (given by
        requests and the gunicorn hook) has its routes checked first."""
        if self._pid == os.getpid():
            return self
        with self._lock:
            if self._pid == os.getpid():
                return self
            if app is not None:
                # Routes the host added after init_app are known now.
                check_routes(app, views.registered_paths(self.config))
            if self._pid is not None:
                # Forked after starting: the parent's client and threads do
                # not exist here. Start afresh (never reuse its MongoClient).
                log.warning(
                    "wsproxy: started before a fork; restarting in pid %s", os.getpid()
                )
            self._start()
            self._pid = os.getpid()
        return self

    def _start(self) -> None:
        c = self.config
        self.stopping.clear()
        self.mongo = MongoClient(
            c["WSPROXY_MONGODB_URI"],
            appname="wsproxy",
            connect=False,
            **mongo_options(c["WSPROXY_MONGODB_URI"]),
        )
        with self._close_lock:
            self._mongo_closed = False
        self.contexts = (
            SharedContexts() if c["WSPROXY_COMPRESSION"] == "shared" else None
        )
        self.hub = Hub(
            history_size=c["WSPROXY_HISTORY_SIZE"],
            history_bytes=c["WSPROXY_HISTORY_MAX_BYTES"],
            queue_size=c["WSPROXY_QUEUE_SIZE"],
            prefilling=c["WSPROXY_HISTORY_PREFILL"] > 0,
        )
        self.source = ChangeSource(
            watch_target(self.mongo, c["WSPROXY_WATCH"]),
            self.hub,
            sealer=self.sealer,
            pipeline=c["WSPROXY_PIPELINE"],
            full_document=c["WSPROXY_FULL_DOCUMENT"],
            full_document_before_change=c["WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE"],
            max_await_ms=c["WSPROXY_MAX_AWAIT_MS"],
            backoff=Backoff(c["WSPROXY_BACKOFF_INITIAL"], c["WSPROXY_BACKOFF_MAX"]),
            prefill=c["WSPROXY_HISTORY_PREFILL"],
        )
        self.hub.start()
        self.source.start()
        log.info(
            "wsproxy: watching %r in pid %s",
            c["WSPROXY_WATCH"] or "(deployment)",
            os.getpid(),
        )

    def check_server(self, environ: Mapping[str, Any]) -> None:
        """Refuse (500) a WebSocket on a server that would block on it, and
        say once per process what the setup loses; see docs/serving.md."""
        if not environ.get("wsgi.multithread"):
            self._warn_once(
                "sync",
                logging.ERROR,
                "wsproxy: this server handles one request at a time per "
                "worker (gunicorn's default sync worker?), so each WebSocket "
                f"would block it; {SERVE_THREADED}",
                environ,
            )
            raise ClientError(
                "this server cannot hold WebSocket connections (one request "
                f"at a time per worker); {SERVE_THREADED}",
                status=500,
            )
        if (
            environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
            and not self.hooks_installed
        ):
            self._warn_once(
                "hooks",
                logging.WARNING,
                "wsproxy: this gunicorn worker runs without wsproxy's hooks, "
                "so SIGTERM does not close clients with 1001 (they hold the "
                "worker until graceful_timeout), /metrics covers only the "
                "worker that answers, and wsproxy's INFO log is not shown; "
                "serve with gunicorn -c python:wsproxy.gunicorn or "
                "'from wsproxy.gunicorn import *' in your gunicorn config",
                environ,
            )

    def _warn_once(
        self, key: str, level: int, message: str, environ: Mapping[str, Any]
    ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _setup_log(environ).log(level, message)

    def begin_shutdown(
        self, reason: str = "server shutting down; reconnect and resume"
    ) -> None:
        """Close every client with 1001 so it resumes elsewhere; new clients
        are refused (503) from now on. Returns at once: each connection's
        own thread sends its close frame."""
        self.stopping.set()
        if self.hub is None:
            return
        for client in self.hub.clients():
            client.request_close(CloseCode.GOING_AWAY, reason)
        # The watcher's last round trip (up to WSPROXY_MAX_AWAIT_MS) runs
        # out while the clients close, not after them in worker_exit.
        self.source.request_stop()
        # Nothing of ours needs the database any more: the watcher stops
        # after its round trip in flight, which a close lets finish, and
        # catch-ups and snapshots end with their clients. Closed now,
        # PyMongo's monitor threads wind down while the clients close;
        # closed in worker_exit, its exit handler waited up to 0.5 s more
        # for them (a restart's new server listened that much later).
        self._close_mongo()

    def install_sigterm_handler(self, then: Callable[[], None] | None = None) -> None:
        """On SIGTERM (gunicorn stop, deploy), close clients with 1001 before
        gunicorn's own handler starts its graceful wait, so nothing holds
        the worker open until graceful_timeout; ``then()``, after
        gunicorn's handler, is what the server adds (wsproxy.gunicorn: stop
        listening)."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # A thread, not here: the signal may have interrupted a thread
            # that holds a lock begin_shutdown needs.
            threading.Thread(
                target=self.begin_shutdown, name="wsproxy-shutdown", daemon=True
            ).start()
            if callable(previous):
                previous(signum, frame)
            if then is not None:
                then()

        signal.signal(signal.SIGTERM, on_sigterm)
        self.hooks_installed = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watcher, then the broadcaster; close the MongoClient."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self.stopping.set()
            # Closing the client ends a watcher's wait for a server that is
            # gone, which would otherwise hold the worker's exit.
            self.source.stop(timeout, interrupt=self._close_mongo)
            self.hub.stop(timeout)
            self._close_mongo()
            self._pid = None

    def _close_mongo(self) -> None:
        # close() first ends the client's server sessions, which waits for
        # a server (the URI's serverSelectionTimeoutMS, up to PyMongo's
        # 30 s) when the database is gone: bounded, so the exit is not.
        with self._close_lock:
            if self._mongo_closed:
                return
            self._mongo_closed = True
            with pymongo.timeout(CLOSE_BUDGET):
                self.mongo.close()


class WSProxy:
    """Stream MongoDB change streams to WebSocket clients of a Flask app.

    ``WSProxy(app)`` or ``ext = WSProxy(); ext.init_app(app)``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self.authorizer: Authorizer | None = None
        if app is not None:
            self.init_app(app)

    def authorize(self, function: Authorizer) -> Authorizer:
        """Decorator: ``function(request)`` decides who may connect, before
        the upgrade; it returns a :class:`~wsproxy.access.Principal`, None
        (HTTP 401), or raises :class:`~wsproxy.access.AccessDenied` (403).
        ``WSPROXY_AUTHORIZE`` in an app's config takes precedence."""
        self.authorizer = function
        return function

    def init_app(self, app: Flask) -> None:
        """Register the WebSocket route, health endpoints and the page.

        Settings come from ``app.config``; a key the app does not set is
        taken from the environment variable of the same name, else the
        default in parentheses (the documentation's Configuration page says
        more). Raises ConfigError for a bad value, a path another route of
        the app already has, or a ``WSPROXY_*`` name (in app.config or the
        environment) that is none of these nor an environment-only variable.
        """
        # The list of settings is appended to the docstring below the
        # class, from the settings table.
        if "wsproxy" in app.extensions:
            raise RuntimeError("WSProxy is already registered on this app")
        settings.check_names(app.config)
        settings.apply_defaults(app.config)
        settings.validate(app.config)
        check_routes(app, views.registered_paths(app.config))
        state = app.extensions["wsproxy"] = ProxyState(app.config)
        state.extension = self
        app.register_blueprint(views.create_blueprint(app.config))

    @staticmethod
    def state(app: Flask | None = None) -> ProxyState:
        return (app or current_app).extensions["wsproxy"]

    def start(self, app: Flask) -> ProxyState:
        """Start the watcher and broadcaster in this process now (gunicorn
        ``post_worker_init``); otherwise they start on first use."""
        return self.state(app).ensure_started(app)

    def stop(self, app: Flask, timeout: float = 5.0) -> None:
        self.state(app).stop(timeout)


WSProxy.init_app.__doc__ = (
    (WSProxy.init_app.__doc__ or "").rstrip()
    + "\n\n"
    + "\n".join("        " + line for line in settings.docstring_lines())
    + "\n"
)


def check_routes(app: Flask, paths: Mapping[str, str]) -> None:
    """Refuse to share a path with a route of the host app: whichever
    matched first would silently shadow the other. ``paths``: each path
    wsproxy registers, with the setting that places it."""
    for rule in app.url_map.iter_rules():
        if rule.rule in paths and not rule.endpoint.startswith("wsproxy."):
            key = paths[rule.rule]
            fix = (
                "another path"
                if key == "WSPROXY_PATH"
                else "another path, or None to leave it out"
            )
            raise ConfigError(
                f"wsproxy would register {rule.rule!r}, which the app already "
                f"routes to {rule.endpoint!r}; set {key} to {fix}"
            )
