"""Snapshot benchmark: do full-size snapshots delay live events to other
clients, and what does a snapshot client's reconnect cost?

``python -m bench.snapshot --help``. One SecantusDB and one wsproxy
worker under gunicorn, started as ``python -m bench`` starts them,
watching the ``bench`` database. Before the server starts, ``bench.docs``
is seeded with ``--docs`` documents and ``bench.small`` with 2,000, all
about 900 bytes of JSON (:func:`.wire.order_document`). Then:

1. Reconnect cost: with nothing else going on, one snapshot client
   (:mod:`.snapclient`) takes ``--repeats`` snapshots of each collection,
   one after the other; time from connect to ``snapshot_end``, and bytes.
2. ``--clients`` live (not snapshot) clients in client processes
   (:mod:`.loadclient`) and a writer updating distinct documents of
   ``bench.docs`` at ``--rate`` (:mod:`.writer` ``--update``):
   warm-up, then phase A (normal traffic, ``--duration`` s), then an
   unmeasured ramp (``--ramp`` s) in which ``--snapshotters`` snapshot
   connections (their own process) start, then phase B (the same traffic
   while they take full-size snapshots of ``bench.docs`` back to back,
   ``--duration`` s).

The same connections, server and writer serve both phases; latencies are
assigned to a phase by the writer's seq (its MARK lines). At the marks
the CPU of the server and of SecantusDB is sampled, and wsproxy's
``wsproxy_event_lag_seconds`` histogram (an event's wallTime to the start
of its fan-out) is read from ``/metrics``. With the writer's
acknowledgement times and a plain change stream on the same database in
its own process (:mod:`.streamprobe`: the database's delivery latency,
without wsproxy) they say where a slower phase's time goes. The
snapshot clients stop when the writer is done; then the live clients drain.
"""

import argparse
import http.client
import os
import re
import shutil
import signal
import sys
import tempfile
import time

from pymongo import MongoClient

from demo.embedded import EmbeddedMongo, free_port

from . import procs, snapreport
from .clientpool import ClientPool
from .driver import interrupt
from .servers import SERVERS, ServerProcess
from .wire import order_document

DB = "bench"
BIG = "bench.docs"
SMALL = "bench.small"
SMALL_DOCS = 2000
MAX_DOCS = 10000  # WSPROXY_SNAPSHOT_MAX_DOCS's default: a full snapshot
_LAG_BUCKET = re.compile(
    r'wsproxy_event_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)'
)


def parse(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.snapshot",
        description="Live-event latency without and with full-size "
        "snapshots being taken, and the cost of a snapshot "
        "client's reconnect.",
    )
    p.add_argument(
        "--docs",
        type=int,
        default=MAX_DOCS,
        help=f"documents in bench.docs (default and most "
        f"{MAX_DOCS}, the server's snapshot limit)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=100,
        help="live (not snapshot) clients (default 100)",
    )
    p.add_argument(
        "--rate", type=float, default=50.0, help="updates per second (default 50)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of each phase (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of unmeasured writing first (default 2)",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=1.0,
        help="unmeasured seconds between the phases, while the "
        "snapshot clients start (default 1)",
    )
    p.add_argument(
        "--snapshotters",
        type=int,
        default=4,
        help="connections taking snapshots back to back in "
        "phase B (default 4 = WSPROXY_MAX_SNAPSHOTS)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="snapshots per collection for the reconnect cost (default 5)",
    )
    p.add_argument(
        "--procs", type=int, default=4, help="live client processes (default 4)"
    )
    p.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="max seconds after the last write for every live "
        "client to get it (default 10)",
    )
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the work directory with all logs"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3,000 documents, 10 clients, 2 "
        "snapshotters, 3 s phases, 2 repeats",
    )
    opts = p.parse_args(argv)
    if opts.quick:
        opts.docs, opts.clients, opts.snapshotters = 3000, 10, 2
        opts.duration, opts.warmup, opts.ramp, opts.repeats = 3.0, 0.5, 0.5, 2
    if not 1 <= opts.docs <= MAX_DOCS:
        p.error(f"--docs must be 1..{MAX_DOCS} (the server's snapshot limit)")
    if (
        min(
            opts.rate,
            opts.duration,
            opts.ramp,
            opts.clients,
            opts.snapshotters,
            opts.repeats,
            opts.procs,
        )
        <= 0
    ):
        p.error("rates, durations and counts must be positive")
    return opts


