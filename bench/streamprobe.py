"""A change-stream probe: the database's own delivery latency, no wsproxy.

Watches what wsproxy watches (a database, ``full_document="updateLookup"``)
with a plain PyMongo change stream in its own process, and records for each
change of the benchmark writer its receive time minus the document's ``t``.
Set beside the live clients' latency, it says how much of it the database
accounts for. Line protocol, like the other children::

    -> READY {}        the change stream is open
    <- (any line, or EOF)  stop
    -> RESULT {...}    ``seqs`` and ``lat_ms``, parallel lists
"""

import argparse
import json
import sys
import threading
import time

from pymongo import MongoClient

from .procs import die_with_parent


def watch(stream, seqs, lat_ms, stop):
    while not stop.is_set():
        change = stream.try_next()  # waits at most max_await_time_ms
        now = time.time()
        doc = (change or {}).get("fullDocument") or {}
        if isinstance(doc.get("seq"), int) and isinstance(doc.get("t"), float):
            seqs.append(doc["seq"])
            lat_ms.append(round((now - doc["t"]) * 1000.0, 3))


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--db", required=True, help="the database to watch")
    args = p.parse_args(argv)
    die_with_parent()
    client = MongoClient(args.uri)
    seqs, lat_ms, stop = [], [], threading.Event()
    try:
        with client[args.db].watch(
            full_document="updateLookup", max_await_time_ms=200
        ) as stream:
            watcher = threading.Thread(
                target=watch, name="probe", args=(stream, seqs, lat_ms, stop)
            )
            watcher.start()
            print("READY {}", flush=True)
            sys.stdin.readline()
            stop.set()
            watcher.join()
        print("RESULT " + json.dumps({"seqs": seqs, "lat_ms": lat_ms}), flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(cli())
