"""Shared test tools: timeouts, the gunicorn process, WebSocket clients."""

import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every timeout in the suite is multiplied by this, for slow machines.
SCALE = float(os.environ.get("WSPROXY_TEST_TIMEOUT_SCALE", "1"))


# The sealing key every test server shares (see Gunicorn).
TEST_SECRET_KEYS = "wsproxy-tests-only-secret-key"


def sealer_for_tests():
    """The Sealer the test servers use, to make ids as they would."""
    from wsproxy.access.sealing import Sealer

    return Sealer([TEST_SECRET_KEYS])


def scaled(seconds):
    return seconds * SCALE


def wait_for(predicate, timeout, what, interval=0.02):
    """Poll ``predicate`` until true; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {scaled(timeout)}s waiting for {what}"
            )
        time.sleep(interval)


def http_get(url, timeout=5.0, headers=None):
    """(status, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=scaled(timeout)) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text, name, labels=""):
    """One sample's value from Prometheus text, or None if absent."""
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else None


def scrape(server):
    """``GET /metrics`` of a running server, as text."""
    status, body = http_get(server.url + "/metrics")
    assert status == 200
    return body.decode()


def stable_port(host="127.0.0.1"):
    """A free port below the kernel's ephemeral range, for a server a test
    kills and starts again on the same port: meanwhile no outgoing
    connection and no bind to port 0 (of tests running beside it, under
    xdist) can be given it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    pick = random.SystemRandom()
    for _ in range(100):
        port = pick.randrange(max(1024, low - 12000), max(1025, low))
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # taken: another
            return port
    raise AssertionError(f"no free port below {low}")


def server_env(uri, db, coll, selection_ms=2000, **extra):
    """The environment most server tests start gunicorn with: one
    collection, and short timeouts so an outage surfaces in seconds."""
    env = {
        "WSPROXY_MONGODB_URI": f"{uri}&serverSelectionTimeoutMS={selection_ms}",
        "WSPROXY_WATCH": f"{db}.{coll}",
        "WSPROXY_MAX_AWAIT_MS": "100",
        "WSPROXY_BACKOFF_INITIAL": "0.1",
        "WSPROXY_BACKOFF_MAX": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Gunicorn:
    """The real ``gunicorn -c gunicorn.conf.py wsgi:app`` on port 0.

    ``config`` None runs gunicorn without a config file; ``python`` and
    ``cwd`` serve an app from another environment and folder."""

    def __init__(
        self,
        env=None,
        workers=1,
        args=(),
        app="wsgi:app",
        config="gunicorn.conf.py",
        python=sys.executable,
        cwd=ROOT,
        port=0,
    ):
        self.env = dict(os.environ)
        self.env.pop("WSPROXY_MONGODB_URI", None)
        self.env.pop("WSPROXY_EMBEDDED", None)
        # One key for every server a test starts, so ids from one resume on
        # another (several workers or processes, a restart).
        self.env["WSPROXY_SECRET_KEYS"] = TEST_SECRET_KEYS
        # Tests connect from one address far faster than browsers do; the
        # tests of the connection throttle set their own limits.
        self.env["WSPROXY_CONNECT_RATE"] = "10000"
        self.env["WSPROXY_CONNECT_BURST"] = "10000"
        # ...and hold many connections from it (the tests of a principal's
        # share unset this, for the default).
        self.env["WSPROXY_MAX_CLIENTS_PER_PRINCIPAL"] = "100000"
        # Tests of catch-ups restart servers and expect a history that
        # starts empty; the tests of reading history back set their own.
        self.env["WSPROXY_HISTORY_PREFILL"] = "0"
        for key, value in (env or {}).items():  # None: leave it unset
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.workers = workers
        self.args = list(args)
        self.app = app
        self.config = config
        self.python = python
        self.cwd = cwd
        self.log = tempfile.NamedTemporaryFile(
            prefix="wsproxy-gunicorn-", suffix=".log", delete=False
        )
        self.process = None
        self.port = None
        # 0: any free port; a port another server had: its replacement.
        self.bind_port = port

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, query=""):
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?{query}" if query else "")

    def output(self):
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def start(self, ready=True, timeout=30, listen=True):
        """Start; wait until it listens (``listen``) and until /readyz is
        200 (``ready``). ``listen=False`` for a server expected to fail."""
        config = ["-c", self.config] if self.config else []
        cmd = [
            self.python,
            "-m",
            "gunicorn",
            *config,
            "-b",
            f"127.0.0.1:{self.bind_port}",
            "--workers",
            str(self.workers),
            *self.args,
            self.app,
        ]
        self.process = subprocess.Popen(
            cmd,
            cwd=self.cwd,
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not listen:
            return self
        match = wait_for(
            lambda: (
                self._exited()
                or re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.output())
            ),
            timeout,
            "gunicorn to listen",
        )
        self.port = int(match.group(1))
        if ready:
            self.wait_ready(timeout)
        return self

    def _exited(self):
        if self.process.poll() is not None:
            raise AssertionError(
                f"gunicorn exited with {self.process.returncode}:\n"
                + self.output()[-3000:]
            )
        return None

    def wait_ready(self, timeout=30):
        wait_for(lambda: self._exited() or self._ready(), timeout, "/readyz to be 200")

    def _ready(self):
        try:
            return http_get(self.url + "/readyz")[0] == 200
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            # A worker still starting on a loaded machine may answer late
            # (or not yet): not ready, asked again until the timeout.
            return False

    def wait_every_worker_ready(self, timeout=30):
        """Until each worker (by pid) has answered /readyz 200: its watcher
        is up, so it sees every write made after this."""
        wait_for(
            lambda: len(self.worker_pids()) == self.workers,
            timeout,
            f"{self.workers} workers",
        )
        ready = set()

        def all_ready():
            status, body = self.readyz()
            if status == 200:
                ready.add(body["pid"])
            return ready == set(self.worker_pids())

        wait_for(all_ready, timeout, "every worker's watcher to be ready")

    def terminate_expecting_1001(self, clients, within):
        """SIGTERM; every client must get 1001 (resume elsewhere) and the
        server must exit cleanly, all well inside ``within`` seconds."""
        started = time.monotonic()
        self.process.terminate()
        for client in clients:
            code, reason = client.wait_closed(timeout=10)
            assert code == 1001 and "resume" in reason
        assert self.process.wait(scaled(15)) == 0
        took = time.monotonic() - started
        assert took < scaled(within), (
            f"stopped after {took:.1f}s:\n{self.output()[-4000:]}"
        )
        assert "Traceback" not in self.output()

    def readyz(self):
        status, body = http_get(self.url + "/readyz")
        return status, json.loads(body)

    def worker_pids(self):
        import psutil

        return [
            c.pid
            for c in psutil.Process(self.process.pid).children()
            if "gunicorn" in " ".join(c.cmdline())
        ]

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.log.close()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(
                "gunicorn did not stop within "
                f"{scaled(timeout)}s:\n{self.output()[-3000:]}"
            ) from None


class WSClient:
    """A test WebSocket client that speaks JSON (the ``websockets`` library,
    so the server is checked against an implementation other than its own).
    """

    def __init__(self, url, **kw):
        kw.setdefault("compression", None)
        kw.setdefault("open_timeout", scaled(10))
        kw.setdefault("max_size", None)
        # A client more than max_queue (16) messages behind stops reading,
        # so its close() waits for a close frame it does not read: all of
        # close_timeout (10 s by default), a pause and no check.
        kw.setdefault("close_timeout", scaled(2))
        # legacy=True: connect without a `with` block (websockets >= 17.1).
        self.ws = connect(url, legacy=True, **kw)

    def recv(self, timeout=5.0):
        try:
            data = self.ws.recv(timeout=scaled(timeout))
        except TimeoutError:
            raise AssertionError(f"no message within {scaled(timeout)}s") from None
        return json.loads(data)

    def recv_type(self, kind, timeout=5.0):
        """Next message of ``kind``, skipping others (status, hello)."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            remaining = max(deadline - time.monotonic(), 0.001)
            message = self.recv(remaining / SCALE)
            if message["type"] == kind:
                return message

    def changes(self, count, timeout=5.0):
        return [self.recv_type("change", timeout) for _ in range(count)]

    def wait_closed(self, timeout=5.0):
        """Read until the server closes; returns (code, reason)."""
        deadline = time.monotonic() + scaled(timeout)
        try:
            while True:
                self.ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise AssertionError("the server did not close the connection") from None
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return 1006, ""
            return exc.rcvd.code, exc.rcvd.reason

    def drop(self):
        """Vanish without a close frame, like a browser losing its network."""
        sock = self.ws.socket
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def close(self):
        self.ws.close()


