"""The one module that knows simple-websocket's insides.

flask-sock's route wrapper builds ``simple_websocket.Server(request.environ,
**app.config["SOCK_SERVER_OPTIONS"])`` and hands it to the view. Three things
about that server matter to wsproxy, and all of them are dealt with here, so
the rest of the package talks to a :class:`Connection` and never to
simple-websocket's attributes (``ws.ws``, ``ws.thread``, ``input_buffer``,
``pong_received``, ``close_reason``, ``event``):

* **Options are app-wide.** ``SOCK_SERVER_OPTIONS`` belongs to the host app
  and its own Flask-Sock routes. wsproxy's route needs its own message size
  limit and subprotocol ("bearer") and must not inherit the host's ping
  thread or limits. :func:`prepare` (called from the blueprint's
  ``before_request``, before flask-sock's wrapper runs) leaves wsproxy's own
  options in the request's environ, and wsproxy's route, registered with
  :func:`route`, builds its server with them (:func:`accept`). Nothing
  process-wide is replaced: flask-sock's module and the host's routes keep
  simple-websocket's ``Server`` and the host's options.
* **One thread per connection.** simple-websocket reads in a thread of
  its own, beside the gunicorn thread that runs the handler: two threads a
  connection, and twice the threads waking when many clients leave at
  once. wsproxy gives it a ``thread_class`` that starts nothing
  (:class:`_HandlerReads`) and reads in the handler thread instead:
  :meth:`Connection.wait` polls the socket together with the handler's
  :class:`Wakeup` and feeds what arrived through simple-websocket's own
  event handling (pongs, close replies, messages, as its reader thread
  would). TLS sockets (gunicorn ``--certfile``) keep the reader thread: a
  readable TLS socket need not hold a whole record, so polling it could
  block the handler.
* **Writes must not interleave.** Pongs and close replies are written
  from where simple-websocket handles events, its ``send()`` takes no
  lock and uses ``socket.send`` (partial writes). :class:`GuardedSocket` is
  put in the environ in place of the WSGI server's socket, so every write,
  ours, the broadcaster's and simple-websocket's, takes one lock and writes
  everything.
* **Every frame a client sends is paid for.** simple-websocket answers
  pings and gathers fragments in its reader thread, where wsproxy's
  message handler never sees them, and counts a text message's size in
  characters. :class:`FramePolicy` sees each frame first: a token bucket
  over every frame (data, continuation, ping, pong), a bound on fragments
  per message, and the message size limit in bytes. After a breach the
  reader passes on nothing but the peer's close reply, and the handler
  thread closes the connection (1008, or 1009 for size) with a reason.
* **permessage-deflate is wsproxy's**: simple-websocket accepts it
  whenever offered and would compress every message per connection
  (~2,000x the cost of a shared frame, ``python -m bench.framing``).
  wsproxy writes its data frames itself, compressed once for everyone
  (see :mod:`wsproxy.transport.codec`), so the handshake accepts the offer with
  :class:`BoundedDeflate` (or declines it when ``WSPROXY_COMPRESSION`` is
  off), and :attr:`Connection.deflate_bits` tells the window the client
  allowed. Incoming compressed messages are inflated at most to the
  message size limit: a small compressed "bomb" is closed with 1009
  without being inflated whole.

Written against simple-websocket 1.1, wsproto 1.2-1.3 and flask-sock 0.7
(pinned with upper bounds in ``pyproject.toml``).
"""

import base64
import binascii
import dataclasses
import errno
import functools
import os
import select
import socket
import ssl
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import simple_websocket
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

if TYPE_CHECKING:
    from wsproto import WSConnection
    from wsproto.events import Event
    from wsproto.frame_protocol import FrameDecoder, FrameProtocol

from .. import metrics
from ..errors import ClientError
from ..protocol import CloseCode

