"""Reconnecting after a mass disconnect: how long each handshake waits.

When a load balancer restarts or the network blips, every client of a
worker vanishes at once and comes back moments later. This step measures
what those clients wait, on a running server:

1. M clients (``--procs`` processes of :mod:`.handshakes`) open their
   connections at the same moment; each one's time from that moment to
   its ``hello`` is recorded: the *first* round (against a fresh worker
   when run alone);
2. every client process is SIGKILLed at once (the kernel drops all M
   sockets, no close frames), and after ``delay`` seconds M new clients
   open their connections at the same moment, timed the same way; this
   repeats for each delay of ``--reconnect-after``.

Each round reports handshake p50 / p99 / max in ms and how many could not
complete within ``--connect-timeout`` (one attempt each, never retried).

``python -m bench.reconnect`` runs it alone against one fresh wsproxy
worker (its own SecantusDB): ``--clients 1000 --threads 1200 --max-clients
1100 --reconnect-after 8,0,1,3 --repeat 3``.
"""

import argparse
import os
import signal
import sys
import tempfile
import time

from . import procs
from .report import percentile


def _start(url, total, nprocs, workdir, timeout, hello, tag):
    nprocs = max(1, min(nprocs, total))
    base, extra = divmod(total, nprocs)
    children = []
    log = os.path.join(workdir, "handshakes.log")
    for i in range(nprocs):
        count = base + (1 if i < extra else 0)
        argv = [
            sys.executable,
            "-m",
            "bench.handshakes",
            "--url",
            url,
            "--count",
            str(count),
            "--timeout",
            str(timeout),
        ]
        children.append(
            procs.LineChild(f"{tag} {i}", argv + (["--hello"] if hello else []), log)
        )
    return children


def _round(url, total, nprocs, workdir, timeout, hello, tag, cpu=None):
    """Open ``total`` connections at once; return (children, summary)."""
    children = _start(url, total, nprocs, workdir, timeout, hello, tag)
    deadline = time.monotonic() + 60
    for c in children:
        c.expect("READY", deadline)
    # Every process is waiting: they all start at this moment.
    go = time.time() + 0.2
    for c in children:
        c.send(f"GO {go!r}")
    cpu0 = cpu() if cpu else None
    deadline = time.monotonic() + 0.2 + timeout + 30
    ms, failed, errors = [], 0, {}
    for c in children:
        r = c.expect("DONE", deadline)
        ms += r["ms"]
        failed += r["failed"]
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    summary = summarize(tag, ms, failed, errors)
    summary["cpu_s"] = cpu() - cpu0 if cpu else None
    return children, summary


def summarize(tag, ms, failed, errors):
    ms = sorted(ms)
    return {
        "round": tag,
        "ok": len(ms),
        "failed": failed,
        "errors": errors,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else None,
    }


def _kill(children):
    """SIGKILL every client process at once: the kernel drops all their
    sockets together, with no close frames."""
    for c in children:
        procs._killpg(c.proc.pid, signal.SIGKILL)
    for c in children:
        procs.stop_group(c.proc, timeout=5)


def reconnect_rounds(
    url, clients, nprocs, delays, workdir, timeout=30.0, hello=True, cpu=None
):
    """The first round (M clients at once), then one round ``delay`` s after killing the
    previous round's clients, for each delay. Returns the summaries;
    ``cpu()`` (the server's CPU seconds) gives each round's ``cpu_s``,
    from its start to its last handshake."""
    os.makedirs(workdir, exist_ok=True)
    rounds = []
    children, summary = _round(
        url, clients, nprocs, workdir, timeout, hello, "first", cpu
    )
    rounds.append(summary)
    try:
        for delay in delays:
            _kill(children)
            children = []
            time.sleep(delay)  # the schedule: clients come back after delay s
            children, summary = _round(
                url, clients, nprocs, workdir, timeout, hello, f"after {delay:g}s", cpu
            )
            rounds.append(summary)
    finally:
        _kill(children)
    return rounds


def line(r):
    def f(v):
        return "-" if v is None else f"{v:,.0f}"

    return (
        f"{r['round']:>12}: {r['ok']:5d} in, {r['failed']:4d} failed; "
        f"handshake p50 {f(r['p50_ms'])} ms, p99 {f(r['p99_ms'])} ms, "
        f"max {f(r['max_ms'])} ms"
        + ("" if r.get("cpu_s") is None else f", server cpu {r['cpu_s']:.2f} s")
        + (f"  {r['errors']}" if r["errors"] else "")
    )


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    from demo.embedded import EmbeddedMongo, free_port

    from .servers import SERVERS, ServerProcess

    p = argparse.ArgumentParser(
        prog="python -m bench.reconnect", description=__doc__.splitlines()[0]
    )
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1200)
    p.add_argument("--max-clients", type=int, default=1100)
    p.add_argument("--reconnect-after", type=_floats, default=[8.0, 0.0, 1.0, 3.0])
    p.add_argument(
        "--repeat", type=int, default=1, help="servers started one after the other"
    )
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument(
        "--env",
        action="append",
        default=[],
        help="NAME=VALUE for the server (repeatable)",
    )
    p.add_argument("--keep-logs", action="store_true")
    opts = p.parse_args(argv)
    procs.raise_nofile()
    workdir = tempfile.mkdtemp(prefix="wsproxy-reconnect-")
    mongo = EmbeddedMongo(log_path=os.path.join(workdir, "secantus.log"))
    mongo.start()
    spec = SERVERS["wsproxy"]
    spec.env = dict(
        spec.env,
        WSPROXY_THREADS=str(opts.threads),
        WSPROXY_MAX_CLIENTS=str(opts.max_clients),
        WSPROXY_MAX_CLIENTS_PER_PRINCIPAL=str(opts.max_clients),
        **dict(e.split("=", 1) for e in opts.env),
    )
    everything = []
    try:
        for n in range(opts.repeat):
            run = os.path.join(workdir, f"run-{n}")
            os.makedirs(run)
            server = ServerProcess(
                spec,
                mongo.uri,
                "bench.events",
                free_port(),
                os.path.join(run, "server.log"),
            )
            with server:
                server.wait_ready()
                monitor = procs.TreeMonitor(server.proc.pid).start()
                try:
                    rounds = reconnect_rounds(
                        server.url,
                        opts.clients,
                        opts.procs,
                        opts.reconnect_after,
                        run,
                        opts.connect_timeout,
                        cpu=monitor.cpu_seconds,
                    )
                finally:
                    monitor.stop()
            print(f"server {n + 1}:", flush=True)
            for r in rounds:
                print(line(r), flush=True)
            everything += rounds
    finally:
        mongo.stop()
    print(f"logs in {workdir}" if opts.keep_logs else "", flush=True)
    if not opts.keep_logs:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
