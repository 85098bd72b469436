"""Reconnect tickets: a client coming back is not a new client.

Connecting costs a token of its principal's connect budget
(``WSPROXY_CONNECT_RATE`` in bursts of ``WSPROXY_CONNECT_BURST``, see
:mod:`wsproxy.limits.throttle`), and anonymous clients are charged by remote
address. Behind a reverse proxy every client has the proxy's address, so
when a deploy closes every connection of a worker with 1001, or kills it,
they all come back at once through one budget: 500 clients behind the
documented nginx (docs/serving.md) without ``ProxyFix`` took 58 s (p99) to
get back in, refused 3,538 times. A
deploy must not look like an attack.

So every ``hello`` carries a ticket, which the client presents when it
reconnects (``?ticket=``). It is sealed with the resume ids' keys (AES-SIV,
:class:`wsproxy.access.sealing.Sealer`, under its own associated data), so it works
on every worker and host sharing ``WSPROXY_SECRET_KEYS`` and after a
``kill -9``, with nothing shared but the key. Inside it:

* whom the connection was charged to (a digest of the principal's name,
  or of the address: :func:`wsproxy.limits.throttle.client_key`); another
  principal's ticket is worth nothing;
* the client's own reconnect allowance, a token bucket carried from
  ticket to ticket: at most :data:`CAP` reconnects, one more for every
  :data:`REFILL` seconds since the last ticket; a new client starts with
  none (so opening new connections earns nothing);
* the chain it belongs to (random at the first connection, kept on every
  reconnect) and when it was sealed.

A ticket with a reconnect left admits its connection through the
principal's *reconnect* budget instead of its connect budget: a bucket as
deep as the connections the principal may hold
(``WSPROXY_MAX_CLIENTS_PER_PRINCIPAL``), refilled at
``WSPROXY_CONNECT_RATE``, so every connection a principal held can come
back at once, once. The ticket given on that connection carries what is
left of the allowance, never a fresh one, and a worker refuses a ticket
older than the latest one it sealed for the same chain: a client that
reconnects in a loop runs out after :data:`CAP` and pays like anyone else.
Whatever tickets someone collects, they buy at most the reconnect budget:
one burst of the principal's connection cap, then the connect rate again.

A ticket that is not ours, another principal's, malformed, or spent is
ignored (the connection pays as a new one), never refused: it only ever
buys a cheaper admission.
"""

import collections
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from ..errors import ClientError

if TYPE_CHECKING:
    from ..access.sealing import Sealer

# Reconnects a chain may hold unused, and the seconds that earn one more.
CAP = 3
REFILL = 5.0
# A ticket longer than this is not one of ours (they are about 70).
MAX_CHARS = 200
# Chains whose latest ticket a worker remembers (to refuse older ones).
REMEMBERED = 10000

_PURPOSE = b"wsproxy reconnect ticket v1"
_VERSION = 1
# version, principal digest, tokens left, sealed at (epoch s), chain
_LAYOUT = struct.Struct(">B16sfd8s")


class Ticket:
    __slots__ = ("chain", "tokens", "at")

    def __init__(self, chain: bytes, tokens: float, at: float) -> None:
        self.chain = chain
        self.tokens = tokens
        self.at = at

    def allowance(self, now: float) -> float:
        """Reconnects this chain holds at ``now``."""
        return min(CAP, self.tokens + max(now - self.at, 0.0) / REFILL)


def _digest(key: Hashable) -> bytes:
    return hashlib.sha256(repr(key).encode()).digest()[:16]


class Tickets:
    """Seals and opens one worker's tickets; thread-safe."""

    def __init__(
        self, sealer: "Sealer", clock: Callable[[], float] = time.time
    ) -> None:
        self._sealer = sealer
        self._clock = clock
        # Guards _latest: chain -> when its latest ticket was sealed here,
        # least recently sealed first.
        self._lock = threading.Lock()
        self._latest: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def open(self, text: object, key: Hashable) -> Ticket | None:
        """The Ticket in ``text`` if it is ours, for ``key``, and the latest
        of its chain this worker sealed; else None."""
        if not isinstance(text, str) or not 0 < len(text) <= MAX_CHARS:
            return None
        try:
            plain = self._sealer.open_bytes(text, _PURPOSE)
            version, digest, tokens, at, chain = _LAYOUT.unpack(plain)
        except (ClientError, struct.error):
            return None
        if version != _VERSION or digest != _digest(key) or not tokens >= 0:
            return None
        with self._lock:
            if self._latest.get(chain, at) > at:
                return None  # a ticket this chain has already used
        return Ticket(chain, float(tokens), at)

    def after(self, ticket: Ticket, used: bool) -> Ticket:
        """The Ticket a connection admitted with ``ticket`` is given: what
        is left of its allowance (one reconnect fewer if ``used``)."""
        now = self._clock()
        tokens = ticket.allowance(now) - (1.0 if used else 0.0)
        return Ticket(ticket.chain, max(tokens, 0.0), now)

    def now(self) -> float:
        return self._clock()

    def new(self) -> Ticket:
        """A first connection's Ticket: a new chain, no reconnects yet."""
        return Ticket(os.urandom(8), 0.0, self._clock())

    def seal(self, ticket: Ticket, key: Hashable) -> str:
        """``ticket`` as the text a client holds; remembered as its chain's
        latest."""
        with self._lock:
            self._latest.pop(ticket.chain, None)
            self._latest[ticket.chain] = ticket.at
            while len(self._latest) > REMEMBERED:
                self._latest.popitem(last=False)
        plain = _LAYOUT.pack(
            _VERSION, _digest(key), ticket.tokens, ticket.at, ticket.chain
        )
        return self._sealer.seal_bytes(plain, _PURPOSE)
