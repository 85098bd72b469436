"""The Flask extension: configuration, per-app state, lazy per-process start.

Nothing here opens a connection or starts a thread at import or at
``init_app``: PyMongo is not fork-safe, so the ``MongoClient`` and the
threads are created in the process that serves requests (the gunicorn
worker), on first use or from gunicorn's ``post_worker_init`` hook.
"""

import copy
import logging
import os
import signal
import threading

from flask import current_app
from pymongo import MongoClient

from . import config as settings
from . import protocol
from . import sealing
from . import throttle
from . import views
from .hub import Hub
from .source import Backoff, ChangeSource, watch_target

log = logging.getLogger(__name__)


class ProxyState:
    """Everything one app runs in one process: the MongoClient, the hub
    (broadcaster) and the change source (watcher)."""

    def __init__(self, config):
        self.config = config
        # Guards start/stop so concurrent first requests start things once.
        self._lock = threading.Lock()
        self._pid = None
        self.mongo = None
        self.hub = None
        self.source = None
        self.stopping = threading.Event()
        self.extension = None  # the WSProxy, for its @authorize function
        # Seals resume ids; ConfigError here (init_app) without a key.
        self.sealer = sealing.from_config(config)
        # Bounds how many clients replay from MongoDB at once.
        self.catchup_slots = threading.BoundedSemaphore(
            config["WSPROXY_MAX_CATCHUPS"])
        # What one principal or address may cost: connections per second,
        # catch-ups at once (wsproxy/throttle.py).
        self.connect_rate = throttle.KeyedRateLimit(
            config["WSPROXY_CONNECT_RATE"], config["WSPROXY_CONNECT_BURST"])
        self.catchups_per_key = throttle.KeyedSlots(
            config["WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL"])

    @property
    def authorizer(self):
        return self.config["WSPROXY_AUTHORIZE"] or (
            self.extension and self.extension.authorizer)

    def ensure_started(self):
        if self._pid == os.getpid():
            return self
        with self._lock:
            if self._pid == os.getpid():
                return self
            if self._pid is not None:
                # Forked after starting: the parent's client and threads do
                # not exist here. Start afresh (never reuse its MongoClient).
                log.warning("wsproxy: started before a fork; restarting in "
                            "pid %s", os.getpid())
            self._start()
            self._pid = os.getpid()
        return self

    def _start(self):
        c = self.config
        self.stopping.clear()
        self.mongo = MongoClient(c["WSPROXY_MONGODB_URI"], appname="wsproxy",
                                 connect=False)
        self.hub = Hub(history_size=c["WSPROXY_HISTORY_SIZE"],
                       history_bytes=c["WSPROXY_HISTORY_MAX_BYTES"],
                       queue_size=c["WSPROXY_QUEUE_SIZE"])
        self.source = ChangeSource(
            watch_target(self.mongo, c["WSPROXY_WATCH"]), self.hub,
            sealer=self.sealer, pipeline=c["WSPROXY_PIPELINE"],
            full_document=c["WSPROXY_FULL_DOCUMENT"],
            full_document_before_change=c["WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE"],
            max_await_ms=c["WSPROXY_MAX_AWAIT_MS"],
            backoff=Backoff(c["WSPROXY_BACKOFF_INITIAL"],
                            c["WSPROXY_BACKOFF_MAX"]))
        self.hub.start()
        self.source.start()
        log.info("wsproxy: watching %r in pid %s",
                 c["WSPROXY_WATCH"] or "(deployment)", os.getpid())

    def begin_shutdown(self, reason="server shutting down; reconnect and resume"):
        """Close every client with 1001 so it resumes elsewhere; new clients
        are refused (503) from now on. Returns at once: each connection's
        own thread sends its close frame."""
        self.stopping.set()
        if self.hub is None:
            return
        for client in self.hub.clients():
            client.request_close(protocol.CLOSE_GOING_AWAY, reason)

    def install_sigterm_handler(self):
        """On SIGTERM (gunicorn stop, deploy), close clients with 1001 before
        gunicorn's own handler starts its graceful wait, so nothing holds
        the worker open until graceful_timeout."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            # A thread, not here: the signal may have interrupted a thread
            # that holds a lock begin_shutdown needs.
            threading.Thread(target=self.begin_shutdown,
                             name="wsproxy-shutdown", daemon=True).start()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def stop(self, timeout=5.0):
        """Stop the watcher, then the broadcaster; close the MongoClient."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self.stopping.set()
            self.source.stop(timeout)
            self.hub.stop(timeout)
            self.mongo.close()
            self._pid = None


