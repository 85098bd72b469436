"""The sweep: one SecantusDB, every (client count, server) run, the report.

Cleans up on every exit path: each run stops what it started (see
:mod:`.run`), SecantusDB is stopped in ``finally``, and SIGTERM is turned
into KeyboardInterrupt so it takes the same path as Ctrl-C. Children also
die with the driver via PR_SET_PDEATHSIG (see :func:`.procs.die_with_parent`).
"""

import os
import shutil
import signal
import sys
import tempfile
import time

from demo.embedded import EmbeddedMongo

from . import procs, report
from .reconnect import line as reconnect_line
from .run import run_one
from .servers import SERVERS

NAMESPACE = "bench.events"


_interrupted = False


def interrupt(signum, frame):
    # The first Ctrl-C/SIGTERM stops the sweep; later ones are ignored so
    # they cannot cut the cleanup in the finally blocks short.
    global _interrupted
    if not _interrupted:
        _interrupted = True
        raise KeyboardInterrupt


def _say(msg):
    print(msg, file=sys.stderr, flush=True)


def _line(r):
    if r["error"]:
        return f"ERROR {r['error'].splitlines()[0]}"
    line = (
        f"{_fmt(r['msgs_per_s'], '{:.0f}')} msgs/s, "
        f"p99 {_fmt(r['lat_p99_ms'], '{:.1f}')} ms, lost {r['lost']}, "
        f"cpu {_fmt(r['cpu_s'], '{:.2f}')} s"
    )
    if r.get("disconnect_error"):
        line += f", mass disconnect ERROR {r['disconnect_error']}"
    elif "stall_ms" in r:
        line += f", stall {_fmt(r['stall_ms'], '{:.0f}')} ms"
    if r.get("sigterm_s") is not None:
        line += f", sigterm {r['sigterm_s']:.2f} s"
    return line


def _fmt(v, f):
    return "-" if v is None else f.format(v)


def main(opts):
    signal.signal(signal.SIGTERM, interrupt)
    # Installed even when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, interrupt)
    nofile = procs.raise_nofile()
    if max(opts.clients) + 64 > nofile:
        _say(f"warning: RLIMIT_NOFILE {nofile} is low for {max(opts.clients)} clients")
    servers = []
    for name in opts.servers:
        missing = SERVERS[name].missing()
        if missing:
            _say(f"skipping {name}: missing {', '.join(missing)}")
        else:
            servers.append(SERVERS[name])
    if not servers:
        _say("no server to benchmark")
        return 2

    workdir = tempfile.mkdtemp(prefix="wsproxy-bench-")
    results = []
    mongo = EmbeddedMongo(log_path=os.path.join(workdir, "secantus.log"))
    interrupted = False
    guard = None
    try:
        mongo.start()
        # EmbeddedMongo starts it; the guard kills it should we be SIGKILLed.
        guard = procs.guard(mongo.process.pid)
        _say(f"SecantusDB at {mongo.uri}; logs in {workdir}")
        for m in opts.clients:
            for spec in servers:
                rundir = os.path.join(workdir, f"{spec.name}-{m}")
                load = (
                    f"burst={opts.burst}"
                    if opts.burst
                    else f"rate={opts.rate}/s duration={opts.duration}s"
                )
                _say(f"run {spec.name} M={m} {load} ...")
                t0 = time.monotonic()
                raw, lat = run_one(spec, m, opts, mongo.uri, NAMESPACE, rundir)
                r = report.summarize(raw, lat)
                results.append(r)
                _say(f"  {_line(r)}  ({time.monotonic() - t0:.1f}s)")
    except KeyboardInterrupt:
        interrupted = True
        _say("interrupted: cleaning up")
    finally:
        mongo.stop()
        if guard:
            guard.stdin.close()  # SecantusDB is gone: the guard just exits
            procs.stop_group(guard, timeout=5)

    if results:
        report.add_off_ratios(results)
        report.add_asyncio_ratios(results)
        print()
        if opts.burst:
            print(
                f"burst: {opts.burst} documents inserted back to back "
                "(msgs/s: delivery rate from the first write to the last "
                "message received)"
            )
        if opts.tenants:
            print(
                "tenants: client k of M follows tenant k alone and each "
                "write is one tenant's, so every event is for exactly one "
                "client (us/msg: server CPU per event; M=1 is the "
                "one-client figure)"
            )
        print(report.table(results))
        if opts.deflate or opts.mix != "bench":
            print(
                "\ncompression (clients offer permessage-deflate: "
                f"{'yes' if opts.deflate else 'no'}; writes: {opts.mix} "
                "mix):"
            )
            print(report.compression_table(results))
        if opts.mass_disconnect or opts.sigterm:
            print("\nmass disconnect and SIGTERM with clients connected:")
            print(report.disconnect_table(results))
        if opts.reconnect_after:
            print(
                "\nreconnecting after a mass disconnect (M clients at "
                "once; handshake = connect to hello):"
            )
            for r in results:
                print(f"  {r['server']} M={r['clients']}:")
                for line in r.get("reconnect") or ():
                    print("  " + reconnect_line(line))
        ratio_lines = report.ratios(results)
        if ratio_lines:
            print(
                "\nratios (wsproxy / baseline; msgs/s >1 is better, "
                "p99 and cpu <1 are better):"
            )
            print(ratio_lines)
        beside = report.asyncio_table(results)
        if beside:
            print("\nwsproxy beside the asyncio websockets baseline:")
            print(beside)
    if opts.json:
        report.write_json(opts.json, results, vars(opts))
        _say(f"results written to {opts.json}")
    failed = any(r["error"] or r.get("disconnect_error") for r in results)
    if opts.keep_logs or failed:
        _say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if failed else 0
