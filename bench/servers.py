"""How to start each benchmarked server, and wait until it is ready.

Every server is a separate process (tree) in its own session, started on a
free loopback port against the shared SecantusDB, logging to a file. All
three answer ``GET /readyz`` with 200 once their change stream is open; we
poll that (and the process) rather than sleeping.

``python -m bench`` runs :data:`DEFAULT` (the three servers as they ship).
The compression variants run each server with its compression set one
way; they differ from the defaults only when clients offer
permessage-deflate (``--deflate``):

- ``wsproxy-off``, ``wsproxy-independent``, ``wsproxy-shared``: wsproxy
  with ``WSPROXY_COMPRESSION`` set so (``wsproxy`` is its default);
- ``websockets-deflate``: the asyncio baseline with the library's
  per-connection compression, as ``websockets`` is by default;
  ``websockets-off`` the same server declining the offer.
"""

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from wsproxy.config import BY_NAME

from . import procs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ServerSpec:
    name: str
    argv: object  # callable(uri, namespace, port) -> list[str]
    env: dict = field(default_factory=dict)
    hello: bool = False  # the server greets each client with "hello"
    cwd: str = REPO_ROOT
    required_files: tuple = ()
    # (setting, value) this checkout's wsproxy must accept (stage 2 is newer)
    requires_setting: tuple = ()

    def missing(self):
        """What this server needs that does not exist (yet)."""
        missing = [
            f
            for f in self.required_files
            if not os.path.exists(os.path.join(self.cwd, f))
        ]
        if self.requires_setting:
            name, value = self.requires_setting
            try:
                BY_NAME[name].parse(value)
            except (KeyError, ValueError):
                missing.append(f"{name}={value} (not in this wsproxy)")
        return missing


def _python_module(module, *extra):
    def argv(uri, namespace, port):
        return [
            sys.executable,
            "-m",
            module,
            "--uri",
            uri,
            "--watch",
            namespace,
            "--port",
            str(port),
            *extra,
        ]

    return argv


def _gunicorn(uri, namespace, port):
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    return procs.exec_with_parent_death(
        [
            gunicorn,
            "-c",
            "gunicorn.conf.py",
            "-b",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "wsgi:app",
        ]
    )


_WSPROXY_ENV = {
    "WSPROXY_DEMO_WRITER": "0",
    # Resume ids are sealed: a key for this run.
    "WSPROXY_SECRET_KEYS": secrets.token_urlsafe(32),
    # 1,000 clients connect from this one address at once.
    "WSPROXY_CONNECT_RATE": "100000",
    "WSPROXY_CONNECT_BURST": "100000",
    # 1,000 clients and the mass-disconnect step's bystander (the default
    # cap is 1,000; gunicorn.conf.py's 1,100 threads leave room for both).
    "WSPROXY_MAX_CLIENTS": "1050",
    # ...all from one address, which by default may hold only half.
    "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL": "1050",
    # The tenant scenario's filters (one distinct filter per client), all
    # from that one address too.
    "WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL": "100000",
}


def _wsproxy(name, compression=None):
    env = dict(_WSPROXY_ENV)
    if compression:
        env["WSPROXY_COMPRESSION"] = compression
    return ServerSpec(
        name,
        _gunicorn,
        hello=True,
        env=env,
        required_files=("wsgi.py", "gunicorn.conf.py"),
        requires_setting=(("WSPROXY_COMPRESSION", compression) if compression else ()),
    )


SERVERS = {
    "wsproxy": _wsproxy("wsproxy"),
    "tornado": ServerSpec("tornado", _python_module("bench.baseline_tornado")),
    "websockets": ServerSpec("websockets", _python_module("bench.baseline_websockets")),
    "wsproxy-off": _wsproxy("wsproxy-off", "off"),
    "wsproxy-independent": _wsproxy("wsproxy-independent", "independent"),
    "wsproxy-shared": _wsproxy("wsproxy-shared", "shared"),
    "websockets-off": ServerSpec(
        "websockets-off",
        _python_module("bench.baseline_websockets", "--compression", "none"),
    ),
    "websockets-deflate": ServerSpec(
        "websockets-deflate",
        _python_module("bench.baseline_websockets", "--compression", "deflate"),
    ),
}
DEFAULT = ("wsproxy", "tornado", "websockets")
# --servers compression: what the compression table compares.
GROUPS = {
    "compression": (
        "wsproxy-off",
        "wsproxy-independent",
        "wsproxy-shared",
        "websockets-off",
        "websockets-deflate",
    )
}


