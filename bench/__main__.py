"""Command line of the benchmark: ``python -m bench --help``."""

import argparse
import sys

from .servers import DEFAULT, GROUPS, SERVERS


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()]


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
            f"or a group: {', '.join(GROUPS)}"
        )
    return names


def parse(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Broadcast benchmark: wsproxy vs Tornado+Motor vs "
        "asyncio websockets, all fed by one change stream.",
    )
    p.add_argument(
        "--clients",
        type=_ints,
        default=[1, 100, 1000],
        help="comma-separated client counts (default 1,100,1000)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="documents written per second (default 50)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of measured writing per run (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of unmeasured writing first (default 2)",
    )
    p.add_argument(
        "--servers",
        type=_names,
        default=list(DEFAULT),
        help="comma-separated (default "
        + ",".join(DEFAULT)
        + "), from: "
        + ",".join(SERVERS)
        + "; or 'compression' "
        "for " + ",".join(GROUPS["compression"]),
    )
    p.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument(
        "--client",
        choices=("lean", "asyncio"),
        default="lean",
        help="client connection implementation: websockets' "
        "sans-I/O protocol on a bare asyncio Protocol (lean, "
        "default) or its high-level asyncio API",
    )
    p.add_argument(
        "--deflate",
        action="store_true",
        help="clients offer permessage-deflate as browsers do "
        "and count the bytes they receive on the wire",
    )
    p.add_argument(
        "--mix",
        choices=("bench", "demo"),
        default="bench",
        help="what the writer writes: benchmark documents "
        "(default) or the demo's inserts, updates, replaces "
        "and deletes of orders (see bench.mix)",
    )
    p.add_argument(
        "--tenants",
        action="store_true",
        help="the tenant scenario: each of the M clients "
        "subscribes to its own tenant (?filter= on "
        "fullDocument.tenant) and the writer spreads the "
        "inserts over the M tenants in turn, so each event "
        "is for exactly one client (wsproxy servers only; "
        "us/msg is then CPU per event: compare M=1)",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="N",
        help="instead of rate*duration measured writes, insert N "
        "documents as fast as the database takes them "
        "(insert_many, 500 a chunk); the warm-up is still "
        "written at --rate (--warmup 0 skips it)",
    )
    p.add_argument(
        "--mass-disconnect",
        action="store_true",
        help="after the measured phase, a bystander client "
        "connects, a writer writes at --rate, and all M "
        "clients are SIGKILLed at once: report the "
        "bystander's delay (stall_ms) and, for wsproxy, "
        "how long until the server counted them gone",
    )
    p.add_argument(
        "--stall-before",
        type=float,
        default=2.0,
        help="seconds of bystander events before the kill, for its p50 (default 2)",
    )
    p.add_argument(
        "--stall-window",
        type=float,
        default=5.0,
        help="seconds the writer goes on after the kill (default 5)",
    )
    p.add_argument(
        "--sigterm",
        action="store_true",
        help="last step of each run: SIGTERM the server with M "
        "clients connected (with --mass-disconnect, a fresh "
        "M after it) and time until its process tree is gone",
    )
    p.add_argument(
        "--reconnect-after",
        type=_floats,
        default=[],
        metavar="DELAYS",
        help="after the measured phase: M clients open their "
        "connections at once, are SIGKILLed, and M new ones "
        "come back after each of these comma-separated "
        "delays in seconds (e.g. 8,0,1,3); prints each "
        "round's handshake p50/p99/max (see bench.reconnect)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=None,
        help="max seconds after the last write to wait for "
        "every client to get it (default 10; with --burst "
        "30 + M*N/10,000)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="max seconds for all clients to connect",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="max seconds for a server's /readyz to answer 200",
    )
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the work directory with all logs"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: clients 1,10, 2 s, warm-up 0.5 s "
        "(with --mass-disconnect: 1 s before, 2 s window)",
    )
    opts = p.parse_args(argv)
    if opts.quick:
        opts.clients, opts.duration, opts.warmup = [1, 10], 2.0, 0.5
        opts.stall_before, opts.stall_window = 1.0, 2.0
    if opts.rate <= 0 or opts.duration <= 0 or opts.procs < 1:
        p.error("--rate, --duration and --procs must be positive")
    if opts.burst < 0 or opts.stall_before <= 0 or opts.stall_window <= 0:
        p.error("--burst must not be negative, --stall-* must be positive")
    if opts.tenants and (
        opts.burst
        or opts.mix != "bench"
        or any(not n.startswith("wsproxy") for n in opts.servers)
    ):
        p.error("--tenants: wsproxy servers, --mix bench, no --burst")
    if opts.burst and opts.mix != "bench":
        p.error("--burst inserts benchmark documents: no --mix demo")
    return opts


def main(argv=None):
    from .driver import main as run

    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