def refused(url, **kw):
    """Connect expecting a refusal before the upgrade: (status, reason)."""
    from websockets.exceptions import InvalidStatus

    try:
        WSClient(url, **kw).close()
    except InvalidStatus as exc:
        response = exc.response
        return response.status_code, json.loads(response.body)["error"]
    raise AssertionError(f"{url} was not refused")


def raw_upgrade(port, headers, path="/ws"):
    """A WebSocket upgrade request written by hand, for headers no client
    library will send: (status, JSON reason or None)."""
    base = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    base.update(headers)
    lines = [f"GET {path} HTTP/1.1"] + [
        f"{k}: {v}" for k, v in base.items() if v is not None
    ]
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw.settimeout(scaled(5))
        data = b""
        while b"\r\n\r\n" not in data:
            data += raw.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        length = re.search(rb"(?i)content-length: (\d+)", head)
        while length and len(body) < int(length.group(1)):
            body += raw.recv(65536)
    try:
        return status, json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):  # not JSON, or not a refusal
        return status, None


def open_connection(
    environ,
    *,
    send_timeout,
    subprotocols=None,
    max_message_size=None,
    frame_rate=1000,
    frame_burst=1000,
    compression=True,
    read_in_handler=None,
):
    """A wsproxy connection accepted outside Flask, on the server end of a
    socket pair: the path of a request to wsproxy's route (prepare, then
    the handshake with wsproxy's options) without flask-sock's wrapper."""
    from wsproxy.transport import websocket

    pending = websocket.prepare(
        environ,
        send_timeout=send_timeout,
        subprotocols=subprotocols,
        max_message_size=max_message_size,
        frame_rate=frame_rate,
        frame_burst=frame_burst,
        compression=compression,
        read_in_handler=read_in_handler,
    )
    return websocket.Connection(websocket.accept(environ), pending)