class ServerProcess:
    """One running server; use as a context manager so it always stops."""

    def __init__(self, spec, uri, namespace, port, log_path, clients=0):
        self.spec = spec
        self.clients = clients
        self.uri = uri
        self.namespace = namespace
        self.port = port
        self.log_path = log_path
        self.proc = None
        self.stop_how = None

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self):
        env = dict(os.environ)
        env.update(self.spec.env)
        if "WSPROXY_MAX_CLIENTS" in env and self.clients + 50 > int(
            env["WSPROXY_MAX_CLIENTS"]
        ):
            # More clients than the default room (e.g. 2,000): a thread,
            # and a place, for each of them and the bystander.
            room = str(self.clients + 50)
            env.update(
                WSPROXY_MAX_CLIENTS=room,
                WSPROXY_MAX_CLIENTS_PER_PRINCIPAL=room,
                WSPROXY_THREADS=str(self.clients + 100),
            )
        # wsproxy reads its configuration from the environment; the
        # baselines from argv. Setting both is harmless.
        env["WSPROXY_MONGODB_URI"] = self.uri
        env["WSPROXY_WATCH"] = self.namespace
        env.pop("WSPROXY_BIND", None)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = procs.spawn(
                self.spec.argv(self.uri, self.namespace, self.port),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.spec.cwd,
            )
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=60.0):
        """Poll ``/readyz`` until 200; return seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.spec.name} exited with {self.proc.returncode} "
                    f"before ready:\n{self.log_tail()}"
                )
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/readyz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return time.monotonic() - t0
                last = f"HTTP {resp.status}"
            except OSError as e:
                last = repr(e)
            finally:
                conn.close()
            time.sleep(0.05)  # poll interval, not a synchronisation sleep
        raise RuntimeError(
            f"{self.spec.name} not ready after {timeout}s ({last}):\n{self.log_tail()}"
        )

    def stop(self, timeout=15.0):
        """SIGTERM the group, SIGKILL after ``timeout``; return (how, secs).

        15 s leaves room for gunicorn's graceful shutdown (wsproxy's
        graceful_timeout is 10 s) so a kill here means it overran.
        """
        t0 = time.monotonic()
        self.stop_how = procs.stop_group(self.proc, timeout=timeout)
        return self.stop_how, round(time.monotonic() - t0, 2)

    def sigterm(self, members=(), timeout=15.0):
        """SIGTERM the group now (clients may be connected); return (how,
        seconds until the server and every process in ``members`` -- its
        tree as sampled before, see :meth:`.procs.TreeMonitor.members` --
        are gone). SIGKILL after ``timeout``: how is then "killed"."""
        t0 = time.monotonic()
        procs._killpg(self.proc.pid, signal.SIGTERM)
        how = "terminated"
        while not (
            self.proc.poll() is not None and all(procs.gone(p) for p in members)
        ):
            if time.monotonic() - t0 > timeout:
                how = "killed"
                procs._killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                break
            time.sleep(0.01)  # polling for exit, not synchronisation
        seconds = time.monotonic() - t0
        procs._killpg(self.proc.pid, signal.SIGKILL)  # stragglers, if any
        self.stop_how = how
        return how, round(seconds, 3)

    def ready_json(self, timeout=2.0):
        """``/readyz``'s JSON body (wsproxy's has ``"clients"``), or None
        (no answer, or not JSON: the baselines answer ``ok``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", "/readyz")
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            return None
        finally:
            conn.close()

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def log_offset(self):
        """Current size of the log: a mark to split problems by phase."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_problems(self, split=None, limit=3, disconnect=None):
        """Error-like log lines before and after byte offset ``split``.

        Returns ``{"run": (count, first few), "shutdown": (count, ...)}``:
        errors while measuring are the server's; after ``split`` the clients
        are closing and the server is stopping. With ``disconnect`` (an
        offset after ``split``) the lines between the two are the
        mass-disconnect step's, ``"disconnect"``, and shutdown starts there.
        """
        keys = (
            "Traceback",
            "ERROR",
            "Error",
            "CRITICAL",
            "WORKER TIMEOUT",
            "Exception",
            "exception",
        )
        out = {}
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        split = len(data) if split is None else split
        phases = [("run", data[:split]), ("shutdown", data[split:])]
        if disconnect is not None:
            phases[1:] = [
                ("disconnect", data[split:disconnect]),
                ("shutdown", data[disconnect:]),
            ]
        for phase, chunk in phases:
            hits = [
                ln.rstrip()
                for ln in chunk.decode(errors="replace").splitlines()
                if any(k in ln for k in keys)
            ]
            out[phase] = (len(hits), hits[:limit])
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
