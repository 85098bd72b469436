"""The demo writer: a few sample inserts, updates and deletes per second.

Runs as its own process (``python -m demo.writer URI``, from the
repository root), started by the repository's ``gunicorn.conf.py`` only
when it also started the embedded server, so the bundled page shows live
changes at once. Never used against a real cluster.
"""

import argparse
import datetime
import random
import signal
import sys
import threading

from bson import Decimal128
from pymongo import MongoClient
from pymongo.errors import PyMongoError

CUSTOMERS = ["ada", "grace", "linus", "margaret", "ken", "barbara"]
STATUSES = ["open", "paid", "shipped", "late"]


def step(coll, rng, live_ids):
    """One random write; keeps a small working set of documents."""
    roll = rng.random()
    if len(live_ids) < 5 or roll < 0.45:
        result = coll.insert_one(
            {
                "customer": rng.choice(CUSTOMERS),
                "status": "open",
                "total": Decimal128(f"{rng.randint(100, 99999) / 100:.2f}"),
                "items": [
                    {"sku": f"SKU-{rng.randint(1, 40):03d}", "qty": rng.randint(1, 4)}
                    for _ in range(rng.randint(1, 3))
                ],
                "created": datetime.datetime.now(datetime.UTC),
            }
        )
        live_ids.append(result.inserted_id)
    elif roll < 0.85:
        coll.update_one(
            {"_id": rng.choice(live_ids)},
            {"$set": {"status": rng.choice(STATUSES)}, "$inc": {"revision": 1}},
        )
    elif roll < 0.92:
        doc_id = rng.choice(live_ids)
        coll.replace_one(
            {"_id": doc_id},
            {
                "customer": rng.choice(CUSTOMERS),
                "status": "open",
                "total": Decimal128("0.00"),
                "note": "replaced",
            },
        )
    else:
        doc_id = live_ids.pop(rng.randrange(len(live_ids)))
        coll.delete_one({"_id": doc_id})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri")
    parser.add_argument("--namespace", default="demo.orders")
    parser.add_argument("--rate", type=float, default=3.0, help="writes per second")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    db, coll = args.namespace.split(".", 1)
    client = MongoClient(args.uri, appname="wsproxy-demo-writer")
    rng, live_ids = random.Random(), []
    try:
        while not stop.wait(1.0 / args.rate):
            try:
                step(client[db][coll], rng, live_ids)
            except PyMongoError as exc:
                print(f"demo writer: {exc}", file=sys.stderr)
                stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    main()
