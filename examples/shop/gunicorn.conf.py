"""The shop's own gunicorn config, built on wsproxy's."""

from wsproxy.gunicorn import *  # noqa: F401,F403 - settings and hooks
from wsproxy import gunicorn as wsproxy_gunicorn

bind = "127.0.0.1:8000"
workers = 2
threads = 200                  # open WebSockets per worker
worker_connections = threads + 50


def post_worker_init(worker):
    # The shop's own per-worker setup would go here; keep wsproxy's.
    wsproxy_gunicorn.post_worker_init(worker)
