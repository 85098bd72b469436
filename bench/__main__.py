"""Command line of the benchmark: ``python -m bench --help``."""

import argparse
import sys

from .servers import DEFAULT, GROUPS, SERVERS


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text):
    names = []
    for x in (x.strip() for x in text.split(",")):
        for name in GROUPS.get(x, (x,) if x else ()):
            if name not in names:
                names.append(name)
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown server(s) {unknown}; choose from {sorted(SERVERS)} "
            f"or a group: {', '.join(GROUPS)}")
    return names


def parse(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Broadcast benchmark: wsproxy vs Tornado+Motor vs "
                    "asyncio websockets, all fed by one change stream.")
    p.add_argument("--clients", type=_ints, default=[1, 100, 1000],
                   help="comma-separated client counts (default 1,100,1000)")
    p.add_argument("--rate", type=float, default=50.0,
                   help="documents written per second (default 50)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of measured writing per run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of unmeasured writing first (default 2)")
    p.add_argument("--servers", type=_names, default=list(DEFAULT),
                   help="comma-separated (default " + ",".join(DEFAULT)
                        + "), from: " + ",".join(SERVERS) + "; or 'compression' "
                        "for " + ",".join(GROUPS["compression"]))
    p.add_argument("--procs", type=int, default=4,
                   help="client processes (default 4)")
    p.add_argument("--client", choices=("lean", "asyncio"), default="lean",
                   help="client connection implementation: websockets' "
                        "sans-I/O protocol on a bare asyncio Protocol (lean, "
                        "default) or its high-level asyncio API")
    p.add_argument("--deflate", action="store_true",
                   help="clients offer permessage-deflate as browsers do "
                        "and count the bytes they receive on the wire")
    p.add_argument("--mix", choices=("bench", "demo"), default="bench",
                   help="what the writer writes: benchmark documents "
                        "(default) or the demo's inserts, updates, replaces "
                        "and deletes of orders (see bench.mix)")
    p.add_argument("--drain", type=float, default=10.0,
                   help="max seconds after the last write to wait for "
                        "every client to get it (default 10)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="max seconds for all clients to connect")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="max seconds for a server's /readyz to answer 200")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the work directory with all logs")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: clients 1,10, 2 s, warm-up 0.5 s")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.clients, opts.duration, opts.warmup = [1, 10], 2.0, 0.5
    if opts.rate <= 0 or opts.duration <= 0 or opts.procs < 1:
        p.error("--rate, --duration and --procs must be positive")
    return opts


def main(argv=None):
    from .driver import main as run
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