_POLL_SLICE = 0.5  # seconds; how often a blocked writer rechecks for abort
# Bytes read from a client per wake-up: a busy sender cannot keep its
# handler from its writes (the policy caps what it may send anyway).
_READ_BYTES, _READS_PER_WAKE = 16384, 4
_OPTIONS_KEY = "wsproxy.server_options"
# Where each WSGI server flask-sock supports puts the client socket.
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


class SendTimeout(OSError):
    """The peer did not accept data within the send timeout."""


class _WriteWatchdog:
    """Bounds blocking writes without a socket timeout. TLS sockets take
    no send flags, so their writes block; a timeout set on the socket
    would also bound a read that simple-websocket's reader thread starts
    meanwhile (it is read from that thread), and a client quiet for longer
    than the send timeout would then be dropped. Instead this one thread
    (``wsproxy-write-watchdog``, started on demand, gone after a quiet
    minute) shuts down the socket of a write that passes its deadline,
    which ends the blocked ``sendall``."""

    IDLE_EXIT = 60.0  # seconds without a watched write before it ends

    def __init__(self) -> None:
        # Guards _writes and _thread; the thread waits on it for the next
        # deadline or a new write.
        self._changed = threading.Condition()
        self._writes: dict[int, list[Any]] = {}  # token -> [deadline, socket, expired]
        self._tokens = iter(range(1, 1 << 62))
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        """Watch a write to ``sock`` until ``deadline``; a token for
        :meth:`release`."""
        with self._changed:
            token = next(self._tokens)
            self._writes[token] = [deadline, sock, False]
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="wsproxy-write-watchdog", daemon=True
                )
                self._thread.start()
            self._changed.notify()
            return token

    def release(self, token: int) -> bool:
        """The write is over; whether its deadline cut it short."""
        with self._changed:
            return self._writes.pop(token)[2]

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            expired: list[socket.socket] = []
            with self._changed:
                now = time.monotonic()
                pending = [w for w in self._writes.values() if not w[2]]
                if not pending and now - idle_since >= self.IDLE_EXIT:
                    self._thread = None
                    return
                for write in pending:
                    if write[0] <= now:
                        write[2] = True
                        expired.append(write[1])
                if not expired:
                    if pending:
                        idle_since = now
                    next_at = min(
                        [w[0] for w in pending] or [idle_since + self.IDLE_EXIT]
                    )
                    self._changed.wait(max(next_at - now, 0.001))
                    continue
            for sock in expired:
                try:
                    # The plain socket's shutdown: SSLSocket's own would
                    # drop its SSL object under the blocked writer.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


_watchdog = _WriteWatchdog()


def _write_all(
    sock: socket.socket,
    data: bytes | memoryview,
    deadline: float,
    nonblocking: bool,
    progress: "GuardedSocket | None" = None,
) -> None:
    """Write all of ``data`` or raise; never blocks past ``deadline``.
    ``progress`` (a GuardedSocket) counts the bytes as they go."""
    view = memoryview(data)
    if not nonblocking:
        # TLS sockets take no send flags: a blocking sendall, cut short by
        # the watchdog at the deadline (never a timeout on the socket).
        if deadline <= time.monotonic():
            raise SendTimeout(errno.ETIMEDOUT, "send timed out")
        token = _watchdog.watch(sock, deadline)
        try:
            sock.sendall(view)
        except OSError:
            if _watchdog.release(token):
                raise SendTimeout(errno.ETIMEDOUT, "send timed out") from None
            raise
        if _watchdog.release(token):
            raise SendTimeout(errno.ETIMEDOUT, "send timed out")
        metrics.BYTES_WRITTEN.add(len(view))
        if progress is not None:
            progress.bytes_written += len(view)
        return
    poller: select.poll | None = None
    try:
        while view:
            try:
                sent = sock.send(view, socket.MSG_DONTWAIT)
                view = view[sent:]
                if progress is not None:
                    progress.bytes_written += sent
                continue
            except (BlockingIOError, InterruptedError):
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SendTimeout(errno.ETIMEDOUT, "send timed out")
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            poller.poll(min(remaining, _POLL_SLICE) * 1000)
    finally:
        metrics.BYTES_WRITTEN.add(len(data) - len(view))