def _say(msg):
    print(msg, file=sys.stderr, flush=True)


def seed(uri, ns, count):
    """``count`` order documents, ``_id`` 0..count-1, in a fresh collection."""
    db, coll = ns.split(".", 1)
    with MongoClient(uri, serverSelectionTimeoutMS=10000) as client:
        coll = client[db][coll]
        coll.drop()
        for start in range(0, count, 1000):
            coll.insert_many(
                [order_document(i) for i in range(start, min(count, start + 1000))]
            )


def snap_child(url, ns, concurrency, snapshots, workdir, name):
    """A :mod:`.snapclient` process, waiting for GO."""
    return procs.LineChild(
        name,
        [
            sys.executable,
            "-m",
            "bench.snapclient",
            "--url",
            f"{url}?snapshot=1&ns={ns}",
            "--concurrency",
            str(concurrency),
            "--snapshots",
            str(snapshots),
        ],
        os.path.join(workdir, f"{name}.log"),
    )


def end_child(child):
    """EOF on its stdin, a few seconds to close its connections, then stop."""
    try:
        child.proc.stdin.close()
    except OSError:
        pass
    procs.stop_group(child.proc, timeout=8)


def reconnect_cost(url, ns, docs, repeats, workdir):
    """``repeats`` snapshots of ``ns``, one at a time, nothing else running."""
    child = snap_child(url, ns, 1, repeats, workdir, f"reconnect-{docs}")
    try:
        deadline = time.monotonic() + 60 + 120 * repeats
        child.expect("READY", deadline)
        child.send("GO")
        result = child.expect("RESULT", deadline)
    finally:
        end_child(child)
    return {"ns": ns, "docs": docs, **result}


