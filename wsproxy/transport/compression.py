"""Shared compression contexts: permessage-deflate whose window is carried
from message to message, shared by every client of one subscription
(``WSPROXY_COMPRESSION=shared``).

A compressor that carries its window across messages compresses change
events about twice as well as one that starts afresh for each (the events
repeat each other's field names and values), but its output can only be
read by a decompressor whose window holds exactly the same preceding
plaintext. Clients with the same subscription, hidden fields and window
size receive the same changes in the same order, so one such compressor,
a :class:`SharedContext`, can serve all of them: each message is
compressed once per group, not once per connection.

Why a client can never see a back reference to bytes it did not receive.

* A client's decompressor window is the plaintext of the compressed
  messages it received, in order; messages sent uncompressed (RSV1 clear:
  control messages, replies) do not enter it (RFC 7692, 7.2.2 and 6.1).
* The context is reset at known points: a new *epoch* starts with a fresh
  compressor, so the first frame of an epoch (``seq`` 0) refers to nothing
  before it, and frame ``seq`` n of an epoch refers only to frames 0..n-1
  of the same epoch.
* A connection uses a shared frame only if it is frame 0 of an epoch, or
  the frame right after the last shared frame it was sent (same epoch,
  ``seq`` one more), and it received no other compressed frame since:
  :class:`Sync` records exactly that, under the connection's state lock,
  in the same step that queues the frame. Any other compressed frame
  (an independent one, a replayed or snapshot one) or a gap in ``seq``
  (a change the group was sent and this connection was not) ends the
  sync. Until the next epoch begins, the connection gets independent
  frames (:func:`wsproxy.transport.codec.deflated_frame`), which any decompressor
  reads whatever its window holds.

So when a connection is sent frame n of epoch e, its window ends with the
plaintext of frames 0..n-1 of epoch e, in order and nothing between
them: what the shared compressor's history holds. Joining, resuming,
catching up, changing subscription or skipping a change all fall back to
independent frames until the next reset, and never corrupt a stream.

Resets every :data:`RESET_MESSAGES` messages or :data:`RESET_BYTES`
bytes of input, whichever comes first: measured on the demo's events, a
context carried for 64 messages compresses within 3% of one never reset,
and a newcomer waits at most that long for shared frames.
"""

import collections
import threading
import zlib
from collections.abc import Hashable
from typing import Protocol

from . import codec

# (epoch, seq, frame): a shared frame (see SharedContext.encode).
Encoded = tuple[int, int, bytes]


class Keyed(Protocol):
    """What :meth:`SharedContexts.join` reads of a subscription
    (:class:`wsproxy.fanout.subscription.Subscription`, a layer above)."""

    @property
    def key(self) -> Hashable | None: ...


RESET_MESSAGES = 64
RESET_BYTES = 256 * 1024
# At most this many shared contexts per worker (each holds a zlib
# compressor, about 260 KB at a 15-bit window); clients of further
# subscriptions get independent frames.
MAX_CONTEXTS = 64
# ...and at most this many made by one principal (or anonymous address):
# each costs a compression of every change it is offered, on the
# broadcaster, so one tenant's many subscriptions cannot take the others'.
MAX_CONTEXTS_PER_PRINCIPAL = 8
# Results kept for changes already encoded: the members of a group are
# offered the same batch of changes one member after another (see
# wsproxy.fanout.hub.MAX_BATCH), and each change is compressed once.
_REMEMBERED = 256