class GuardedSocket:
    """The socket as simple-websocket sees it: every ``send`` takes the
    connection's write lock and writes everything (``sendall`` semantics)
    within the send timeout. Reads pass straight through."""

    def __init__(self, sock: socket.socket, send_timeout: float) -> None:
        self.raw = sock
        # Serialises every write on this socket: ours, and the
        # simple-websocket reader thread's pongs and close replies. Never
        # waited for under the connection's _state_lock, only tried; never
        # taken twice by one thread, so a plain lock (docs/architecture.md,
        # "Locks").
        self.write_lock = threading.Lock()
        self.send_timeout = send_timeout
        self.nonblocking_ok = not isinstance(sock, ssl.SSLSocket)
        self.closed = False  # set under write_lock; no write after it
        # The unsent end of a frame a non-blocking write began. Whoever
        # writes next (under write_lock) must finish it first, or another
        # frame would land inside it.
        self.tail: memoryview | None = None
        # Bytes the peer's socket has taken so far (under write_lock; read
        # unlocked, as a sign that the peer still reads).
        self.bytes_written = 0

    def send(self, data: bytes) -> int:
        with self.write_lock:
            self.write_now(data)
        return len(data)

    sendall = send

    def write_now(self, data: bytes) -> None:
        """Write ``data`` (after any tail); the caller holds ``write_lock``."""
        assert self.write_lock.locked(), "write_now without write_lock"
        if self.closed:
            raise BrokenPipeError(errno.EPIPE, "connection closed")
        deadline = time.monotonic() + self.send_timeout
        if self.tail is not None:
            tail, self.tail = self.tail, None
            _write_all(self.raw, tail, deadline, self.nonblocking_ok, self)
        if data:
            _write_all(self.raw, data, deadline, self.nonblocking_ok, self)

    def try_write(self, data: bytes) -> bool:
        """One non-blocking attempt at a whole frame; the caller holds
        ``write_lock`` and has checked there is no tail. Returns False if
        part of it (kept as the tail) is still to be written."""
        assert self.write_lock.locked(), "try_write without write_lock"
        if self.closed:
            raise BrokenPipeError(errno.EPIPE, "connection closed")
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        metrics.BYTES_WRITTEN.add(sent)
        self.bytes_written += sent
        if sent < len(data):
            self.tail = memoryview(data)[sent:]
            return False
        return True

    def close(self) -> None:
        """Called when reading is done (by simple-websocket's reader thread,
        or by the handler reading itself; see Connection). The
        WSGI server owns the socket and closes it after the handler returns
        (closing it here too would make gunicorn count the connection out
        twice), so this only ends it, and under the write lock, so no write
        can be in flight on an fd that gunicorn then closes and the OS
        reuses for another connection."""
        with self.write_lock:
            self.closed = True
            self.abort()

    def abort(self) -> None:
        """Unblock every thread using this socket (reader and writers)."""
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        # recv, fileno, setblocking... are the real socket's.
        return getattr(self.raw, name)


