"""The writer process: inserts benchmark documents at a fixed rate.

Its own process and MongoClient, so neither the driver's threads nor the
clients disturb its schedule. Documents are ``{"seq": i, "t": time.time(),
"pad": "x"*200}``; seqs ``0..warmup-1`` are warm-up, then ``rate*duration``
measured ones. Inserts follow an absolute schedule (``t0 + i/rate``): when
an insert is slow the writer catches up instead of drifting, and reports
how far behind it fell. With ``--update N`` it updates instead of
inserting: write ``i`` sets ``seq`` and ``t`` of the seeded document
``_id = i % N`` (the snapshot benchmark's collection keeps its size).
With ``--mix demo`` it writes the demo's inserts, updates, replacements
and deletes of orders instead (see :mod:`.mix`). With ``--burst N`` the
warm-up is still written at the rate, then the N measured documents are
inserted as fast as the database takes them, with ``insert_many`` in
chunks of ``--chunk`` (default 500); every document of a chunk carries the
chunk's send time as ``t``, so latency, loss and duplicates are counted as
for the rate schedule (``ack_ms`` and ``sent_at`` are then per chunk).
``--seq-base B`` numbers the documents from B (a second writer in the same
collection, as for the mass-disconnect step, keeps seqs unique).
Protocol on stdout::

    MEASURE <epoch>   the first measured insert is about to happen
    MARK {...}        a ``--mark`` seq is about to be written (seq, t)
    DONE {...}        all inserts done (counts, times, achieved rate, and
                      by seq: ``sent_at``, each write's epoch, and
                      ``ack_ms``, how long it took to be acknowledged --
                      the database's share of the clients' latency)
"""

import argparse
import json
import sys
import time

from pymongo import MongoClient

from .mix import DemoMix
from .procs import die_with_parent
from .wire import bench_document


def burst(coll, count, first_seq, chunk=500):
    """Insert seqs ``first_seq..first_seq+count-1`` back to back, in chunks.

    Returns per chunk: (ack_ms, sent_at)."""
    acks, sent_at = [], []
    for lo in range(first_seq, first_seq + count, chunk):
        hi = min(first_seq + count, lo + chunk)
        sent, t = time.monotonic(), time.time()
        coll.insert_many(
            [bench_document(seq, t) for seq in range(lo, hi)], ordered=True
        )
        acks.append(round((time.monotonic() - sent) * 1000.0, 3))
        sent_at.append(t)
    return acks, sent_at


def write(
    coll,
    rate,
    warmup,
    count,
    update=0,
    marks=(),
    mix=None,
    burst_chunk=0,
    base=0,
    tenants=0,
):
    """The rate schedule (``burst_chunk``: only for the warm-up, then the
    ``count`` measured documents back to back, see :func:`burst`)."""
    interval = 1.0 / rate
    start = time.monotonic()
    behind = 0.0
    t_first = None
    acks, sent_at = [], []
    scheduled = warmup if burst_chunk else warmup + count
    for i in range(scheduled):
        seq = base + i
        due = start + i * interval
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)  # pacing the schedule, not synchronisation
        else:
            behind = max(behind, now - due)
        if i == warmup:
            t_first = time.time()
            print(f"MEASURE {t_first!r}", flush=True)  # a JSON number
        if seq in marks:
            print("MARK " + json.dumps({"seq": seq, "t": time.time()}), flush=True)
        sent, t = time.monotonic(), time.time()
        if mix is not None:
            mix.write(coll, seq, t)
        elif update:
            # Distinct documents while seq < N, so each change's looked-up
            # fullDocument still holds this write's seq and t.
            coll.update_one({"_id": seq % update}, {"$set": {"seq": seq, "t": t}})
        else:
            coll.insert_one(bench_document(seq, t, tenants=tenants))
        acks.append(round((time.monotonic() - sent) * 1000.0, 3))
        sent_at.append(t)
    if burst_chunk:
        t_first = time.time()
        print(f"MEASURE {t_first!r}", flush=True)
        more = burst(coll, count, base + warmup, burst_chunk)
        acks += more[0]
        sent_at += more[1]
    return t_first, behind, acks, sent_at


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--ns", default="bench.events")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument(
        "--warmup-count",
        type=int,
        default=0,
        help="warm-up documents written before the measured ones",
    )
    p.add_argument(
        "--update",
        type=int,
        default=0,
        metavar="N",
        help="update seeded documents 0..N-1 instead of inserting",
    )
    p.add_argument(
        "--mix",
        choices=("bench", "demo"),
        default="bench",
        help="bench documents (default) or the demo's mix of "
        "order inserts, updates, replaces and deletes",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="N",
        help="after the warm-up (at --rate), insert N documents "
        "as fast as possible instead of rate*duration",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="documents per insert_many in --burst (default 500)",
    )
    p.add_argument(
        "--seq-base",
        type=int,
        default=0,
        metavar="B",
        help="the first document's seq (default 0)",
    )
    p.add_argument(
        "--tenants",
        type=int,
        default=0,
        metavar="N",
        help="inserted documents belong to tenants t0..tN-1 in turn (seq mod N)",
    )
    p.add_argument(
        "--mark",
        type=int,
        action="append",
        default=[],
        metavar="SEQ",
        help="say MARK just before writing SEQ",
    )
    args = p.parse_args(argv)
    die_with_parent()
    db, coll = args.ns.split(".", 1)
    client = MongoClient(args.uri)
    try:
        client.admin.command("ping")  # connect before the schedule starts
        warm = args.warmup_count
        if args.burst and (args.update or args.mix != "bench"):
            p.error("--burst inserts bench documents: no --update or --mix")
        count = args.burst or max(1, int(round(args.rate * args.duration)))
        mix = DemoMix(warm + count) if args.mix == "demo" else None
        t_first, behind, acks, sent_at = write(
            client[db][coll],
            args.rate,
            warm,
            count,
            update=args.update,
            marks=set(args.mark),
            mix=mix,
            burst_chunk=args.chunk if args.burst else 0,
            base=args.seq_base,
            tenants=args.tenants,
        )
        t_last = time.time()
        first = args.seq_base + warm
        print(
            "DONE "
            + json.dumps(
                {
                    "first_seq": first,
                    "last_seq": first + count - 1,
                    "written": count,
                    "burst": args.burst,
                    "t_first": t_first,
                    "t_last": t_last,
                    "achieved_rate": count / max(1e-9, t_last - t_first),
                    "max_behind_s": behind,
                    "ack_ms": acks,
                    "sent_at": sent_at,
                }
            ),
            flush=True,
        )
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(cli())