class RawPeer:
    """The browser's end of a WebSocket, on a plain socket, driven by
    wsproto. It reads only when told to, so it can play a tab that stopped
    reading, and sees every frame (pongs, the close) as it arrives.

    ``RawPeer.connect(port)`` upgrades over TCP; ``RawPeer(sock,
    send_request=False)`` is for a server built directly on the other end
    of a socket pair, handed ``peer.key`` in its environ."""

    def __init__(self, sock, *, host="127.0.0.1", send_request=True, target="/ws"):
        self.sock = sock
        self.conn = WSConnection(ConnectionType.CLIENT)
        request = self.conn.send(Request(host=host, target=target))
        self.key = next(
            line.split(":", 1)[1].strip()
            for line in request.decode().split("\r\n")
            if line.lower().startswith("sec-websocket-key")
        )
        self.accepted = False
        self.received = []  # text messages and ("pong", payload), in order
        self.messages = []  # the text messages, parsed
        self._partial = []
        self.closed = None  # (code, reason) of the server's close frame
        self.eof = False
        if send_request:
            sock.sendall(request)

    @classmethod
    def connect(cls, port, *, rcvbuf=None, timeout=10.0, target="/ws"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                # Before connect, so the advertised window stays small.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(scaled(timeout))
            sock.connect(("127.0.0.1", port))
            peer = cls(sock, host=f"127.0.0.1:{port}", target=target)
            peer.read_until(lambda: peer.accepted, timeout, "the handshake")
        except BaseException:
            sock.close()
            raise
        return peer

    def feed(self, data):
        if not data:
            self.eof = True
            return
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectConnection):
                raise AssertionError(f"upgrade refused: {event.status_code}")
            elif isinstance(event, TextMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    text = "".join(self._partial)
                    self._partial = []
                    self.received.append(text)
                    self.messages.append(json.loads(text))
            elif isinstance(event, CloseConnection):
                self.closed = (event.code, event.reason)
                if self.conn.state is ConnectionState.REMOTE_CLOSING:
                    # The server began the close; a reply to ours needs none.
                    self._send(self.conn.send(event.response()))
            elif isinstance(event, Pong):
                self.received.append(("pong", event.payload))
            elif isinstance(event, Ping) and self.conn.state is ConnectionState.OPEN:
                self._send(self.conn.send(event.response()))

    def _send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the server may already be gone; reading tells the rest

    def read_until(self, predicate, timeout, what):
        """Blocking reads until ``predicate()``; fails after ``timeout``."""
        deadline = time.monotonic() + scaled(timeout)
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(
                    f"{'EOF' if self.eof else 'timed out'} waiting for {what}"
                )
            self.sock.settimeout(remaining)
            try:
                self.feed(self.sock.recv(1 << 16))
            except TimeoutError:
                pass

    def take(self, count, timeout=5.0):
        """The next ``count`` received items (texts, pongs), removed."""
        self.read_until(
            lambda: len(self.received) >= count, timeout, f"{count} messages"
        )
        taken, self.received = self.received[:count], self.received[count:]
        return taken

    def wait_close(self, timeout=10.0):
        self.read_until(lambda: self.closed is not None, timeout, "a close")
        return self.closed

    def ping(self, payloads):
        """Many pings in one write (the server may not read meanwhile, so
        separate blocking writes could wait on each other)."""
        self.sock.sendall(b"".join(self.conn.send(Ping(p)) for p in payloads))

    def send_close(self, code=1000):
        self._send(self.conn.send(CloseConnection(code)))

    def close(self):
        self.sock.close()


class TcpProxy:
    """A loopback TCP forwarder the tests can cut, hold and re-point, to
    play a flaky network or a load balancer in front of several servers."""

    def __init__(self, target_port):
        import threading

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = False  # refuse (close at once) new connections
        # Guards _pairs, the live (client, upstream) socket pairs.
        self._lock = threading.Lock()
        self._pairs = []
        self._threads = []
        self._closed = False
        self._accepting = threading.Thread(
            target=self._accept, name="test-proxy-accept"
        )
        self._accepting.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._closed:
                conn.close()
                return
            if self.held:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._pairs.append((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                thread = threading.Thread(
                    target=self._pump, args=(a, b), name="test-proxy-pump", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()  # each socket is the source of exactly one pump

    def cut(self):
        """Drop every live connection at once, without a close frame."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._closed = True
        self.cut()
        try:
            socket.create_connection(("127.0.0.1", self.port)).close()
        except OSError:
            pass
        self._accepting.join(scaled(5))
        self.listener.close()
        for thread in self._threads:
            thread.join(scaled(5))