def lag_buckets(port):
    """wsproxy's event lag histogram, ``{le: cumulative count}``; {} if
    /metrics does not answer (the run goes on without it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    except OSError:
        return {}
    finally:
        conn.close()
    return {m[1]: float(m[2]) for m in _LAG_BUCKET.finditer(body)}


class Sampler:
    """What the marks sample: server CPU, SecantusDB CPU, the lag histogram."""

    def __init__(self, server, db_pid):
        self.server = server
        self.monitors = [
            procs.TreeMonitor(server.proc.pid).start(),
            procs.TreeMonitor(db_pid).start(),
        ]
        self.samples = {}

    def __call__(self, name):
        server, db = (m.cpu_seconds() for m in self.monitors)
        self.samples[name] = {
            "t": time.time(),
            "cpu_s": server,
            "db_cpu_s": db,
            "lag": lag_buckets(self.server.port),
        }

    def stop(self):
        for m in self.monitors:
            m.stop()


def measure(opts, db_uri, db_pid, workdir):
    """The whole run against a seeded SecantusDB; a raw dict (and the live
    clients' latencies and their seqs). Never raises: errors go into
    ``raw["error"]``; everything started here is stopped here."""
    warm = round(opts.rate * opts.warmup)
    n_phase = max(1, round(opts.rate * opts.duration))
    a_end = warm + n_phase
    b_start = a_end + max(1, round(opts.rate * opts.ramp))
    raw = {
        "error": None,
        "options": vars(opts),
        "ns": BIG,
        "phase_seqs": {"A": [warm, a_end], "B": [b_start, b_start + n_phase]},
    }
    lat = seqs = None
    server = ServerProcess(
        SERVERS["wsproxy"], db_uri, DB, free_port(), os.path.join(workdir, "server.log")
    )
    sampler = pool = snappers = probe = writer = None
    log_split = None
    try:
        not_before = time.time()  # older documents are not this run's
        server.start()
        raw["ready_s"] = server.wait_ready(opts.ready_timeout)
        sampler = Sampler(server, db_pid)

        _say("reconnect cost: one snapshot client, no other load ...")
        raw["reconnect"] = [
            reconnect_cost(server.url, ns, n, opts.repeats, workdir)
            for ns, n in ((SMALL, SMALL_DOCS), (BIG, opts.docs))
        ]

        _say(f"connecting {opts.clients} live clients ...")
        pool = ClientPool(
            server.url,
            opts.clients,
            opts.procs,
            workdir,
            hello=True,
            first_seq=warm,
            not_before=not_before,
            connect_timeout=opts.connect_timeout,
            seqs=True,
        ).start()
        raw["connect"] = pool.wait_connected()
        # Started (imported) now, so GO starts snapshots at once.
        snappers = snap_child(
            server.url, BIG, opts.snapshotters, 0, workdir, "snapshotters"
        )
        snappers.expect("READY", time.monotonic() + 60)
        probe = procs.LineChild(
            "probe",
            [sys.executable, "-m", "bench.streamprobe", "--uri", db_uri, "--db", DB],
            os.path.join(workdir, "probe.log"),
        )
        probe.expect("READY", time.monotonic() + 60)

        writer = procs.LineChild(
            "writer",
            [
                sys.executable,
                "-m",
                "bench.writer",
                "--uri",
                db_uri,
                "--ns",
                BIG,
                "--rate",
                str(opts.rate),
                "--duration",
                str((b_start + n_phase - warm) / opts.rate),
                "--warmup-count",
                str(warm),
                "--update",
                str(opts.docs),
                "--mark",
                str(a_end),
                "--mark",
                str(b_start),
            ],
            os.path.join(workdir, "writer.log"),
        )
        deadline = time.monotonic() + opts.warmup + opts.ramp + 2 * opts.duration + 60
        _say(f"phase A: {opts.duration:g} s of {opts.rate:g} updates/s ...")
        raw["t_A"] = writer.expect("MEASURE", deadline)
        sampler("A0")
        raw["t_ramp"] = writer.expect("MARK", deadline)["t"]
        snappers.send("GO")
        sampler("A1")
        _say(
            f"phase B: the same, snapshot clients ({opts.snapshotters}) "
            f"taking {opts.docs:,}-document snapshots back to back ..."
        )
        raw["t_B"] = writer.expect("MARK", deadline)["t"]
        sampler("B0")
        raw["writer"] = writer.expect("DONE", deadline)
        snappers.send("STOP")
        raw["t_stop"] = time.time()
        sampler("B1")
        raw["samples"] = sampler.samples
        raw["snapshots"] = snappers.expect("RESULT", time.monotonic() + 30)
        raw["recv"], lat = pool.finish(raw["writer"]["last_seq"], opts.drain)
        seqs = pool.seqs
        probe.send("STOP")  # it has had the drain time too
        raw["probe"] = probe.expect("RESULT", time.monotonic() + 30)
        log_split = server.log_offset()
        raw["server_alive_after"] = server.alive()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - reported; everything still stops
        raw["error"] = f"{type(e).__name__}: {e}"
    finally:
        if sampler:
            sampler.stop()
        if snappers:
            end_child(snappers)
        if pool:
            pool.close()
        if probe:
            end_child(probe)
        if writer:
            procs.stop_group(writer.proc, timeout=5)
        raw["stop"] = server.stop()
        raw["log_problems"] = server.log_problems(log_split)
        raw["server_log"] = server.log_path
        raw["server_snapshots"] = snapreport.server_snapshot_lines(server.log_path)
    return raw, lat, seqs


def main(argv=None):
    opts = parse(argv)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    procs.raise_nofile()
    workdir = tempfile.mkdtemp(prefix="wsproxy-bench-snapshot-")
    mongo = EmbeddedMongo(log_path=os.path.join(workdir, "secantus.log"))
    guard = None
    result = None
    try:
        mongo.start()
        # EmbeddedMongo starts it; the guard kills it should we be SIGKILLed.
        guard = procs.guard(mongo.process.pid)
        _say(f"SecantusDB at {mongo.uri}; logs in {workdir}")
        _say(f"seeding {BIG} ({opts.docs:,}) and {SMALL} ({SMALL_DOCS:,}) ...")
        seed(mongo.uri, BIG, opts.docs)
        seed(mongo.uri, SMALL, SMALL_DOCS)
        result = snapreport.summarize(
            *measure(opts, mongo.uri, mongo.process.pid, workdir)
        )
    except KeyboardInterrupt:
        _say("interrupted: cleaning up")
        return 130
    finally:
        mongo.stop()
        if guard:
            guard.stdin.close()  # SecantusDB is gone: the guard just exits
            procs.stop_group(guard, timeout=5)
        if result is None or result["error"] or opts.keep_logs:
            _say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(snapreport.table(result))
    if opts.json:
        snapreport.write_json(opts.json, result)
        _say(f"results written to {opts.json}")
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
