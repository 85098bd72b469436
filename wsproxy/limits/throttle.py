"""What one principal or remote address may cost the worker.

Connecting is the one thing a client does that costs the server work in
proportion to what it asks for (a resume replays history or MongoDB through
its filter), so connections are rate-limited per key, before the upgrade: a
token bucket of ``WSPROXY_CONNECT_BURST`` refilled at
``WSPROXY_CONNECT_RATE`` per second; beyond it, HTTP 429 with a reason and
``Retry-After``. A plain connection costs one token, so a reconnect storm
after a deploy (every client of a worker at once, often through one proxy
address) gets through; a resume that will run a filter over the history
costs in proportion to that work (:func:`connect_cost`). Catch-ups from
MongoDB are also bounded per key in number
(``WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL``, see :mod:`wsproxy.stream.catchup`).

The key is the principal's name when the authorizer gave one, else the
remote address (anonymous clients, and the default ``anonymous``
principal). Behind a reverse proxy the remote address is the proxy's
unless the app trusts its forwarding headers (werkzeug's ``ProxyFix``).
"""

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from .. import access
from ..errors import ClientError
from ..protocol import CloseCode

# Buckets kept at most; a full bucket is the same as none, so those go
# first. Only when every kept bucket is still refilling (that many keys
# active within burst/rate seconds) are new keys refused: fail closed.
MAX_KEYS = 10000


# Filter bytes x history events that cost one more token: a resume with a
# 3.6 KB filter over 1,000 events costs 37 tokens, a plain one 1.
WORK_PER_TOKEN = 100_000


# A snapshot (snapshot=1) of this many documents costs one token more.
DOCS_PER_TOKEN = 1000


# A snapshot's read costs one token more for this many seconds of reading.
READ_SECONDS_PER_TOKEN = 0.01


def read_cost(docs: int, seconds: float) -> float:
    """Tokens a snapshot's read costs once it is done: the documents it
    returned and the time the database took (what a scan no index serves
    costs shows in time, not in documents returned)."""
    return docs / DOCS_PER_TOKEN + seconds / READ_SECONDS_PER_TOKEN


def connect_cost(
    resume_id: str | None, filter_text: str | None, history_length: int
) -> float:
    """Tokens one connection costs: 1, plus the replay work a resume from
    history asks for (its filter runs over up to the whole history). A
    snapshot (which never replays) pays for its read after it, by
    :func:`read_cost`."""
    if resume_id is None or not filter_text:
        return 1.0
    return 1.0 + history_length * len(filter_text.encode()) / WORK_PER_TOKEN


class Throttled(ClientError):
    """Too many connections from one principal or address (HTTP 429)."""

    status = 429

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = max(1, math.ceil(retry_after))


def client_key(principal: object, remote_addr: str | None) -> tuple[str, Any]:
    """Whom a connection's cost is charged to."""
    name = getattr(principal, "name", None)
    if name is not None and principal is not access.ANYONE:
        return ("principal", name)
    return ("address", remote_addr or "")