class Wakeup:
    """The handler thread's wake-up flag: ``threading.Event``'s ``set`` /
    ``clear`` / ``is_set``, plus a file descriptor that is readable while
    it is set, so the handler can poll it together with the client's
    socket. Set from any thread (broadcaster, replay, the handler itself).

    The descriptor (an eventfd, or a pipe where there is none) is made on
    first use, so a refused request never opens one, and :meth:`close`
    ends it under the lock, so a late ``set`` from the broadcaster can
    never write into a descriptor number the OS has given to another
    connection."""

    __slots__ = ("_flag", "_fds", "_lock", "_closed", "_signaled", "owner")

    def __init__(self) -> None:
        self._flag = False
        # (read end, write end); the same fd for eventfd
        self._fds: tuple[int, int] | None = None
        # Guards _flag changes, the descriptor's life and its counter; a
        # leaf: taken under _state_lock and write_lock, takes nothing.
        self._lock = threading.Lock()
        self._closed = False
        self._signaled = False  # the descriptor has been made readable
        # The thread that waits (it looks at the flag before it polls, so
        # its own set() needs no syscall); None: any thread may wait.
        self.owner: int | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if self._flag:  # unlocked: already set stays set until cleared
            return
        if self.owner == threading.get_ident():
            self._flag = True
            return
        with self._lock:
            if self._flag or self._closed:
                return
            self._flag = True
            if self._fds is not None:
                _signal(self._fds[1])
                self._signaled = True

    def clear(self) -> None:
        with self._lock:
            if self._signaled:  # so the descriptor exists
                _drain(cast("tuple[int, int]", self._fds)[0])
                self._signaled = False
            self._flag = False

    def fileno(self) -> int:
        """The descriptor to poll (made now if need be)."""
        with self._lock:
            if self._fds is None:
                if self._closed:
                    raise ValueError("wake-up closed")
                self._fds = _wake_fds()
                if self._flag:
                    _signal(self._fds[1])
                    self._signaled = True
            return self._fds[0]

    def wait(self, timeout: float | None = None) -> bool:
        """Until set or ``timeout`` seconds; whether it is set."""
        if not self._flag:
            _poll([self.fileno()], timeout)
        return self._flag

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fds, self._fds = self._fds, None
            self._signaled = False
        for fd in set(fds or ()):
            os.close(fd)