class WSProxy:
    """Stream MongoDB change streams to WebSocket clients of a Flask app.

    ``WSProxy(app)`` or ``ext = WSProxy(); ext.init_app(app)``.
    """

    def __init__(self, app=None):
        self.authorizer = None
        if app is not None:
            self.init_app(app)

    def authorize(self, function):
        """Decorator: ``function(request)`` decides who may connect, before
        the upgrade; it returns a :class:`~wsproxy.access.Principal`, None
        (HTTP 401), or raises :class:`~wsproxy.access.AccessDenied` (403).
        ``WSPROXY_AUTHORIZE`` in an app's config takes precedence."""
        self.authorizer = function
        return function

    def init_app(self, app):
        """Register the WebSocket route, health endpoints and the page.

        Settings (``app.config``, defaults in parentheses; README has more):

        - ``WSPROXY_MONGODB_URI`` (required): a replica set or Atlas URI.
        - ``WSPROXY_WATCH`` (``""``): ``""`` the deployment, ``"db"`` or
          ``"db.coll"``.
        - ``WSPROXY_FULL_DOCUMENT`` (``"updateLookup"``) and
          ``WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE`` (None): PyMongo's
          ``full_document`` / ``full_document_before_change``.
        - ``WSPROXY_PIPELINE`` (``[]``): aggregation stages appended to the
          change stream, e.g. a ``$project`` dropping fields.
        - ``WSPROXY_MAX_AWAIT_MS`` (500): longest the watcher blocks.
        - ``WSPROXY_BACKOFF_INITIAL`` (0.5) / ``WSPROXY_BACKOFF_MAX`` (30):
          seconds between attempts to reopen a failed stream.
        - ``WSPROXY_PATH`` (``"/ws"``): the WebSocket route.
        - ``WSPROXY_PAGE_PATH`` (``"/"``): the bundled page; None disables.
        - ``WSPROXY_HISTORY_SIZE`` (1000): recent events kept for resume.
        - ``WSPROXY_HISTORY_MAX_BYTES`` (64 MiB): and at most this many
          bytes of their frames (memory is about three times that).
        - ``WSPROXY_MAX_CATCHUPS`` (16): clients replaying older events
          from MongoDB at once; more wait, then get 1013.
        - ``WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL`` (2): of those, for one
          principal (or address, if anonymous); more wait, then get 1013.
        - ``WSPROXY_CATCHUP_TIMEOUT`` (60): seconds a catch-up may take;
          then the client is closed with 1013 and resumes from there.
        - ``WSPROXY_QUEUE_SIZE`` (10000): intake queue between the watcher
          and the broadcaster.
        - ``WSPROXY_OUTBOX_MAX_MESSAGES`` (1000) /
          ``WSPROXY_OUTBOX_MAX_BYTES`` (8 MiB): per-client backlog before
          the client is closed as a slow consumer (4008).
        - ``WSPROXY_SEND_TIMEOUT`` (10): seconds a write may block.
        - ``WSPROXY_CLOSE_TIMEOUT`` (5): seconds to wait for a close reply.
        - ``WSPROXY_PING_INTERVAL`` (25): heartbeat seconds; 0 disables.
        - ``WSPROXY_MAX_MESSAGE_SIZE`` (4096): largest client message
          (close 1009 beyond it).
        - ``WSPROXY_ALLOWED_ORIGINS`` (None): browser origins allowed to
          connect; None means same-origin only, ``["*"]`` any.
        - ``WSPROXY_AUTHORIZE`` (None): ``callable(request)`` or
          ``"module:function"``; see :meth:`authorize`.
        - ``WSPROXY_HIDE_FIELDS`` (``[]``): dotted document fields never
          sent to anyone.
        - ``WSPROXY_MAX_CLIENTS`` (1000): connections per worker (503
          beyond).
        - ``WSPROXY_MAX_FILTER_BYTES`` (4096): largest ``?filter=``.
        - ``WSPROXY_CLIENT_MESSAGE_RATE`` (5) / ``_BURST`` (20): control
          messages a client may send per second (close 1008 beyond).
        - ``WSPROXY_CONNECT_RATE`` (2) / ``WSPROXY_CONNECT_BURST`` (10):
          connections per second per principal (or remote address, if
          anonymous) and worker, and bursts; beyond, HTTP 429.
        - ``WSPROXY_SECRET_KEYS`` (None): secrets that seal resume ids, the
          current one first (older ones still open ids: rotation); the same
          in every proxy serving the same clients. None: derived from
          ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``; with neither,
          ``init_app`` raises ConfigError.
        """
        if "wsproxy" in app.extensions:
            raise RuntimeError("WSProxy is already registered on this app")
        for key, default in settings.DEFAULTS.items():
            app.config.setdefault(key, copy.deepcopy(default))
        settings.validate(app.config)
        state = app.extensions["wsproxy"] = ProxyState(app.config)
        state.extension = self
        app.register_blueprint(views.create_blueprint(app.config))

    @staticmethod
    def state(app=None):
        return (app or current_app).extensions["wsproxy"]

    def start(self, app):
        """Start the watcher and broadcaster in this process now (gunicorn
        ``post_worker_init``); otherwise they start on first use."""
        return self.state(app).ensure_started()

    def stop(self, app, timeout=5.0):
        self.state(app).stop(timeout)
