"""gunicorn settings for wsproxy: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Without WSPROXY_MONGODB_URI this starts one embedded MongoDB-compatible
server (SecantusDB, a subprocess) for all workers, plus a demo writer, and
stops both on shutdown. With it, it serves that deployment and nothing more.
"""

import logging
import os
import secrets
import shutil
import sys
import tempfile

# Metrics from every worker, summed by whichever one answers /metrics. Set
# before any worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="wsproxy-metrics-")
    _own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _own_metrics_dir = None

# Where to listen; `-b HOST:PORT` on the command line overrides this.
bind = os.environ.get("WSPROXY_BIND", "127.0.0.1:8000")

# Threaded workers: every open WebSocket holds one thread for its lifetime,
# so `threads` is the number of connections a worker can hold.
worker_class = "gthread"

# Each worker runs its own change stream and serves its own clients; more
# workers use more cores. One per core is plenty (see README, "Scaling").
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

# wsproxy's own log lines (connections, watcher state) beside gunicorn's.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["error_console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"],
                           "propagate": False, "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"],
                            "propagate": False, "qualname": "gunicorn.access"},
        "wsproxy": {"level": os.environ.get("WSPROXY_LOG_LEVEL", "INFO"),
                    "handlers": ["error_console"], "propagate": False},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler",
                    "formatter": "generic", "stream": "ext://sys.stdout"},
        "error_console": {"class": "logging.StreamHandler",
                          "formatter": "generic", "stream": "ext://sys.stderr"},
    },
    "formatters": {
        "generic": {"format": "%(asctime)s [%(process)d] [%(levelname)s] "
                              "%(name)s: %(message)s",
                    "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
                    "class": "logging.Formatter"},
    },
}

_embedded = None   # the embedded server, when this master started one
_demo_writer = None


def on_starting(server):
    """Master, before forking: start the embedded server if no URI is set,
    and hand its URI to every worker through the environment."""
    global _embedded
    if os.environ.get("WSPROXY_MONGODB_URI"):
        return
    from wsproxy.embedded import EmbeddedMongo

    _embedded = EmbeddedMongo(os.environ.get("WSPROXY_EMBEDDED_STORAGE"))
    _embedded.start()
    os.environ["WSPROXY_MONGODB_URI"] = _embedded.uri
    os.environ.setdefault("WSPROXY_WATCH", "demo")
    # Resume ids are sealed; a demo needs no key kept between runs.
    os.environ.setdefault("WSPROXY_SECRET_KEYS", secrets.token_urlsafe(32))
    server.log.info("embedded SecantusDB at %s (no WSPROXY_MONGODB_URI set)",
                    _embedded.uri)


def when_ready(server):
    """Master, listening: start the demo writer in embedded mode."""
    global _demo_writer
    if _embedded is None or os.environ.get("WSPROXY_DEMO_WRITER", "1") in (
            "0", "false", "no", "off"):
        return
    import subprocess

    _demo_writer = subprocess.Popen(
        [sys.executable, "-m", "wsproxy.demo", _embedded.uri],
        stdin=subprocess.DEVNULL, start_new_session=True)
    server.log.info("demo writer pid %s", _demo_writer.pid)


def post_worker_init(worker):
    """Worker, after fork and app load: start the watcher and broadcaster
    here, so readiness and history don't wait for the first client."""
    state = getattr(worker.wsgi, "extensions", {}).get("wsproxy")
    if state is not None:
        state.ensure_started()
        state.install_sigterm_handler()


def worker_exit(server, worker):
    """Worker, on the way out: stop the watcher and broadcaster."""
    state = getattr(worker.wsgi, "extensions", {}).get("wsproxy")
    if state is not None:
        state.stop()


def child_exit(server, worker):
    """Master, after a worker died: drop its live gauges (clients)."""
    from wsproxy.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(server):
    """Master, last: stop the demo writer, then the embedded server."""
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
    if _demo_writer is not None and _demo_writer.poll() is None:
        _demo_writer.terminate()
        _demo_writer.wait(10)
    if _embedded is not None:
        _embedded.stop()
        logging.getLogger("gunicorn.error").info("embedded SecantusDB stopped")
