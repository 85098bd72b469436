"""Worker memory after snapshot clients: glibc's malloc arenas.

    python -m bench.arenas [--clients 20] [--at-once 4] [--docs 2000]
                           [--rounds 3]

glibc's malloc gives each thread that allocates while another does an
arena of its own (up to 8 per core) and keeps the memory freed in it. A
snapshot (``snapshot=1``) reads and encodes its documents on a thread of
its own, so a worker that served a few snapshots at once stays that much
larger. ``wsproxy.gunicorn`` limits the arenas to 2 in each worker
(``post_fork``: ``mallopt(M_ARENA_MAX, 2)``).

One SecantusDB, ``--docs`` documents of about 900 bytes of JSON
(:func:`.wire.order_document`), and one gunicorn worker serving the
repository's ``wsgi:app``, twice: with ``-c python:wsproxy.gunicorn`` as
is, and with a config that is the same but for a ``post_fork`` that
leaves glibc's default. In each, ``--rounds`` times, ``--clients``
clients connect at once and each takes a snapshot of the collection,
``--at-once`` of them read at a time (``WSPROXY_MAX_SNAPSHOTS``, 4 by
default as in wsproxy; ``WSPROXY_CLOSE_TIMEOUT`` is raised so that the
others wait their turn instead of getting 1013), then leave. The
worker's RSS (psutil) is read before the first round and after each
(once every client is gone); the peak is sampled every 50 ms.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil
from pymongo import MongoClient
from websockets.sync.client import connect

from demo.embedded import EmbeddedMongo, free_port

from .wire import order_document

ROOT = pathlib.Path(__file__).resolve().parent.parent
DB, COLL = "bench_arenas", "docs"
MiB = 1024 * 1024

# The packaged config, but glibc's default arenas.
_DEFAULT_ARENAS = """from wsproxy.gunicorn import *  # noqa: F401,F403


def post_fork(server, worker):
    pass
"""


def _say(msg):
    print(msg, file=sys.stderr, flush=True)


def seed(uri, count):
    with MongoClient(uri, serverSelectionTimeoutMS=10000) as client:
        coll = client[DB][COLL]
        coll.drop()
        for start in range(0, count, 1000):
            coll.insert_many(
                [order_document(i) for i in range(start, min(count, start + 1000))]
            )


class Worker:
    """One gunicorn master with one worker, serving wsgi:app."""

    def __init__(self, config, uri, at_once, log):
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WSPROXY_", "MALLOC_"))
        }
        env.update(
            {
                "WSPROXY_MONGODB_URI": uri,
                "WSPROXY_WATCH": f"{DB}.{COLL}",
                "WSPROXY_SECRET_KEYS": "bench-arenas-secret-key",
                "WSPROXY_MAX_SNAPSHOTS": str(at_once),
                "WSPROXY_CLOSE_TIMEOUT": "300",
                "WSPROXY_CONNECT_RATE": "10000",
                "WSPROXY_CONNECT_BURST": "10000",
            }
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                config,
                "-b",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start; see {log.name}")
            time.sleep(0.1)
        (self.worker,) = [
            p
            for p in psutil.Process(self.process.pid).children()
            if "gunicorn" in " ".join(p.cmdline())
        ]

    def _ready(self):
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/readyz", timeout=2
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def rss(self):
        return self.worker.memory_info().rss

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()


def take_snapshot(url, start, errors):
    try:
        start.wait(30)
        with connect(url, max_size=None, compression=None, open_timeout=30) as ws:
            while True:
                message = ws.recv(timeout=120)
                if message.startswith('{"type": "snapshot_end"'):
                    return
    except Exception as exc:  # noqa: BLE001 - counted and reported
        errors.append(repr(exc))


def one_round(worker, clients):
    """``clients`` snapshots at once; returns the peak RSS meanwhile."""
    url = f"ws://127.0.0.1:{worker.port}/ws?snapshot=1&ns={DB}.{COLL}"
    start = threading.Barrier(clients)
    errors = []
    threads = [
        threading.Thread(
            target=take_snapshot, name=f"snapshot-{i}", args=(url, start, errors)
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    peak = worker.rss()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, worker.rss())
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} snapshots failed: {errors[:3]}")
    return peak


def settled_rss(worker):
    """RSS once the worker counts no client (their threads are done)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.port}/readyz", timeout=5
        ) as r:
            if json.load(r)["clients"] == 0:
                break
        time.sleep(0.1)
    time.sleep(0.5)
    return worker.rss()


def measure(name, config, uri, opts, log):
    worker = Worker(config, uri, opts.at_once, log)
    try:
        idle = settled_rss(worker)
        rows = []
        for n in range(1, opts.rounds + 1):
            peak = one_round(worker, opts.clients)
            after = settled_rss(worker)
            rows.append((n, peak, after))
            _say(
                f"{name}: round {n}: peak {peak / MiB:.1f} MiB, "
                f"after {after / MiB:.1f} MiB"
            )
        return idle, rows
    finally:
        worker.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench.arenas", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--at-once",
        type=int,
        default=4,
        help="WSPROXY_MAX_SNAPSHOTS (default: 4, wsproxy's)",
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="wsproxy-arenas-")
    baseline = pathlib.Path(workdir, "default_arenas.py")
    baseline.write_text(_DEFAULT_ARENAS)
    mongo = EmbeddedMongo(os.path.join(workdir, "db"))
    mongo.start()
    try:
        seed(mongo.uri, opts.docs)
        results = {}
        with open(os.path.join(workdir, "gunicorn.log"), "w") as log:
            for name, config in (
                ("glibc default", str(baseline)),
                ("wsproxy.gunicorn (2 arenas)", "python:wsproxy.gunicorn"),
            ):
                results[name] = measure(name, config, mongo.uri, opts, log)
    finally:
        mongo.stop()
    print(
        f"\n{opts.clients} clients x {opts.docs}-document snapshots, "
        f"{opts.at_once} read at a time, {opts.rounds} rounds; worker RSS "
        "in MiB\n"
    )
    print("| arenas | idle | peak | after round 1 | after last | growth | per client |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (idle, rows) in results.items():
        peak = max(row[1] for row in rows)
        first, last = rows[0][2], rows[-1][2]
        growth = last - idle
        print(
            f"| {name} | {idle / MiB:.1f} | {peak / MiB:.1f} | "
            f"{first / MiB:.1f} | {last / MiB:.1f} | {growth / MiB:+.1f} | "
            f"{growth / opts.clients / MiB:+.2f} |"
        )
    shutil.rmtree(workdir)  # kept when it failed: the error names the log


if __name__ == "__main__":
    main()
