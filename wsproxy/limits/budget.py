"""What each principal holds in one worker at once, and the cap on it.

Many tenants share a worker, and the broadcaster does work for every open
subscription on every event it may see: it judges each distinct
subscription once per change (see
:meth:`wsproxy.fanout.subscription.Subscription.decide`) and writes to each
connection. So what one principal (or, for anonymous clients, one remote
address: :func:`wsproxy.limits.throttle.client_key`) may hold open is bounded,
and charged to it:

* connections: at most ``WSPROXY_MAX_CLIENTS_PER_PRINCIPAL`` (by default
  half of ``WSPROXY_MAX_CLIENTS``), so one tenant never fills the worker;
* filter terms: the terms (fields, operators, listed values, see
  :func:`wsproxy.access.filters.terms`) of each *distinct* subscription it holds
  open, its own rule included, at most
  ``WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL`` in all. Connections with the
  same subscription are judged once per change, so they are charged once:
  a thousand tabs of one dashboard cost what one does, a thousand
  different costly filters are refused.

A connection over either is refused before the upgrade with 429 and a
reason naming the setting; a ``subscribe`` over the filter budget gets an
``error`` and keeps its subscription. Every check and update is O(1) (a
subscription's terms are counted when it is parsed, on the client's own
thread), under one lock held for nothing else.
"""

import collections
import dataclasses
import threading
from collections.abc import Hashable
from typing import Protocol

from .throttle import Throttled

# Seconds a refused client is asked to wait before it tries again: what it
# holds is released only as its other connections end.
RETRY_AFTER = 5.0


@dataclasses.dataclass
class _Ledger:
    connections: int = 0
    terms: int = 0
    # subscription key -> connections holding it (each key charged once)
    subscriptions: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )


# What a subscription costs: (what it is told apart by, its filter terms).
Charge = tuple[Hashable, int]


class Charged(Protocol):
    """What :func:`charge_of` reads of a subscription
    (:class:`wsproxy.fanout.subscription.Subscription`, a layer above)."""

    @property
    def key(self) -> Hashable | None: ...

    @property
    def terms(self) -> int: ...


class Reservation:
    """One connection's share of its principal's budget, until released."""

    __slots__ = ("key", "charge", "released")

    def __init__(self, key: Hashable, charge: Charge) -> None:
        self.key = key
        self.charge = charge  # (subscription key, terms) charged
        self.released = False


def charge_of(subscription: Charged) -> Charge:
    """What a subscription costs: (what it is told apart by, its terms).
    Subscriptions without a key (live documents, judged per connection)
    are charged per connection."""
    key = subscription.key if subscription.key is not None else object()
    return key, subscription.terms


class Budgets:
    """The worker's ledger of what each principal holds."""

    def __init__(self, *, max_connections: int, max_terms: int) -> None:
        self.max_connections = max_connections
        self.max_terms = max_terms
        # Guards _ledgers: principal key -> _Ledger (only keys in use).
        self._lock = threading.Lock()
        self._ledgers: dict[Hashable, _Ledger] = {}

    def check(self, key: Hashable, subscription: Charged) -> None:
        """Raise :class:`Throttled` if ``key`` could not open a connection
        with ``subscription`` now (reserves nothing)."""
        charge = charge_of(subscription)
        with self._lock:
            self._refusal(self._ledgers.get(key) or _Ledger(), charge, 1)

    def reserve(self, key: Hashable, subscription: Charged) -> Reservation:
        """A :class:`Reservation` for one more connection of ``key`` with
        ``subscription``, or :class:`Throttled`."""
        charge = charge_of(subscription)
        with self._lock:
            ledger = self._ledgers.get(key) or _Ledger()
            self._refusal(ledger, charge, 1)
            self._ledgers[key] = ledger
            ledger.connections += 1
            self._add(ledger, charge)
        return Reservation(key, charge)

    def replace(self, reservation: Reservation, subscription: Charged) -> None:
        """Move ``reservation`` to ``subscription`` (a ``subscribe``), or
        raise :class:`Throttled` and keep the old one."""
        charge = charge_of(subscription)
        with self._lock:
            if reservation.released:
                return
            ledger = self._ledgers[reservation.key]
            self._remove(ledger, reservation.charge)
            try:
                self._refusal(ledger, charge, 0)
            except Throttled:
                self._add(ledger, reservation.charge)
                raise
            self._add(ledger, charge)
            reservation.charge = charge

    def release(self, reservation: Reservation) -> None:
        """Give the connection's share back (once; later calls do nothing)."""
        with self._lock:
            if reservation.released:
                return
            reservation.released = True
            ledger = self._ledgers[reservation.key]
            ledger.connections -= 1
            self._remove(ledger, reservation.charge)
            if ledger.connections == 0:
                del self._ledgers[reservation.key]

    def held(self, key: Hashable) -> tuple[int, int]:
        """(connections, filter terms) ``key`` holds now."""
        with self._lock:
            ledger = self._ledgers.get(key) or _Ledger()
            return ledger.connections, ledger.terms

    def _refusal(self, ledger: _Ledger, charge: Charge, more_connections: int) -> None:
        if more_connections and ledger.connections >= self.max_connections:
            raise Throttled(
                f"too many connections for this principal (limit "
                f"{self.max_connections}, WSPROXY_MAX_CLIENTS_PER_PRINCIPAL)",
                retry_after=RETRY_AFTER,
            )
        sub_key, terms = charge
        if ledger.subscriptions[sub_key] == 0 and (
            ledger.terms + terms > self.max_terms
        ):
            raise Throttled(
                f"this principal's open filters are too costly: "
                f"{ledger.terms} terms open, this one {terms}, limit "
                f"{self.max_terms} (WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL); "
                "connections with the same filter are charged once",
                retry_after=RETRY_AFTER,
            )

    @staticmethod
    def _add(ledger: _Ledger, charge: Charge) -> None:
        sub_key, terms = charge
        if ledger.subscriptions[sub_key] == 0:
            ledger.terms += terms
        ledger.subscriptions[sub_key] += 1

    @staticmethod
    def _remove(ledger: _Ledger, charge: Charge) -> None:
        sub_key, terms = charge
        ledger.subscriptions[sub_key] -= 1
        if ledger.subscriptions[sub_key] <= 0:
            del ledger.subscriptions[sub_key]
            ledger.terms -= terms
