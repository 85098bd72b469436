"""gunicorn settings and hooks for any Flask app that mounts wsproxy.

    gunicorn -c python:wsproxy.gunicorn myapp:app

or, in your own ``gunicorn.conf.py``::

    from wsproxy.gunicorn import *        # settings and hooks
    workers = 4                            # then override what you need

A hook you define yourself replaces wsproxy's: call it from yours
(``wsproxy.gunicorn.post_worker_init(worker)``).

What it gives: threaded (gthread) workers sized for long-lived sockets; the
watcher and broadcaster started in each worker after the fork (PyMongo is
not fork-safe, so never in the master and never under ``preload_app``);
SIGTERM closing every client with 1001 at once so deploys do not wait out
``graceful_timeout``; ``/metrics`` summed over all workers; wsproxy's own
log lines beside gunicorn's; an access log without query strings (they can
carry ``access_token``). It never starts a database: the embedded demo
server (``WSPROXY_EMBEDDED=1``) is a feature of the ``gunicorn.conf.py`` in
wsproxy's repository, built on this module; here that variable only gets a
warning.

This module imports nothing from wsproxy at the top: it runs in the master
before any worker, and prometheus_client must see PROMETHEUS_MULTIPROC_DIR
before it is first imported.
"""

import ctypes
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .http.extension import ProxyState

__all__ = [
    "worker_class",
    "workers",
    "threads",
    "worker_connections",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "preload_app",
    "control_socket_disable",
    "logconfig_dict",
    "access_log_format",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "worker_exit",
    "child_exit",
    "on_exit",
]

_TRUE = ("1", "true", "yes", "on")

# Metrics from every worker, summed by whichever one answers /metrics.
_own_metrics_dir: str | None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wsproxy-metrics-")
    _own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _own_metrics_dir = None

# Threaded workers: every open WebSocket holds one thread for its lifetime,
# so `threads` is the number of connections a worker can hold.
worker_class = "gthread"

# Each worker runs its own change stream and serves its own clients; more
# workers use more cores. One per core is plenty (docs/serving.md, "Workers
# and sizing").
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))

# Connections per worker, plus headroom for health checks and page loads.
threads = int(os.environ.get("WSPROXY_THREADS", "1100"))

# gunicorn's own cap on open connections per worker; above `threads` so
# short HTTP requests can still be kept alive.
worker_connections = threads + 100

# Seconds of silence from a worker before the master kills it. The gthread
# main loop reports in while handler threads block, so this is not a cap on
# how long a WebSocket may stay open.
timeout = 30

# On SIGTERM, seconds workers get to close their clients (1001) and stop.
graceful_timeout = int(os.environ.get("WSPROXY_GRACEFUL_TIMEOUT", "10"))

# gunicorn 25+ opens a control socket at one fixed path per user; several
# servers on one host (tests, blue/green deploys) would fight over it.
control_socket_disable = True

# HTTP keep-alive for the page and health checks.
keepalive = 5

# Never load the app in the master: PyMongo is not fork-safe, and the
# watcher must start in each worker (post_worker_init below).
preload_app = False

# gunicorn's default format without the query string (%(U)s is the path
# alone): `?access_token=` must never reach a log file (and the filters in
# logconfig_dict mask one in any other line).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'

# wsproxy's own log lines (connections, watcher state) beside gunicorn's.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["error_console"]},
    "loggers": {
        "gunicorn.error": {
            "level": "INFO",
            "handlers": ["error_console"],
            "propagate": False,
            "qualname": "gunicorn.error",
        },
        "gunicorn.access": {
            "level": "INFO",
            "handlers": ["console"],
            "propagate": False,
            "qualname": "gunicorn.access",
        },
        "wsproxy": {
            "level": os.environ.get("WSPROXY_LOG_LEVEL", "INFO"),
            "handlers": ["error_console"],
            "propagate": False,
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout",
            "filters": ["mask_access_tokens", "one_line"],
        },
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stderr",
            "filters": ["mask_access_tokens"],
        },
    },
    "filters": {
        # gunicorn's own WARNING for a malformed request line quotes the
        # line whole, ?access_token= included.
        "mask_access_tokens": {"()": "wsproxy.logsafe.MaskAccessTokens"},
        # The access log's URL path is percent-decoded client text: a %0A
        # in it would start a line of the client's making.
        "one_line": {"()": "wsproxy.logsafe.OneLine"},
    },
    "formatters": {
        "generic": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
            "class": "logging.Formatter",
        },
    },
}


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in _TRUE


