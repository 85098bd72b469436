"""The demo's event mix, made measurable (``bench.writer --mix demo``).

:mod:`demo.writer` draws, for each write, an insert of an order (45%), an
update of its status and revision (40%), a replacement (7%) or a delete
(8%) of a random live order. Compression depends on what the messages
hold, so the compression benchmark writes that mix, with the demo's
fields and ObjectId keys, instead of the plain benchmark documents (whose
``"x" * 200`` pad would compress to almost nothing).

What the load clients need from every event, its seq and write time, is
added as two fields, ``"seq"`` and ``"t"``, side by side (see
:data:`.wire.SEQ_T`): in inserted and replacing documents and in every
update's ``$set``. A delete carries no document, only its key, so the whole
sequence of writes is drawn up front: a document that write ``d`` will
delete gets an ObjectId whose last three bytes (where a real one keeps its
counter) are ``d``, and the clients take the event's ``wallTime`` (ms) as
its time (see :func:`.wire.change_seq_t`). The messages are the demo's in
shape and size; the two fields add about 40 bytes to most of them.
"""

import datetime
import os
import random
import struct
import time

from bson import Decimal128, ObjectId

from demo.writer import CUSTOMERS, STATUSES

INSERT, UPDATE, REPLACE, DELETE = "insert", "update", "replace", "delete"
MAX_SEQ = 1 << 24  # the delete's seq lives in an ObjectId's 3-byte counter


def plan(count, rng):
    """``count`` writes as demo.writer.step chooses them: a list of
    ``(kind, target)`` where ``target`` is the seq of the insert that
    created the document written to."""
    live, ops = [], []
    for seq in range(count):
        roll = rng.random()
        if len(live) < 5 or roll < 0.45:
            live.append(seq)
            ops.append((INSERT, seq))
        elif roll < 0.85:
            ops.append((UPDATE, rng.choice(live)))
        elif roll < 0.92:
            ops.append((REPLACE, rng.choice(live)))
        else:
            ops.append((DELETE, live.pop(rng.randrange(len(live)))))
    return ops


def delete_key(seq, prefix):
    """The ObjectId of a document that write ``seq`` deletes: a real
    ObjectId's layout (seconds, 5 process bytes, 3-byte counter) with the
    seq as the counter."""
    return ObjectId(
        struct.pack(">I", int(time.time())) + prefix + seq.to_bytes(3, "big")
    )


class DemoMix:
    """Writes ``count`` changes of the demo's mix, one per :meth:`write`."""

    def __init__(self, count, seed=0):
        if count > MAX_SEQ:
            raise ValueError(f"at most {MAX_SEQ} writes")
        self.rng = random.Random(seed)
        self.ops = plan(count, self.rng)
        deleted_at = {
            target: seq for seq, (kind, target) in enumerate(self.ops) if kind == DELETE
        }
        prefix = os.urandom(5)
        self.keys = {
            seq: (
                delete_key(deleted_at[seq], prefix) if seq in deleted_at else ObjectId()
            )
            for seq, (kind, _) in enumerate(self.ops)
            if kind == INSERT
        }

    def write(self, coll, seq, t):
        kind, target = self.ops[seq]
        rng, key = self.rng, self.keys[target]
        if kind == INSERT:
            coll.insert_one(
                {
                    "_id": key,
                    "seq": seq,
                    "t": t,
                    "customer": rng.choice(CUSTOMERS),
                    "status": "open",
                    "total": Decimal128(f"{rng.randint(100, 99999) / 100:.2f}"),
                    "items": [
                        {
                            "sku": f"SKU-{rng.randint(1, 40):03d}",
                            "qty": rng.randint(1, 4),
                        }
                        for _ in range(rng.randint(1, 3))
                    ],
                    "created": datetime.datetime.now(datetime.UTC),
                }
            )
        elif kind == UPDATE:
            coll.update_one(
                {"_id": key},
                {
                    "$set": {"seq": seq, "t": t, "status": rng.choice(STATUSES)},
                    "$inc": {"revision": 1},
                },
            )
        elif kind == REPLACE:
            coll.replace_one(
                {"_id": key},
                {
                    "seq": seq,
                    "t": t,
                    "customer": rng.choice(CUSTOMERS),
                    "status": "open",
                    "total": Decimal128("0.00"),
                    "note": "replaced",
                },
            )
        else:
            coll.delete_one({"_id": key})
