"""Prometheus metrics, correct across several gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` sets it before
any worker starts), every worker writes its values to files there and
``/metrics`` sums them, so any worker's answer covers all of them. Without
it (one process, e.g. tests or ``flask run``) the default registry is used.
"""

import os
import threading

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CLIENTS = Gauge(
    "wsproxy_clients", "Connected WebSocket clients", multiprocess_mode="livesum"
)
EVENTS = Counter(
    "wsproxy_events_received_total", "Change events read from MongoDB by the watchers"
)
MESSAGES = Counter(
    "wsproxy_messages_sent_total",
    "Change messages handed to connections (written or queued)",
)
BYTES = Counter(
    "wsproxy_bytes_sent_total",
    "Bytes written to WebSocket connections (every frame, as sent)",
)
SLOW = Counter(
    "wsproxy_slow_consumer_disconnects_total",
    "Clients closed with 4008 because their outbox overflowed",
)
RESUMES = Counter(
    "wsproxy_resumes_total", "Connections by how their resume was served", ["mode"]
)  # none, history, catch-up
SNAPSHOTS = Gauge(
    "wsproxy_snapshots_active",
    "Snapshots being read and sent right now (snapshot=1)",
    multiprocess_mode="livesum",
)
CATCHUPS = Gauge(
    "wsproxy_catchups_active",
    "Clients being replayed from MongoDB right now",
    multiprocess_mode="livesum",
)
RESETS = Counter(
    "wsproxy_resets_total", "Reset messages: events may have been lost", ["cause"]
)
WATCHER_ERRORS = Counter(
    "wsproxy_watcher_errors_total", "Change stream errors seen by the watchers"
)
WATCHER_RECONNECTS = Counter(
    "wsproxy_watcher_reconnects_total", "Times a watcher reopened its change stream"
)
LAG = Histogram(
    "wsproxy_event_lag_seconds",
    "From the event's wallTime in MongoDB to its fan-out here",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REFUSED = Counter(
    "wsproxy_refused_total", "Connections refused before the upgrade", ["status"]
)


class Tally:
    """A counter for something counted at every socket write: adding to a
    prometheus Counter costs ~2 us in multiprocess mode (a file write),
    too much a thousand times per event on the broadcaster, so writes add
    here (a lock and an addition), and the broadcaster moves the sum to
    ``counter`` after each fan-out and at least once a second
    (:class:`wsproxy.fanout.hub.Hub`)."""

    FLUSH_EVERY = 1.0  # seconds

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        # Guards _pending: writers of every connection add to it.
        self._lock = threading.Lock()
        self._pending = 0

    def add(self, amount: int) -> None:
        with self._lock:
            self._pending += amount

    def flush(self) -> None:
        with self._lock:
            amount, self._pending = self._pending, 0
        if amount:
            self._counter.inc(amount)


# What GuardedSocket writes (wsproxy.transport.websocket).
BYTES_WRITTEN = Tally(BYTES)


def exposition() -> tuple[bytes, str]:
    """(body, content type) for ``GET /metrics``."""
    BYTES_WRITTEN.flush()  # this worker's, up to now
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
