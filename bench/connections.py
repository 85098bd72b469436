"""Two ways for a load client to hold one WebSocket connection.

Both use the ``websockets`` library on asyncio, accept any message size
and send no pings. By default they offer no compression (so no server
compresses); with ``deflate=True`` they offer permessage-deflate as a
browser does (``permessage-deflate; client_max_window_bits``: context
takeover both ways, any window) and inflate what they receive.

- ``lean`` (default): websockets' sans-I/O ``ClientProtocol`` (handshake,
  frame parsing, pong and close replies) driven straight from an
  ``asyncio.Protocol``; each text frame goes to a callback as bytes. About
  an order of magnitude less CPU per message than the high-level API,
  which matters: at 1,000 clients x 50 events/s the clients must take
  50,000 messages/s on the same 2 cores as the server.
- ``asyncio``: ``websockets.asyncio.client.connect`` and an ``async for``
  loop per connection -- the library's ordinary API, for comparison.

Each ``open_*`` returns a connection with ``first_text`` (a future: the
first text message, for wsproxy's hello), ``closed`` (a future set when the
connection ends) and ``close()`` (bounded). The lean connection also counts
``wire_bytes``, everything read from its socket (handshake, frame headers,
compressed payloads); the high-level API hides its transport, so there it
is None.
"""

import asyncio
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


def browser_offer():
    """The extensions a browser offers: the factory's defaults are
    Chrome's and Firefox's ``permessage-deflate; client_max_window_bits``."""
    return [ClientPerMessageDeflateFactory()]


class LeanConnection(asyncio.Protocol):
    def __init__(self, url, on_message, deflate=False):
        loop = asyncio.get_running_loop()
        # extensions=None: permessage-deflate is not offered.
        self.ws = ClientProtocol(
            parse_uri(url),
            max_size=None,
            extensions=browser_offer() if deflate else None,
        )
        self.on_message = on_message
        self.wire_bytes = 0
        self.opened = loop.create_future()
        self.first_text = loop.create_future()
        self.closed = loop.create_future()
        self.transport = None
        self._parts = None  # fragments of a message in progress

    def connection_made(self, transport):
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def _flush(self):
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()  # b"" means: half-close now

    def data_received(self, data):
        self.wire_bytes += len(data)
        ws = self.ws
        ws.receive_data(data)
        for ev in ws.events_received():
            if type(ev) is Frame:
                if ev.opcode in _DATA:
                    self._frame(ev)
            elif not self.opened.done():  # the handshake response
                if ws.handshake_exc is not None:
                    self.opened.set_exception(ws.handshake_exc)
                else:
                    self.opened.set_result(True)
        self._flush()  # pongs, close replies

    def _frame(self, frame):
        if not frame.fin or self._parts is not None:
            self._parts = (self._parts or []) + [bytes(frame.data)]
            if not frame.fin:
                return
            data, self._parts = b"".join(self._parts), None
        else:
            data = frame.data
        if not self.first_text.done():
            self.first_text.set_result(bytes(data))
        self.on_message(data)

    def connection_lost(self, exc):
        self.ws.receive_eof()
        for f in (self.opened, self.first_text):
            if not f.done():
                f.set_exception(ConnectionError("connection lost"))
                f.exception()  # retrieved: no "never retrieved" warnings
        if not self.closed.done():
            self.closed.set_result(True)

    async def close(self, timeout=2.0):
        if self.closed.done():
            return
        try:
            self.ws.send_close(1000)
            self._flush()
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except Exception:  # noqa: BLE001 - best effort; the transport is aborted below
            pass
        finally:
            if not self.closed.done():
                self.transport.abort()

    def abort(self):
        if self.transport:
            self.transport.abort()


async def open_lean(url, on_message, timeout, deflate=False):
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    transport, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: LeanConnection(url, on_message, deflate), parts.hostname, parts.port
        ),
        timeout,
    )
    try:
        await asyncio.wait_for(asyncio.shield(conn.opened), timeout)
    except BaseException:
        transport.abort()
        raise
    return conn


class HighLevelConnection:
    """websockets' asyncio client, read by one task per connection."""

    wire_bytes = None  # not counted: the library owns the transport

    def __init__(self, ws, on_message):
        loop = asyncio.get_running_loop()
        self.ws = ws
        self.on_message = on_message
        self.first_text = loop.create_future()
        self.closed = loop.create_future()
        self._task = asyncio.create_task(self._read())

    async def _read(self):
        on_message, first = self.on_message, self.first_text
        try:
            async for msg in self.ws:
                if not first.done():
                    first.set_result(msg.encode() if isinstance(msg, str) else msg)
                on_message(msg)
        except ConnectionClosed:
            pass
        finally:
            if not first.done():
                first.set_exception(ConnectionError("connection lost"))
                first.exception()
            if not self.closed.done():
                self.closed.set_result(True)

    async def close(self, timeout=2.0):
        try:
            await asyncio.wait_for(self.ws.close(), timeout)
        except Exception:  # noqa: BLE001 - best effort: any failure aborts instead
            self.abort()
        self._task.cancel()

    def abort(self):
        self.ws.transport.abort()


async def open_asyncio(url, on_message, timeout, deflate=False):
    # compression=None and our own offer: the library's "deflate" offers
    # smaller windows and memory than a browser does.
    ws = await connect(
        url,
        compression=None,
        max_size=None,
        proxy=None,
        extensions=browser_offer() if deflate else None,
        ping_interval=None,
        close_timeout=2,
        open_timeout=timeout,
    )
    return HighLevelConnection(ws, on_message)


OPENERS = {"lean": open_lean, "asyncio": open_asyncio}