class KeyedRateLimit:
    """A token bucket per key; thread-safe, and bounded to ``max_keys``
    buckets."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        # Guards _buckets: key -> [tokens, when counted], least recently
        # used first.
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[Hashable, list[float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, bucket: list[float], now: float) -> float:
        # Time never runs backwards for a bucket: a clock read late counts
        # as no refill, never as tokens taken away.
        elapsed = max(now - bucket[1], 0.0)
        return min(self.burst, bucket[0] + elapsed * self.rate)

    def take(self, key: Hashable, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens of ``key``'s bucket (at most a burst's
        worth): 0.0 if there were enough, else the seconds until there will
        be (nothing is spent then)."""
        cost = min(max(cost, 1.0), self.burst)
        with self._lock:
            # Read under the lock: a time read before it by a thread that
            # then waited (a storm, a thousand threads wanting the GIL)
            # would be older than the bucket's and count as a refund
            # owed, seconds of refill taken away.
            now = self._clock()
            bucket = self._buckets.pop(key, None)
            self._forget_full(now, 2)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._forget_full(now, len(self._buckets))
                if len(self._buckets) >= self.max_keys:
                    oldest = next(iter(self._buckets.values()))
                    return max(
                        (self.burst - self._tokens(oldest, now)) / self.rate, 1.0
                    )
                bucket = [self.burst, now]
            tokens = self._tokens(bucket, now)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                wait = (cost - tokens) / self.rate
            bucket[0], bucket[1] = tokens, now
            self._buckets[key] = bucket
            return wait

    def _forget_full(self, now: float, limit: int) -> None:
        """Drop up to ``limit`` least recently used buckets that have
        refilled (the caller holds the lock)."""
        for _ in range(limit):
            if not self._buckets:
                return
            key, bucket = next(iter(self._buckets.items()))
            if self._tokens(bucket, now) < self.burst:
                return  # the rest were used more recently still
            del self._buckets[key]

    def charge(self, key: Hashable, cost: float) -> None:
        """Spend ``cost`` tokens of ``key``'s bucket after the fact (work
        already done): the bucket may go as far as a burst below empty, so
        the key waits that much longer before its next admission."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.pop(key, None) or [self.burst, now]
            tokens = self._tokens(bucket, now) - cost
            bucket[0], bucket[1] = max(tokens, -self.burst), now
            self._buckets[key] = bucket

    def admit(
        self, key: Hashable, what: str = "connections", cost: float = 1.0
    ) -> None:
        """Spend ``cost`` tokens or raise :class:`Throttled`."""
        wait = self.take(key, cost)
        if wait:
            raise Throttled(
                f"too many {what} (limit {self.rate:g}/s, "
                f"bursts of {self.burst:g}); retry later",
                retry_after=wait,
            )


class KeyedSlots:
    """At most ``limit`` of something at once per key; thread-safe. Only
    keys in use are kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Guards _used: key -> how many are in use (> 0); notified on release.
        self._freed = threading.Condition(threading.Lock())
        self._used: dict[Hashable, int] = {}

    def acquire(self, key: Hashable, timeout: float | None = 0.0) -> bool:
        """Take one of ``key``'s slots, waiting up to ``timeout`` seconds
        for one to be released; False if none was free."""
        with self._freed:
            if not self._freed.wait_for(
                lambda: self._used.get(key, 0) < self.limit, timeout
            ):
                return False
            self._used[key] = self._used.get(key, 0) + 1
            return True

    def release(self, key: Hashable) -> None:
        with self._freed:
            used = self._used.get(key, 0) - 1
            if used > 0:
                self._used[key] = used
            else:
                self._used.pop(key, None)
            self._freed.notify_all()

    def in_use(self, key: Hashable) -> int:
        with self._freed:
            return self._used.get(key, 0)


@contextlib.contextmanager
def holding(
    client: Any,
    key: Hashable,
    *,
    per_key: KeyedSlots,
    slots: threading.BoundedSemaphore,
    timeout: float,
    gauge: Any,
    busy_for_key: str,
    busy: str,
) -> Iterator[Hashable | None]:
    """Hold one of ``key``'s slots (``per_key``, a :class:`KeyedSlots`) and
    one of the worker's (``slots``, a semaphore), each waited for up to
    ``timeout`` seconds, with ``gauge`` one higher meanwhile; yields
    ``key``. If either is not free in time, ``client`` is closed with 1013
    and ``busy_for_key`` (formatted with the ``limit``) or ``busy``, and
    it yields None: the body then does nothing. Both are given back at
    the end whatever happens."""
    if not per_key.acquire(key, timeout=timeout):
        client.request_close(
            CloseCode.TRY_AGAIN, busy_for_key.format(limit=per_key.limit)
        )
        yield None
        return
    try:
        if not slots.acquire(timeout=timeout):
            client.request_close(CloseCode.TRY_AGAIN, busy)
            yield None
            return
        try:
            gauge.inc()
            yield key
        finally:
            gauge.dec()
            slots.release()
    finally:
        per_key.release(key)
