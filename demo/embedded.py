"""The embedded MongoDB-compatible server used by the demo and the tests.

SecantusDB (``secantusd-py``) runs as a *subprocess*, never imported: it is a
development dependency (GPL-2.0, pinned in requirements.txt), not part of the
installed package, and production points ``WSPROXY_MONGODB_URI`` at a real
replica set or Atlas cluster.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

REPLICA_SET = "secantus"


class EmbeddedServerError(RuntimeError):
    """The embedded MongoDB-compatible server could not be started."""


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _executable():
    # Prefer the script installed beside this interpreter (a venv), then PATH.
    beside = os.path.join(os.path.dirname(sys.executable), "secantusd-py")
    if os.path.exists(beside):
        return beside
    found = shutil.which("secantusd-py")
    if not found:
        raise EmbeddedServerError(
            "secantusd-py (the embedded demo server) is not installed: "
            "pip install -r requirements.txt (python3 dev.py demo does), or "
            "set WSPROXY_MONGODB_URI to your replica set or Atlas URI"
        )
    return found


class EmbeddedMongo:
    """One SecantusDB process on a loopback port.

    ``storage_path=None`` uses a fresh temporary directory, removed by
    :meth:`stop`; a given path is kept, so the server can be killed and
    restarted on the same data (its oplog survives ``kill -9``).
    """

    def __init__(
        self,
        storage_path=None,
        host="127.0.0.1",
        port=None,
        log_path=None,
        durable=False,
    ):
        self.host = host
        # Sync every commit to disk, so acknowledged writes survive kill -9
        # (as journaled writes do on MongoDB); slower, so off by default.
        self.durable = durable
        self.port = port or free_port(host)
        self._own_dir = storage_path is None
        self.storage_path = storage_path or tempfile.mkdtemp(prefix="wsproxy-db-")
        self.log_path = log_path or os.path.join(
            tempfile.gettempdir(), f"wsproxy-secantus-{self.port}.log"
        )
        self.process = None

    @property
    def uri(self):
        return f"mongodb://{self.host}:{self.port}/?replicaSet={REPLICA_SET}"

    def start(self, timeout=30.0):
        """Start the server and return once it answers ``ping``."""
        cmd = [
            _executable(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            self.storage_path,
            "--log-level",
            "WARNING",
        ]
        if self.durable:
            cmd.append("--sync-on-commit")
        with open(self.log_path, "ab") as logfile:
            # A new session: Ctrl-C on the terminal goes to gunicorn, which
            # then stops this server in order, not to both at once.
            self.process = subprocess.Popen(
                cmd,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        log.info(
            "embedded SecantusDB pid %s at %s (data %s)",
            self.process.pid,
            self.uri,
            self.storage_path,
        )
        return self

    def _check_running(self):
        if self.process.poll() is not None:
            raise EmbeddedServerError(
                f"secantusd-py exited with {self.process.returncode}; "
                f"see {self.log_path}"
            )

    def _wait_ready(self, timeout):
        # Readiness is the server answering ping, polled; never a fixed sleep.
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        deadline = time.monotonic() + timeout
        # First until it listens, every 20 ms: a MongoClient that found
        # nobody there looks again only after its 500 ms heartbeat.
        while True:
            self._check_running()
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # the ping below says so
                time.sleep(0.02)
        client = MongoClient(
            self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            while True:
                self._check_running()
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError as exc:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedServerError(
                            f"secantusd-py did not answer within {timeout}s; "
                            f"see {self.log_path}"
                        ) from exc
        finally:
            client.close()

    def kill(self):
        """``kill -9``: no clean shutdown, the data directory stays."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self, timeout=30.0):
        """Start again on the same port and data after :meth:`kill`."""
        self.kill()
        return self.start(timeout)

    def stop(self, timeout=10.0):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self._wait_stopped(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_dir:
            shutil.rmtree(self.storage_path, ignore_errors=True)

    def _wait_stopped(self, timeout):
        """Wait for the exit SIGTERM began. SecantusDB's stop closes its
        listening socket and then waits up to 2 s for its accept thread,
        which closing the socket does not wake on Linux (a thread blocked
        in accept() keeps it listening): a connection does. So: connect
        every 50 ms until it has exited (a connection made before its stop
        began is closed with the others)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.process.wait(0.05)
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