class SharedContext:
    """One group's compressor. :meth:`encode` runs on the broadcaster
    thread only; joining and leaving on any thread (under the registry's
    lock)."""

    def __init__(self, key: Hashable, window_bits: int, owner: Hashable = None) -> None:
        self.key = key
        self.window_bits = window_bits
        self.owner = owner  # the principal charged for it
        self.members = 0  # under SharedContexts._lock
        self.epoch = 0
        self._seq = 0
        self._input = 0
        self._compressor: zlib._Compress | None = None
        # change id -> result
        self._encoded: collections.OrderedDict[str, Encoded | None] = (
            collections.OrderedDict()
        )

    def encode(self, change: codec.Change, text: str) -> Encoded | None:
        """The shared frame of ``change`` (whose message is ``text``), as
        ``(epoch, seq, frame)``; None if the message goes plain (too small
        to compress). Compresses each change once, in the order offered."""
        if change.id in self._encoded:
            return self._encoded[change.id]
        data = text.encode()
        if len(data) < codec.DEFLATE_MIN_BYTES:
            result = None
        else:
            if (
                self._compressor is None
                or self._seq >= RESET_MESSAGES
                or self._input >= RESET_BYTES
            ):
                self.epoch += 1
                self._seq = self._input = 0
                self._compressor = zlib.compressobj(
                    codec.DEFLATE_LEVEL, zlib.DEFLATED, -self.window_bits
                )
            body = self._compressor.compress(data) + self._compressor.flush(
                zlib.Z_SYNC_FLUSH
            )
            result = (self.epoch, self._seq, codec.deflate_frame_of(body[:-4]))
            self._seq += 1
            self._input += len(data)
        self._encoded[change.id] = result
        if len(self._encoded) > _REMEMBERED:
            self._encoded.popitem(last=False)
        return result


class SharedContexts:
    """The worker's shared contexts, by (subscription key, window bits)."""

    def __init__(
        self,
        max_contexts: int = MAX_CONTEXTS,
        per_principal: int = MAX_CONTEXTS_PER_PRINCIPAL,
    ) -> None:
        self.max_contexts = max_contexts
        self.per_principal = per_principal
        # Guards _contexts, _made_by and every context's member count.
        self._lock = threading.Lock()
        self._contexts: dict[tuple[Hashable, int], SharedContext] = {}
        # owner -> contexts it made
        self._made_by: collections.Counter[Hashable] = collections.Counter()

    def join(
        self, subscription: Keyed, window_bits: int | None, owner: Hashable = None
    ) -> SharedContext | None:
        """The context for a client of ``subscription`` that negotiated
        ``window_bits``, or None (no shared frames for it). A new context
        is charged to ``owner`` (the client's principal key); one that
        exists costs nothing more to join."""
        key = subscription.key
        if key is None or window_bits is None:
            return None
        with self._lock:
            context = self._contexts.get((key, window_bits))
            if context is None:
                if (
                    len(self._contexts) >= self.max_contexts
                    or self._made_by[owner] >= self.per_principal
                ):
                    return None
                context = self._contexts[(key, window_bits)] = SharedContext(
                    key, window_bits, owner
                )
                self._made_by[owner] += 1
            context.members += 1
            return context

    def leave(self, context: SharedContext | None) -> None:
        if context is None:
            return
        with self._lock:
            context.members -= 1
            if context.members == 0:
                self._contexts.pop((context.key, context.window_bits), None)
                self._made_by[context.owner] -= 1
                if self._made_by[context.owner] <= 0:
                    del self._made_by[context.owner]


class Sync:
    """Where one connection stands in its context's sequence: the shared
    frame it may be sent next. Used under the connection's state lock."""

    __slots__ = ("epoch", "next_seq")

    def __init__(self) -> None:
        self.epoch: int | None = None  # None: not in sync; independent frames only
        self.next_seq = 0

    def expects(self, epoch: int, seq: int) -> bool:
        """Whether frame ``seq`` of ``epoch`` may be sent next."""
        return seq == 0 or (epoch == self.epoch and seq == self.next_seq)

    def admits(self, epoch: int, seq: int) -> bool:
        """Whether frame ``seq`` of ``epoch`` may be sent (and, if so,
        count it as sent)."""
        if self.expects(epoch, seq):
            self.epoch, self.next_seq = epoch, seq + 1
            return True
        self.epoch = None
        return False

    def lose(self) -> None:
        """Another compressed frame went out: out of sync until a reset."""
        self.epoch = None
