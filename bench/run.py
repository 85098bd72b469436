"""One measured run: a fresh server, M clients, a writer, raw numbers.

Sequence (each step bounded by a timeout):
drop the collection -> start the server, poll /readyz -> sample idle RSS
and threads -> connect M clients (hello included for wsproxy) -> sample RSS
and threads -> writer: warm-up, then MEASURE (CPU sample) and the measured
writes (at the rate, or ``--burst N`` back to back) -> clients wait for the
last seq (at most ``drain`` s) -> CPU sample -> [``--mass-disconnect``:
the step of :mod:`.disconnect`, which SIGKILLs the clients] ->
[``--sigterm``: with M clients connected (a fresh pool after a mass
disconnect), SIGTERM the server and time until its whole tree is gone] ->
stop everything.
"""

import os
import sys
import time

from pymongo import MongoClient

from demo.embedded import free_port

from . import procs
from .clientpool import ClientPool
from .disconnect import mass_disconnect
from .reconnect import reconnect_rounds
from .servers import ServerProcess


def _drop(uri, namespace):
    # A fresh collection per run; no server is watching at this point.
    db, coll = namespace.split(".", 1)
    with MongoClient(uri, serverSelectionTimeoutMS=10000) as c:
        c[db].drop_collection(coll)


def run_one(spec, clients, opts, db_uri, namespace, workdir):
    """Run ``spec`` with ``clients`` connections; return (raw dict, latencies).

    Never raises for a failing server: the error goes into ``raw["error"]``
    so a sweep goes on. Everything started here is stopped here.
    """
    raw = {
        "server": spec.name,
        "clients": clients,
        "rate": opts.rate,
        "duration": opts.duration,
        "deflate": opts.deflate,
        "mix": opts.mix,
        "burst": opts.burst,
        "tenants": opts.tenants,
        "error": None,
    }
    lat = None
    # Clients stay connected after their RESULT for the steps that need
    # them; then close() or kill() ends them.
    hold = opts.mass_disconnect or opts.sigterm
    os.makedirs(workdir, exist_ok=True)
    warm = int(round(opts.rate * opts.warmup))
    drain = opts.drain
    if drain is None:  # a burst queues M*N messages at once
        drain = 30 + clients * opts.burst / 1e4 if opts.burst else 10.0
    server = ServerProcess(
        spec,
        db_uri,
        namespace,
        free_port(),
        os.path.join(workdir, "server.log"),
        clients,
    )
    monitor = pool = writer = log_split = disconnect_split = None
    try:
        _drop(db_uri, namespace)
        # Anything older (a server replaying history) is not this run's.
        not_before = time.time()
        server.start()
        raw["ready_s"] = server.wait_ready(opts.ready_timeout)
        monitor = procs.TreeMonitor(server.proc.pid).start()
        raw["rss_idle"] = monitor.rss()
        raw["threads_idle"] = monitor.threads()

        def connect(subdir=""):
            p = ClientPool(
                server.url,
                clients,
                opts.procs,
                os.path.join(workdir, subdir),
                hello=spec.hello,
                first_seq=warm,
                not_before=not_before,
                connect_timeout=opts.connect_timeout,
                client=opts.client,
                deflate=opts.deflate,
                hold=hold,
                tenants=opts.tenants,
            )
            os.makedirs(p.workdir, exist_ok=True)
            return p.start()

        if clients:
            pool = connect()
            t0 = time.monotonic()
            raw["connect"] = pool.wait_connected()
            raw["connect_s"] = time.monotonic() - t0
        raw["rss_connected"] = monitor.rss()
        raw["threads_connected"] = monitor.threads()

        writer = procs.LineChild(
            "writer",
            [
                sys.executable,
                "-m",
                "bench.writer",
                "--uri",
                db_uri,
                "--ns",
                namespace,
                "--rate",
                str(opts.rate),
                "--duration",
                str(opts.duration),
                "--warmup-count",
                str(warm),
                "--mix",
                opts.mix,
            ]
            + (["--burst", str(opts.burst)] if opts.burst else [])
            + (["--tenants", str(clients)] if opts.tenants else []),
            os.path.join(workdir, "writer.log"),
        )
        # Slow inserts, bounded (a burst: at least 1,000 documents a second).
        budget = opts.warmup + 60 + (opts.burst / 1000 if opts.burst else opts.duration)
        deadline = time.monotonic() + budget
        raw["t_first"] = writer.expect("MEASURE", deadline)
        cpu0 = monitor.cpu_seconds()
        raw["writer"] = writer.expect("DONE", deadline)
        if pool:
            raw["recv"], lat = pool.finish(raw["writer"]["last_seq"], drain)
        raw["cpu_s"] = monitor.cpu_seconds() - cpu0
        log_split = server.log_offset()
        raw["rss_peak"] = max(monitor.peak_rss, monitor.rss())
        raw["server_alive_after"] = server.alive()
        if pool and opts.mass_disconnect:
            try:
                raw["disconnect"] = mass_disconnect(
                    server,
                    pool,
                    monitor,
                    opts,
                    db_uri,
                    namespace,
                    workdir,
                    seq_base=raw["writer"]["last_seq"] + 1,
                )
            except (RuntimeError, OSError, ValueError, KeyError) as e:
                # The measured phase still stands; the step reports why not.
                raw["disconnect_error"] = f"{type(e).__name__}: {e}"
            pool.close()  # killed, or (after a failure) closing politely
            pool = None
            if opts.sigterm:  # the killed clients' places, for SIGTERM
                pool = connect("clients-sigterm")
                raw["sigterm_connect"] = pool.wait_connected()
        if opts.reconnect_after and clients:
            # Every client comes back at once, after a mass disconnect
            # (see bench.reconnect); the measured pool leaves first.
            if pool:
                pool.close()
                pool = None
            raw["reconnect"] = reconnect_rounds(
                server.url,
                clients,
                opts.procs,
                opts.reconnect_after,
                os.path.join(workdir, "reconnect"),
                opts.connect_timeout,
                hello=spec.hello,
                cpu=monitor.cpu_seconds,
            )
            if opts.sigterm:
                pool = connect("clients-sigterm")
                raw["sigterm_connect"] = pool.wait_connected()
        disconnect_split = server.log_offset()
        if pool and opts.sigterm:
            raw["sigterm_clients"] = (raw.get("sigterm_connect") or raw["connect"])[
                "ok"
            ]
            raw["sigterm"] = server.sigterm(monitor.members())
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one failing run must not stop the sweep
        raw["error"] = f"{type(e).__name__}: {e}"
    finally:
        if monitor:
            monitor.stop()
        if pool:
            pool.close()
        if writer:
            procs.stop_group(writer.proc, timeout=5)
        raw["stop"] = server.stop()
        raw["log_problems"] = server.log_problems(
            log_split, disconnect=disconnect_split if opts.mass_disconnect else None
        )
        raw["server_log"] = server.log_path
    return raw, lat
