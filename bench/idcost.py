"""What the resume ids cost under compression, on the demo's event mix.

Every change message carries its ``id``: the resume token sealed with
AES-SIV (:mod:`wsproxy.access.sealing`), i.e. ciphertext in base64, which no
compressor can shrink below 6 bits a character. This writes the demo mix
(:mod:`.mix`) to a fresh SecantusDB, reads the changes back as wsproxy
would, and compresses the very same messages three ways -- plain frames,
stage 1 (each message on its own, :func:`wsproxy.transport.codec.deflated_frame`)
and stage 2 (one context carried across messages) -- with the id as
wsproxy sends it (two parts: the collection's shape, the same in every id,
and the event's values), as earlier releases sealed it (the whole token in
one part), as the plain hex token the baselines send, and empty. The
difference between the first and the last is what the ids cost.
(SecantusDB's tokens are BSON as lowercase hex; MongoDB's KeyString tokens,
uppercase, are split too, into shapes and values of other sizes.)

    python -m bench.idcost [--events 600] [--json PATH]
"""

import argparse
import json
import secrets
import sys
import time
from types import SimpleNamespace

from pymongo import MongoClient

from demo.embedded import EmbeddedMongo
from wsproxy.access import sealing
from wsproxy.access.sealing import Sealer
from wsproxy.transport import codec
from wsproxy.transport.compression import SharedContext

from .mix import DemoMix

WINDOW_BITS = 15  # what a browser's offer leaves to the server


def demo_changes(count):
    """``count`` change events of the demo mix, as PyMongo decodes them."""
    mongo = EmbeddedMongo()
    mongo.start()
    try:
        with MongoClient(mongo.uri) as client:
            coll = client.bench.events
            with coll.watch(full_document="updateLookup") as stream:
                writes = DemoMix(count)
                for seq in range(count):
                    writes.write(coll, seq, time.time())
                return [stream.next() for _ in range(count)]
    finally:
        mongo.stop()


def shared_frames(texts, window_bits=WINDOW_BITS):
    """Stage 2's frames: wsproxy's own shared context, fed the messages in
    order as the broadcaster feeds it (reset every 64 messages)."""
    context = SharedContext(None, window_bits)
    for n, text in enumerate(texts):
        # The context knows changes by id; ours may all be "" (no id row).
        shared = context.encode(SimpleNamespace(id=n), text)
        yield codec.frame(text) if shared is None else shared[2]


def _sealed_whole(sealer, token):
    """The id as releases before the two-part form sealed a hex token (they
    still open it)."""
    data = token["_data"]
    kind = sealing._HEX if data == data.upper() else sealing._LOWER_HEX
    return sealer._seal_whole(kind + bytes.fromhex(data))


def measure(changes):
    sealer = Sealer([secrets.token_urlsafe(32)])
    ids = {
        "sealed (wsproxy)": [sealer.seal(c["_id"]) for c in changes],
        "sealed whole (earlier)": [_sealed_whole(sealer, c["_id"]) for c in changes],
        "hex token (baselines)": [c["_id"]["_data"] for c in changes],
        "none": ["" for _ in changes],
    }
    rows = []
    for label, values in ids.items():
        texts = [
            codec.change_message(i, c) for i, c in zip(values, changes, strict=True)
        ]
        n = len(texts)
        off = sum(len(codec.frame(t)) for t in texts) / n
        independent = sum(len(codec.deflated_frame(t, WINDOW_BITS)) for t in texts) / n
        shared = sum(len(f) for f in shared_frames(texts)) / n
        rows.append(
            {
                "ids": label,
                "id_chars": sum(map(len, values)) / n,
                "json": sum(len(t.encode()) for t in texts) / n,
                "off": off,
                "independent": independent,
                "shared": shared,
            }
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=600)
    p.add_argument("--json", help="write the rows here too")
    args = p.parse_args(argv)
    rows = measure(demo_changes(args.events))
    print(
        f"{args.events} changes of the demo mix: bytes a message on the "
        f"wire, and as a ratio to the same messages uncompressed"
    )
    print(f"{'ids':24} {'id chars':>8} {'off':>5} {'stage 1':>13} {'stage 2':>13}")
    for r in rows:
        print(
            f"{r['ids']:24} {r['id_chars']:8.0f} {r['off']:5.0f} "
            f"{r['independent']:6.0f} {r['independent'] / r['off']:5.2f}x "
            f"{r['shared']:6.0f} {r['shared'] / r['off']:5.2f}x"
        )
    sealed, none = rows[0], rows[-1]
    for mode in ("independent", "shared"):
        cost = sealed[mode] - none[mode]
        print(
            f"{mode}: the sealed ids are {cost:.0f} of {sealed[mode]:.0f} "
            f"bytes a message ({cost / sealed[mode]:.0%})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
