"""A deploy behind one address: M clients, one worker restarted.

Every client of a worker comes back at once through a proxy, so all of
them have one address (docs/serving.md's nginx block without ``ProxyFix``),
with the id of the last event they got. ``python -m bench.storm`` starts
SecantusDB, a writer (``--rate`` numbered inserts per second) and one
gunicorn worker (``wsgi:app``, wsproxy's **default** limits), connects M
clients (:mod:`.stormclient`, ``--procs`` processes, the bundled clients'
reconnect policy), lets them stay connected a while, then restarts the
worker (``--how sigterm``: each client gets 1001; ``kill``: SIGKILL to
the whole server) and starts a new one on the same port, or reloads it
(``hup``: gunicorn starts a new worker and SIGTERMs the old one, its
listening socket open throughout). Reported per
case: each client's time from the restart to its next ``hello`` (p50 /
p99 / max), 429 refusals after the restart, how the clients resumed
(history or catch-up), and events lost or repeated.

Cases, in the same run (``--cases``): ``before`` (clients send no ticket;
``WSPROXY_HISTORY_PREFILL=0``: as before reconnect tickets and the
history read back), ``tickets`` (tickets only), ``prefill`` (history
read back only), ``after`` (both, the defaults).
"""

import argparse
import collections
import os
import signal
import socket
import sys
import tempfile
import time

from demo.embedded import EmbeddedMongo, free_port

from . import procs
from .report import percentile
from .servers import SERVERS, ServerProcess

CASES = {
    "before": (False, "0"),
    "tickets": (True, "0"),
    "prefill": (False, None),
    "after": (True, None),
}


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _server(mongo, namespace, port, prefill, log):
    spec = SERVERS["wsproxy"]
    env = {
        k: v
        for k, v in spec.env.items()
        if not k.startswith(("WSPROXY_CONNECT_", "WSPROXY_MAX_CLIENTS"))
    }  # the defaults
    if prefill is not None:
        env["WSPROXY_HISTORY_PREFILL"] = prefill
    spec = type(spec)(spec.name, spec.argv, env=env, hello=True)
    server = ServerProcess(spec, mongo.uri, namespace, port, log)
    return server.start()


def one(mongo, case, opts, workdir):
    tickets, prefill = CASES[case]
    namespace = f"bench.storm_{case}"
    port = free_port()
    log = os.path.join(workdir, f"{case}.log")
    server = _server(mongo, namespace, port, prefill, log)
    writer = children = None
    try:
        server.wait_ready()
        base, extra = divmod(opts.clients, opts.procs)
        children = [
            procs.LineChild(
                f"storm {i}",
                [
                    sys.executable,
                    "-m",
                    "bench.stormclient",
                    "--url",
                    server.url,
                    "--count",
                    str(base + (i < extra)),
                    "--backoff-max",
                    str(opts.backoff_max),
                ]
                + ([] if tickets else ["--no-tickets"]),
                os.path.join(workdir, "clients.log"),
            )
            for i in range(opts.procs)
        ]
        for c in children:  # new clients: the connect budget lets them in
            c.expect("READY", time.monotonic() + 120)
        writer = procs.LineChild(
            "writer",
            [
                sys.executable,
                "-m",
                "bench.writer",
                "--uri",
                mongo.uri,
                "--ns",
                namespace,
                "--rate",
                str(opts.rate),
                "--duration",
                str(opts.before + opts.after),
            ],
            os.path.join(workdir, "writer.log"),
        )
        writer.expect("MEASURE", time.monotonic() + 60)
        time.sleep(opts.before)  # the schedule: connected a while
        mark = time.time()
        for c in children:
            c.send(f"MARK {mark!r}")
        if opts.how == "hup":
            # gunicorn's reload: new workers, the old ones SIGTERMed, and
            # the master's listening socket open throughout.
            os.kill(server.proc.pid, signal.SIGHUP)
            down = listening = 0.0
            ready = None
        else:
            if opts.how == "sigterm":
                server.stop()
            else:
                procs._killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(10)
            while _listening(port):
                time.sleep(0.01)  # polling for the port to be free
            down = time.time() - mark
            server = _server(mongo, namespace, port, prefill, log)
            while not _listening(port):
                time.sleep(0.01)  # polling for the new server to listen
            listening = time.time() - mark
            server.wait_ready()
            ready = time.time() - mark
        done = writer.expect("DONE", time.monotonic() + opts.after + 60)
        deadline = time.time() + 30
        for c in children:
            c.send(f"FINISH {done['last_seq']} {deadline!r}")
        back, refused, lost, dups = [], 0, 0, 0
        resumes, failures = collections.Counter(), collections.Counter()
        by_second = collections.Counter()
        for c in children:
            r = c.expect("RESULT", time.monotonic() + 60)
            back += r["back_ms"]
            refused += r["refused"]
            lost += r["lost"]
            dups += r["dups"]
            resumes.update(r["resumes"])
            failures.update(r["failures"])
            by_second.update(r["failures_by_second"])
    finally:
        for c in children or ():
            procs.stop_group(c.proc, timeout=5)
        if writer:
            procs.stop_group(writer.proc, timeout=5)
        server.stop()
    missing = sum(1 for b in back if b is None)
    back = sorted(b for b in back if b is not None)
    return {
        "case": case,
        "how": opts.how,
        "clients": opts.clients,
        "backoff_max": opts.backoff_max,
        "down_s": down,
        "listening_s": listening,
        "ready_s": ready,
        "p50_ms": percentile(back, 50),
        "p99_ms": percentile(back, 99),
        "max_ms": back[-1] if back else None,
        "not_back": missing,
        "refused": refused,
        "resumes": dict(resumes),
        "lost": lost,
        "dups": dups,
        "failures": dict(failures),
        "failures_by_second": dict(sorted(by_second.items())),
    }


