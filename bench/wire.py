"""The message format every benchmarked server sends, and its cheap parse.

One JSON text frame per change::

    {"type": "change", "id": "<resume token _data>", "event": {...}}

where ``event`` is the change event without ``_id`` in relaxed Extended
JSON. The baselines encode with :func:`encode_change`; the load clients
extract seq and t with :data:`SEQ_T` instead of parsing JSON, because a
Python client receiving tens of thousands of messages a second is CPU-bound.
"""

import datetime
import json
import re

from bson import json_util

_RELAXED = json_util.RELAXED_JSON_OPTIONS

# The benchmark document is inserted as {"seq": i, "t": float, "pad": ...};
# field order survives into fullDocument, so seq and t are adjacent there.
# Anchoring on the pair matters: clusterTime also has a "t" key
# ({"$timestamp": {"t": ..., "i": ...}}). \s* tolerates compact separators.
SEQ_T = re.compile(r'"seq":\s*(-?\d+),\s*"t":\s*([-+0-9.eE]+)')
# The same over undecoded frame payloads (the lean client never decodes).
SEQ_T_BYTES = re.compile(SEQ_T.pattern.encode())

# A delete of the demo mix (see bench.mix): its seq is the counter of the
# deleted document's ObjectId, its time the event's wallTime. Event fields
# come in this order (operationType, clusterTime, wallTime, ns,
# documentKey), in the baselines' messages and wsproxy's alike.
DELETE = re.compile(
    r'"operationType":\s*"delete",.*?'
    r'"wallTime":\s*\{"\$date":\s*"([^"]+)"\}.*?'
    r'"documentKey":\s*\{"_id":\s*\{"\$oid":\s*"[0-9a-f]{18}([0-9a-f]{6})"'
)
DELETE_BYTES = re.compile(DELETE.pattern.encode())


def change_seq_t(msg):
    """``(seq, t)`` of a change message (bytes or str), or None.

    The last ``"seq"`` in the message is the event's own: an update's
    ``updatedFields`` come after its looked-up ``fullDocument``, which may
    already hold a later write's seq (or be null). Cheaper than a search
    from the start, too, when it matches.
    """
    text = isinstance(msg, str)
    at = msg.rfind('"seq"' if text else b'"seq"')
    if at >= 0:
        pattern = SEQ_T if text else SEQ_T_BYTES
        m = pattern.match(msg, at) or pattern.search(msg)
        if m is not None:
            return int(m[1]), float(m[2])
        return None
    m = (DELETE if text else DELETE_BYTES).search(msg)
    if m is None:
        return None
    wall = m[1] if text else m[1].decode()
    return int(m[2], 16), datetime.datetime.fromisoformat(wall).timestamp()


def encode_change(change):
    """One wire message for a PyMongo/Motor change document (consumed)."""
    token = change.pop("_id", None) or {}
    data = json.dumps(token.get("_data"))
    event = json_util.dumps(change, json_options=_RELAXED)
    return f'{{"type": "change", "id": {data}, "event": {event}}}'


def bench_document(seq, t, pad=200, tenants=0):
    """The document the writer inserts; with ``tenants`` N, it belongs to
    tenant ``t<seq mod N>`` (see :func:`tenant_filter`)."""
    doc = {"seq": seq, "t": t, "pad": "x" * pad}
    if tenants:
        doc["tenant"] = f"t{seq % tenants}"
    return doc


def tenant_filter(index):
    """The ``?filter=`` of the tenant scenario's client ``index``: only its
    tenant's documents (each event is for exactly one client)."""
    return json.dumps({"fullDocument.tenant": f"t{index}"}, separators=(",", ":"))


def tenant_last_seq(index, tenants, first_seq, last_seq):
    """The last measured seq client ``index`` of ``tenants`` receives
    (-1: none of the measured writes is its tenant's)."""
    seq = last_seq - (last_seq - index) % tenants
    return seq if seq >= first_seq else -1


_CUSTOMERS = ("ada", "grace", "linus", "margaret", "ken", "barbara")


def order_document(i, seq=-1, t=0.0):
    """A seeded document of the snapshot benchmark: an order of about 900
    bytes of JSON (the size of the demo's and bench.framing's events'
    documents), with ``seq`` and ``t`` adjacent so an update that sets
    them is measured by :data:`SEQ_T` like an insert."""
    return {
        "_id": i,
        "seq": seq,
        "t": t,
        "customer": _CUSTOMERS[i % 6],
        "status": "paid",
        "created": "2026-11-28T10:00:00Z",
        "items": [
            {"sku": f"SKU-{(i + n) % 1000:03d}", "qty": n + 1, "price": 9.99}
            for n in range(15)
        ],
        "note": "left at the door " * 4,
    }
