"""The intake queue, the broadcaster thread and the locked set of clients.

The watcher puts :class:`~wsproxy.codec.Change` objects on the intake queue;
the ``wsproxy-broadcaster`` thread takes them off one at a time, records each
in a bounded history of recent events (so a reconnecting client can resume
without asking MongoDB) and offers its pre-built frame to every subscribed
client. Offering never blocks (see :mod:`wsproxy.client`), so one slow client
cannot stall the others.
"""

import collections
import logging
import queue
import threading

import datetime
import time

from . import codec, metrics

log = logging.getLogger(__name__)

_STOP = object()


class Barrier:
    """Runs ``callback`` on the broadcaster thread once everything queued
    before it has been published to every client."""

    __slots__ = ("callback",)

    def __init__(self, callback):
        self.callback = callback


class Announcement:
    """A control message for every connected client (status, reset)."""

    __slots__ = ("text", "frame", "forget_history")

    def __init__(self, text, forget_history=False):
        self.text = text
        self.frame = codec.frame(text)
        # After a reset, recorded positions no longer connect to the live
        # stream, so resuming from them must not look gap-free.
        self.forget_history = forget_history


class Hub:
    def __init__(self, *, history_size=1000, history_bytes=64 << 20,
                 queue_size=10000):
        # Guards _clients and _history together: a client registers and
        # replays history in the same critical section in which the
        # broadcaster appends to history and snapshots the clients, which
        # is what makes the seam between replay and live gap- and
        # duplicate-free.
        self._lock = threading.Lock()
        self._clients = set()
        self._history = collections.OrderedDict()  # id -> Change, oldest first
        self._history_size = history_size
        # Counted as frame bytes; the decoded event and its JSON text are
        # kept too, so memory is about three times this.
        self._history_bytes_max = history_bytes
        self._history_bytes = 0
        self.intake = queue.Queue(maxsize=queue_size)
        self._thread = None

    # -- lifecycle ----------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(
            target=self._run, name="wsproxy-broadcaster", daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        if self._thread is None:
            return
        self.intake.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    # -- intake (watcher thread) -------------------------------------------

    def submit(self, item, stopping):
        """Queue a change or control message; blocks while the queue is full
        (back-pressure on the change stream, never a dropped event) unless
        ``stopping`` is set. Returns False if it gave up because of that."""
        while not stopping.is_set():
            try:
                self.intake.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    # -- clients (handler threads) -----------------------------------------

    def register(self, client, after_id, hello):
        """Add a client, first queueing ``hello(mode)`` and, with
        ``after_id``, the recorded events after it. Returns the mode:
        ``"none"`` (live only), ``"history"`` (replayed from memory), or
        None when ``after_id`` is not in the history: the client is then
        not added, and the caller must catch it up another way."""
        with self._lock:
            if after_id is None:
                mode, replay = "none", []
            elif after_id in self._history:
                mode, replay = "history", self._replay_after(client, after_id)
            else:
                return None
            client.preload([codec.frame(hello(mode))] + replay)
            self._clients.add(client)
            return mode

    def _replay_after(self, client, after_id):
        sub, replay, seen = client.subscription, [], False
        for change_id, change in self._history.items():
            if seen and sub.wants(change):
                replay.append(sub.frame(change))
            seen = seen or change_id == after_id
        return replay

    def add(self, client):
        """Add a client that has been caught up by other means."""
        with self._lock:
            self._clients.add(client)

    def unregister(self, client):
        with self._lock:
            self._clients.discard(client)

    def clients(self):
        with self._lock:
            return list(self._clients)

    def __len__(self):
        return len(self._clients)

    def history_ids(self):
        with self._lock:
            return list(self._history)

    # -- the broadcaster thread --------------------------------------------

    def _run(self):
        while True:
            item = self.intake.get()
            if item is _STOP:
                return
            try:
                if isinstance(item, codec.Change):
                    self._publish(item)
                elif isinstance(item, Barrier):
                    item.callback()
                else:
                    self._announce(item)
            except Exception:  # noqa: BLE001 - the broadcaster must survive
                log.exception("broadcaster: failed to publish %r", item)

    def _publish(self, change):
        size = len(change.frame)  # encoded here, not under the lock
        with self._lock:
            self._history[change.id] = change
            self._history_bytes += size
            while self._history and (
                    len(self._history) > self._history_size
                    or self._history_bytes > self._history_bytes_max):
                _, old = self._history.popitem(last=False)
                self._history_bytes -= len(old.frame)
            clients = list(self._clients)
        wall = change.raw.get("wallTime")
        if isinstance(wall, datetime.datetime):
            # PyMongo decodes naive UTC datetimes.
            lag = time.time() - wall.replace(
                tzinfo=datetime.timezone.utc).timestamp()
            metrics.LAG.observe(max(lag, 0.0))
        handed = 0
        for client in clients:
            if client.on_change(change):
                handed += 1
        if handed:
            metrics.MESSAGES.inc(handed)
            metrics.BYTES.inc(handed * len(change.frame))

    def _announce(self, announcement):
        if announcement.forget_history:
            with self._lock:
                self._history.clear()
                self._history_bytes = 0
        for client in self.clients():
            client.offer(announcement.frame)