def line(r):
    def f(v):
        return "-" if v is None else f"{v:,.0f}"

    ready = "-" if r["ready_s"] is None else f"{r['ready_s']:.2f} s"
    return (
        f"{r['case']:>8} {r['how']:>7} backoff<={r['backoff_max']:g}s: "
        f"back p50 {f(r['p50_ms'])} ms, "
        f"p99 {f(r['p99_ms'])} ms, max {f(r['max_ms'])} ms "
        f"(old server gone after {r['down_s']:.2f} s, listening after "
        f"{r['listening_s']:.2f} s, ready after {ready}); "
        f"not back {r['not_back']}, 429 {r['refused']}, "
        f"resumed {r['resumes']}, lost {r['lost']}, dup {r['dups']}, "
        f"other failed attempts {r['failures']} "
        f"(by second after the restart: {r['failures_by_second']})"
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.storm", description=__doc__.splitlines()[0]
    )
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument(
        "--how",
        choices=("sigterm", "kill", "hup"),
        default="sigterm",
        help="sigterm: stop the server, then start a new one; kill: SIGKILL "
        "it, then start a new one; hup: gunicorn's reload (new workers, the "
        "listening socket kept)",
    )
    p.add_argument(
        "--cases",
        default="before,after",
        help="comma-separated, from " + ",".join(CASES),
    )
    p.add_argument(
        "--before",
        type=float,
        default=12.0,
        help="seconds connected before the restart (default 12: "
        "a ticket earns a reconnect every 5 s, and the "
        "bundled clients start their backoff afresh after "
        "a connection up 10 s, as in a deploy)",
    )
    p.add_argument(
        "--after",
        type=float,
        default=15.0,
        help="seconds of writing after the restart (about)",
    )
    p.add_argument(
        "--backoff-max",
        type=float,
        default=30.0,
        help="the clients' cap on their backoff after a failed "
        "attempt (the bundled clients': 30 s, so a client "
        "that failed 3 times while no server listened "
        "waits 2-4 s more); 0.25 times the server alone",
    )
    p.add_argument("--repeat", type=int, default=1)
    opts = p.parse_args(argv)
    procs.raise_nofile()
    workdir = tempfile.mkdtemp(prefix="wsproxy-storm-")
    mongo = EmbeddedMongo(log_path=os.path.join(workdir, "secantus.log"))
    mongo.start()
    try:
        for _ in range(opts.repeat):
            for case in opts.cases.split(","):
                print(line(one(mongo, case, opts, workdir)), flush=True)
    finally:
        mongo.stop()
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
