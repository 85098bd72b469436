"""The writer process: inserts benchmark documents at a fixed rate.

Its own process and MongoClient, so neither the driver's threads nor the
clients disturb its schedule. Documents are ``{"seq": i, "t": time.time(),
"pad": "x"*200}``; seqs ``0..warmup-1`` are warm-up, then ``rate*duration``
measured ones. Inserts follow an absolute schedule (``t0 + i/rate``): when
an insert is slow the writer catches up instead of drifting, and reports
how far behind it fell. Protocol on stdout::

    MEASURE <epoch>   the first measured insert is about to happen
    DONE {...}        all inserts done (counts, times, achieved rate)
"""

import argparse
import json
import sys
import time

from pymongo import MongoClient

from .procs import die_with_parent
from .wire import bench_document


def write(coll, rate, warmup, count):
    interval = 1.0 / rate
    start = time.monotonic()
    behind = 0.0
    t_first = None
    for seq in range(warmup + count):
        due = start + seq * interval
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)  # pacing the schedule, not synchronisation
        else:
            behind = max(behind, now - due)
        if seq == warmup:
            t_first = time.time()
            print(f"MEASURE {t_first!r}", flush=True)  # a JSON number
        coll.insert_one(bench_document(seq, time.time()))
    return t_first, behind


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--ns", default="bench.events")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup-count", type=int, default=0,
                   help="warm-up documents written before the measured ones")
    args = p.parse_args(argv)
    die_with_parent()
    db, coll = args.ns.split(".", 1)
    client = MongoClient(args.uri)
    try:
        client.admin.command("ping")  # connect before the schedule starts
        warm = args.warmup_count
        count = max(1, int(round(args.rate * args.duration)))
        t_first, behind = write(client[db][coll], args.rate, warm, count)
        t_last = time.time()
        print("DONE " + json.dumps({
            "first_seq": warm, "last_seq": warm + count - 1, "written": count,
            "t_first": t_first, "t_last": t_last,
            "achieved_rate": count / max(1e-9, t_last - t_first),
            "max_behind_s": behind}), flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(cli())