# The hooks: gunicorn ships no type information, so its server (the
# arbiter), its workers and their loggers are Any here.


def on_starting(server: Any) -> None:
    """Master, before forking: WSPROXY_EMBEDDED belongs to the demo config
    in wsproxy's repository; say so once instead of ignoring it quietly."""
    if _flag("WSPROXY_EMBEDDED"):
        server.log.warning(
            "WSPROXY_EMBEDDED is ignored: it only applies to the demo config "
            "in wsproxy's repository (gunicorn.conf.py, which python3 dev.py "
            "demo runs); wsproxy.gunicorn never starts a database. Set "
            "WSPROXY_MONGODB_URI."
        )


# glibc's malloc gives each thread that allocates an arena of its own (up
# to 8 per core) and keeps what was freed in it: after 20 snapshot clients
# a worker stayed 7 MB larger per client, 3 MB with two arenas
# (docs/benchmarks.md, "Memory after snapshots"). MALLOC_ARENA_MAX, if set,
# is the operator's choice, and glibc has read it already.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)


def limit_malloc_arenas(log: Any = None) -> bool:
    """At most MALLOC_ARENAS glibc malloc arenas in this process, for the
    threads it starts from now on; nothing on another C library or when
    MALLOC_ARENA_MAX is set. Returns whether the limit was set."""
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        done = ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1
    except (OSError, AttributeError):
        done = False
    if not done and log is not None:
        log.warning("wsproxy.gunicorn: could not limit glibc's malloc arenas")
    return done


def post_fork(server: Any, worker: Any) -> None:
    """Worker, just forked, before any thread of its own: fewer malloc
    arenas (see MALLOC_ARENAS)."""
    limit_malloc_arenas(worker.log)


def _state(worker: Any) -> "ProxyState | None":
    # No worker.wsgi when the app failed to load (worker_exit still runs).
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get("wsproxy")


def post_worker_init(worker: Any) -> None:
    """Worker, after fork and app load: start the watcher and broadcaster
    here (readiness and history don't wait for a first client), and close
    clients with 1001 on SIGTERM."""
    state = _state(worker)
    if state is None:
        worker.log.warning(
            "wsproxy.gunicorn: %r has no WSProxy; nothing to start", worker.wsgi
        )
        return
    state.ensure_started(worker.wsgi)
    state.install_sigterm_handler(then=listener_closer(worker))


def listener_closer(worker: Any) -> Callable[[], None] | None:
    """What SIGTERM does besides the 1001s: close this worker's listening
    sockets at once rather than after its graceful wait. The master closes
    its own copies first thing, but the worker's keep the socket open
    while its clients are told 1001: clients reconnecting at once (the
    bundled ones do) were queued in a backlog nobody accepted and reset
    when the worker exited (385 of 500 in a deploy storm, each then backing
    off), where now they are refused at once. Where the master keeps
    listening (a reload, one worker stopped) its copy, and every other
    worker's, go on accepting.

    Through gthread's queue of calls for its main loop, whose poller owns
    the sockets; None (nothing more) for a gunicorn without one."""
    queue = getattr(worker, "method_queue", None)
    stop_accepting = getattr(worker, "set_accept_enabled", None)
    if queue is None or stop_accepting is None:
        return None

    def close_listeners() -> None:
        for listener in worker.sockets:
            listener.close()

    def stop_listening() -> None:
        stop_accepting(False)
        # Closed on a later turn of the loop: the poll that ran this may
        # also have found a listener readable, and accept() on a closed
        # socket would end the worker with EBADF.
        queue.defer(close_listeners)

    return lambda: queue.defer(stop_listening)


def worker_exit(server: Any, worker: Any) -> None:
    """Worker, on the way out: stop the watcher and broadcaster."""
    state = _state(worker)
    if state is not None:
        state.stop()


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker died: drop its live gauges (clients)."""
    from wsproxy.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    """Master, last: remove the metrics directory this module made."""
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