if hasattr(os, "eventfd"):

    def _wake_fds() -> tuple[int, int]:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd

    def _signal(fd: int) -> None:
        os.eventfd_write(fd, 1)

    def _drain(fd: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass

else:  # pragma: no cover - not Linux

    def _wake_fds() -> tuple[int, int]:
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
        return r, w

    def _signal(fd: int) -> None:
        try:
            os.write(fd, b"x")
        except BlockingIOError:
            pass  # full: it is readable already

    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass


def _poll(fds: list[int], timeout: float | None) -> set[int]:
    """Wait until one of ``fds`` is readable (or hung up); those that are."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return {fd for fd, _ in poller.poll(ms)}


class _HandlerReads:
    """simple-websocket's ``thread_class`` for connections the handler
    thread reads itself: starts no thread."""

    def __init__(self, target: object) -> None:
        self.name = "wsproxy-reads-in-handler"

    def start(self) -> None:
        pass


class FramePolicy:
    """What one client may send, checked frame by frame in the reader
    thread (the only thread that uses it)."""

    MAX_FRAGMENTS = 16  # frames one message may be split into

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        max_message_bytes: int | None,
        on_breach: Callable[[], None] | None = None,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_message_bytes = max_message_bytes
        self._tokens = burst
        self._stamp = time.monotonic()
        self._fragments = 0
        self._message_bytes = 0
        self.on_breach = on_breach
        # (close code, reason) once broken; written once, by the reader.
        self.breach: tuple[int, str] | None = None

    def admit(self, event: "Event") -> bool:
        """Whether the reader may act on ``event``; after a breach only the
        peer's close reply is, so the flood costs no more writes."""
        if self.breach is not None:
            return isinstance(event, CloseConnection)
        breach = self.check(event)
        if breach is None:
            return True
        self.breach = breach
        if self.on_breach is not None:
            self.on_breach()
        return False

    def check(self, event: "Event") -> tuple[int, str] | None:
        """(close code, reason) if ``event`` breaks the policy, else None."""
        if not isinstance(event, (TextMessage, BytesMessage, Ping, Pong)):
            return None
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return (CloseCode.POLICY, f"too many frames (limit {self.rate:g}/s)")
        self._tokens -= 1
        if isinstance(event, (Ping, Pong)):
            return None
        data = event.data
        self._message_bytes += len(data.encode() if isinstance(data, str) else data)
        self._fragments += 1
        if self.max_message_bytes and self._message_bytes > self.max_message_bytes:
            return (
                CloseCode.TOO_BIG,
                f"message too big (limit {self.max_message_bytes} bytes)",
            )
        if event.message_finished:
            self._fragments = self._message_bytes = 0
        elif self._fragments >= self.MAX_FRAGMENTS:
            return (
                CloseCode.POLICY,
                f"too many fragments (limit {self.MAX_FRAGMENTS} per message)",
            )
        return None


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inbound side inflates a message to at most
    ``max_message_bytes`` (then the message is refused with 1009, unread
    beyond that): wsproto would inflate each frame whole, and a few KB of
    deflate can inflate a thousandfold."""

    def __init__(self, max_message_bytes: int | None) -> None:
        super().__init__()
        self.max_message_bytes = max_message_bytes
        self._inflated = 0  # bytes of the current message so far

    def frame_inbound_payload_data(
        self, proto: "FrameDecoder | FrameProtocol", data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        return self._bounded(self._decompressor.decompress, bytes(data))

    def frame_inbound_complete(
        self, proto: "FrameDecoder | FrameProtocol", fin: bool
    ) -> bytes | CloseReason | None:
        if fin and self._inbound_compressed and self._inbound_is_compressible:
            # What wsproto does, bounded: the tail RFC 7692 strips, then
            # whatever the decompressor still holds.
            assert self._decompressor is not None
            data = self._bounded(self._decompressor.decompress, b"\x00\x00\xff\xff")
            if isinstance(data, CloseReason):
                return data
            self._inflated = 0
            if self.client_no_context_takeover:
                self._decompressor = None
            self._inbound_compressed = None
            return data
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)

    def _bounded(
        self, decompress: Callable[..., bytes], data: bytes
    ) -> bytes | CloseReason:
        room = self.max_message_bytes - self._inflated if self.max_message_bytes else 0
        try:
            if not self.max_message_bytes:
                out = decompress(data)
            else:
                out = decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self.max_message_bytes and self._inflated > self.max_message_bytes:
            return CloseReason.MESSAGE_TOO_BIG
        return out


class _PolicedEvents:
    """The wsproto connection as the reader thread sees it: only the events
    the policy admits reach simple-websocket, and the handshake accepts
    wsproxy's permessage-deflate (or none)."""

    # After a breach, bytes still parsed while looking for the peer's close
    # reply; past that a flood is read and dropped unparsed until the
    # handler's close timeout cuts the connection.
    DRAIN_BYTES = 64 * 1024

    def __init__(
        self,
        connection: "WSConnection",
        policy: FramePolicy,
        deflate: BoundedDeflate | None,
    ) -> None:
        self._connection = connection
        self._policy = policy
        self._deflate = deflate  # a BoundedDeflate, or None: declined
        self._after_breach = 0

    def send(self, event: "Event") -> bytes:
        if isinstance(event, AcceptConnection):
            event = dataclasses.replace(
                event, extensions=[self._deflate] if self._deflate else []
            )
        return self._connection.send(event)

    def receive_data(self, data: bytes | None) -> None:
        if self._policy.breach is not None:
            self._after_breach += len(data or b"")
            if self._after_breach > self.DRAIN_BYTES:
                return
        self._connection.receive_data(data)

    def events(self) -> Iterator["Event"]:
        for event in self._connection.events():
            if self._policy.admit(event):
                yield event

    def __getattr__(self, name: str) -> Any:
        # send, receive_data, state... are the real connection's.
        return getattr(self._connection, name)


class _Server(simple_websocket.Server):
    """simple-websocket's server with a frame policy in its reader."""

    ws: Any  # the wsproto connection, as _PolicedEvents from handshake() on

    def __init__(
        self,
        environ: dict[str, Any],
        *,
        policy: FramePolicy,
        deflate: BoundedDeflate | None,
        **options: Any,
    ) -> None:
        self._policy = policy
        self.deflate = deflate
        super().__init__(environ, **options)

    def handshake(self) -> None:
        # Called by the base constructor once self.ws exists and before the
        # reader thread starts.
        self.ws = _PolicedEvents(self.ws, self._policy, self.deflate)
        super().handshake()


def check_handshake(environ: Mapping[str, Any]) -> None:
    """The handshake headers simple-websocket (or wsproto under it) would
    otherwise fail on with a 500 and a traceback after authorization: a
    400 with a reason instead."""
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION")
    if version != "13":
        raise ClientError("Sec-WebSocket-Version must be 13")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise ClientError("Sec-WebSocket-Key must be 16 bytes in base64")
    for header in _ASCII_HEADERS:
        if not environ.get("HTTP_" + header.upper().replace("-", "_"), "").isascii():
            raise ClientError(f"{header} must be ASCII")
    try:
        # As simple-websocket hands it to wsproto, which decodes it so.
        environ.get("HTTP_HOST", "").encode().decode("idna")
    except (ValueError, LookupError):  # UnicodeError, punycode's IndexError
        raise ClientError("Host is not a valid host name") from None
    _check_deflate_offers(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", ""))


# Handshake headers wsproto decodes as ASCII (a UnicodeDecodeError, so a
# 500, otherwise).
_ASCII_HEADERS = ("Connection", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol")
_WINDOW_BITS = ("client_max_window_bits", "server_max_window_bits")


def _check_deflate_offers(header: str) -> None:
    """A permessage-deflate offer's window bits, read as wsproto reads
    them (``int()`` of what follows ``=``, which would raise)."""
    for offer in header.split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if name != PerMessageDeflate.name:
            continue
        for param in params:
            bits = next((b for b in _WINDOW_BITS if param.startswith(b)), None)
            if bits is None or "=" not in param:
                continue
            try:
                int(param.split("=", 1)[1].strip())
            except ValueError:
                raise ClientError(
                    f"Sec-WebSocket-Extensions: {bits} must be an integer"
                ) from None


def local_address(environ: Mapping[str, Any]) -> str | None:
    """The address the connection arrived on (the server's side), or None."""
    sock = next((environ[k] for k in _SOCKET_KEYS if k in environ), None)
    try:
        return sock.getsockname()[0] if sock is not None else None
    except (OSError, AttributeError, IndexError):
        return None


@dataclasses.dataclass(slots=True)
class Pending:
    """What :func:`prepare` set up for one request, until flask-sock hands
    the view its server object."""

    sock: GuardedSocket
    wake: Wakeup
    environ: dict
    policy: FramePolicy
    deflate: BoundedDeflate | None


def prepare(
    environ: dict[str, Any],
    *,
    send_timeout: float,
    subprotocols: list[str] | None,
    max_message_size: int | None,
    frame_rate: float,
    frame_burst: float,
    compression: bool = True,
    read_in_handler: bool | None = None,
) -> Pending:
    """Before the handshake (a ``before_request``): put the guarded socket
    and wsproxy's own server options in ``environ``; with ``compression``
    accept a permessage-deflate offer. The handler thread reads the socket
    itself unless it is a TLS socket (``read_in_handler`` overrides that,
    for tests of both paths). Raises ClientError (500) when the WSGI server
    cannot hand its socket over."""
    key = next((k for k in _SOCKET_KEYS if k in environ), None)
    if key is None:
        raise ClientError(
            "this WSGI server cannot hand over its socket "
            "(serve with gunicorn -k gthread)",
            status=500,
        )
    guarded = GuardedSocket(environ[key], send_timeout)
    environ[key] = guarded
    deflate = BoundedDeflate(max_message_size) if compression else None
    # Set by the broadcaster and replay (outbox work) and by
    # simple-websocket's event handling (a message, the close); the
    # handler thread waits on it together with the socket.
    wake = Wakeup()
    policy = FramePolicy(
        rate=frame_rate,
        burst=frame_burst,
        max_message_bytes=max_message_size,
        on_breach=wake.set,
    )
    environ[_OPTIONS_KEY] = {
        "subprotocols": subprotocols,
        # In bytes, by the policy; simple-websocket would count characters.
        "max_message_size": None,
        "policy": policy,
        "deflate": deflate,
        "event_class": lambda: wake,
        # Heartbeats are the handler thread's (ClientConnection.run), never a second
        # pinger in the reader thread.
        "ping_interval": None,
    }
    if read_in_handler is None:
        read_in_handler = guarded.nonblocking_ok
    if read_in_handler:
        environ[_OPTIONS_KEY]["thread_class"] = _HandlerReads
    return Pending(guarded, wake, environ, policy, deflate)


def accept(environ: dict[str, Any]) -> _Server:
    """Complete the handshake of a request :func:`prepare` set up, with
    wsproxy's server options: the server object wsproxy's route hands its
    view."""
    return _Server(environ, **environ.pop(_OPTIONS_KEY))


def route(sock: Any, path: str, *, bp: Any, **options: Any) -> Any:
    """``@sock.route(path, bp=bp, **options)`` for wsproxy's own route:
    flask-sock's wrapper (the handshake, and how each WSGI server is told
    that the response was the socket), with its server built by
    :func:`accept` instead of from the app's ``SOCK_SERVER_OPTIONS``.

    flask-sock 0.7 builds ``Server(request.environ, **SOCK_SERVER_OPTIONS)``
    with ``Server`` looked up in its module's globals at each request, and
    has no per-route options. So wsproxy's wrapper alone is given globals of
    its own in which ``Server`` is :func:`accept`; the module, and every
    other Flask-Sock route of the app, keep simple-websocket's ``Server``
    and the host's options."""

    def scoped(wrapper: types.FunctionType) -> Callable[..., Any]:
        if "Server" not in wrapper.__code__.co_names:
            raise RuntimeError(
                "flask-sock's route wrapper does not build its server as "
                "wsproxy expects; unsupported flask-sock version"
            )
        ours = types.FunctionType(
            wrapper.__code__,
            {**wrapper.__globals__, "Server": _accept_ignoring_options},
            wrapper.__name__,
            wrapper.__defaults__,
            wrapper.__closure__,
        )
        return functools.update_wrapper(ours, wrapper)

    class _Blueprint:
        # What flask-sock's route() calls: bp.route(path, **kwargs)(wrapper).
        def route(
            self, rule: str, **kwargs: Any
        ) -> Callable[[types.FunctionType], Any]:
            return lambda wrapper: bp.route(rule, **kwargs)(scoped(wrapper))

    return sock.route(path, bp=_Blueprint(), **options)


def _accept_ignoring_options(environ: dict[str, Any], **_host_options: Any) -> _Server:
    # flask-sock passes the app's SOCK_SERVER_OPTIONS: the host's, not ours.
    return accept(environ)


class Connection:
    """wsproxy's view of one simple-websocket server: messages in, pings,
    close, and reading (in the handler thread, or simple-websocket's
    reader thread for TLS)."""

    def __init__(self, ws: _Server, pending: Pending) -> None:
        if _OPTIONS_KEY in pending.environ:
            # flask-sock built the server without accept(): its options
            # (and so our limits) would be the host's. Refuse to run.
            raise RuntimeError(
                "flask-sock did not use wsproxy's server "
                "options; unsupported flask-sock version"
            )
        self._ws = ws
        self.sock = pending.sock
        self.wake = pending.wake
        # Whether this (handler) thread reads the socket; else
        # simple-websocket's reader thread does (TLS).
        self._reads_here = isinstance(ws.thread, _HandlerReads)
        self._read_done = False  # reading here ended: close reply, EOF, error
        self._policy = pending.policy
        deflate = pending.deflate
        # The window our compressed frames may use, if the client offered
        # permessage-deflate (wsproto checked the offer: 9..15 bits).
        self.deflate_bits = (
            deflate.server_max_window_bits
            if deflate is not None and deflate.enabled()
            else None
        )
        # Whether frames may refer to earlier messages (the client did not
        # ask for server_no_context_takeover): shared contexts need it.
        self.deflate_takeover = (
            self.deflate_bits is not None
            and not cast(BoundedDeflate, deflate).server_no_context_takeover
        )

    @property
    def breach(self) -> tuple[int, str] | None:
        """(close code, reason) once the peer broke the frame policy."""
        return self._policy.breach

    @property
    def connected(self) -> bool:
        return self._ws.connected

    def wait(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (None: no limit) until the wake-up
        is set or, when reading here, the client sent something, which is
        then read and handled (pongs and close replies written, messages
        queued for :meth:`messages`)."""
        if not self._reads_here or self._read_done:
            self.wake.wait(timeout)
            return
        self.wake.owner = threading.get_ident()
        sock = self.sock.raw.fileno()
        if self.wake.is_set():
            timeout = 0
        if sock in _poll([sock, self.wake.fileno()], timeout):
            self._read()

    def _read(self) -> None:
        """Read what the socket holds now and handle it, as
        simple-websocket's reader thread does with each ``recv``."""
        ws = self._ws
        for _ in range(_READS_PER_WAKE):
            try:
                data = self.sock.raw.recv(_READ_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the peer is gone: nothing left to read
                self._end_reading(gone=True)
                return
            try:
                ws.ws.receive_data(data)
                ws.connected = ws._handle_events()
            except (OSError, LocalProtocolError):
                ws.connected = False
            if not ws.connected:
                self._end_reading(gone=False)
                return
            if len(data) < _READ_BYTES:
                return

    def _end_reading(self, gone: bool) -> None:
        # What simple-websocket's reader thread does when it ends: no more
        # writes, and the socket shut down, so that gunicorn's graceful
        # close after the handler does not wait for a peer that keeps its
        # end open. Not for a peer that is gone (its end is closed) and not
        # waking the handler (this is it): each syscall saved matters when
        # a thousand clients vanish at once.
        self._read_done = True
        self._ws.connected = False
        if gone:
            with self.sock.write_lock:
                self.sock.closed = True
        else:
            self.sock.close()

    def messages(self) -> Iterator[str | bytes]:
        """Pop each complete message received so far."""
        buffer = self._ws.input_buffer
        while buffer:
            yield buffer.pop(0)

    def send_ping(self) -> bool:
        """A heartbeat ping. Returns False if no pong answered the previous
        one. Raises ConnectionClosedByPeer if the peer's close frame arrived
        meanwhile."""
        ws = self._ws
        if not ws.pong_received:
            return False
        ws.pong_received = False
        try:
            data = ws.ws.send(Ping())
        except LocalProtocolError:
            raise ConnectionClosedByPeer() from None
        self.sock.send(data)
        return True

    def send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake (raises if it cannot be sent)."""
        self._ws.close(code, reason)

    def wait_reader(self, timeout: float) -> bool:
        """Wait until reading has ended (the peer's close reply arrived or
        the socket failed), reading here if this thread is the reader;
        True if it has ended."""
        if not self._reads_here:
            self._ws.thread.join(timeout)
            return not self._ws.thread.is_alive()
        deadline = time.monotonic() + timeout
        sock = self.sock.raw.fileno()
        while not self._read_done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if _poll([sock], remaining):
                self._read()
        return True

    def release(self) -> None:
        """Close the wake-up's descriptor; the connection is over."""
        self.wake.close()

    def peer_close_code(self) -> int:
        """The code of the peer's close frame; 1006 if it sent none.
        simple-websocket reports 1005 both for a close frame without a
        code and for a connection that just vanished; only the first came
        with a (possibly empty) reason."""
        if self._ws.close_message is None:
            return CloseCode.ABNORMAL
        return int(self._ws.close_reason)


class ConnectionClosedByPeer(Exception):
    """The peer's close frame arrived while we were about to write."""
