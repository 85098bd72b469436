"""What per-connection work would cost in a fan-out: framing each message
per client, and compressing it per connection (permessage-deflate, which
simple-websocket accepts whenever a browser offers it, and browsers always
do). Prints numbers; the defaults in wsproxy follow from them.

    python -m bench.framing [--clients 1000] [--events 200]
"""

import argparse
import json
import time

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from wsproxy.transport import codec


def sample_event(i):
    """A typical order-sized change message (about 1 KB of JSON)."""
    return codec.control_message(
        "change",
        id="82" + "ab" * 40,
        event={
            "operationType": "update",
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": i},
            "fullDocument": {
                "_id": i,
                "customer": "ada",
                "status": "paid",
                "items": [
                    {"sku": f"SKU-{n:03d}", "qty": n, "price": 9.99} for n in range(12)
                ],
                "note": "left at the door " * 4,
            },
        },
    )


def _deflate_protocol():
    extension = PerMessageDeflate()
    # What a browser offers and simple-websocket accepts: context takeover
    # on both sides, 15-bit windows.
    extension.finalize(extension.offer())
    return FrameProtocol(client=False, extensions=[extension])


def measure(clients, events):
    texts = [sample_event(i) for i in range(events)]
    rows = []

    started = time.perf_counter()
    for text in texts:
        codec.frame(text)
    shared = (time.perf_counter() - started) / events
    rows.append(
        (
            "shared frame (wsproxy default)",
            shared,
            shared / clients,
            len(codec.frame(texts[0])),
        )
    )

    protocols = [FrameProtocol(client=False, extensions=[]) for _ in range(clients)]
    started = time.perf_counter()
    for text in texts:
        for proto in protocols:
            proto.send_data(text, fin=True)
    per_client = (time.perf_counter() - started) / events
    rows.append(
        (
            "frame per client",
            per_client,
            per_client / clients,
            len(codec.frame(texts[0])),
        )
    )

    protocols = [_deflate_protocol() for _ in range(clients)]
    started = time.perf_counter()
    size = 0
    for text in texts:
        for proto in protocols:
            size = len(proto.send_data(text, fin=True))
    deflate = (time.perf_counter() - started) / events
    rows.append(("permessage-deflate per connection", deflate, deflate / clients, size))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)
    rows = measure(args.clients, args.events)
    print(
        f"{args.clients} clients, {args.events} events of "
        f"{len(sample_event(0))} bytes of JSON"
    )
    print(
        f"{'strategy':36} {'ms/event':>9} {'us/client':>10} {'bytes':>6}"
        f" {'max events/s on one core':>25}"
    )
    for name, per_event, per_client, size in rows:
        print(
            f"{name:36} {per_event * 1e3:9.2f} {per_client * 1e6:10.2f}"
            f" {size:6d} {1 / per_event:25.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    dict(
                        zip(
                            ("strategy", "s_per_event", "s_per_client", "bytes"),
                            row,
                            strict=True,
                        )
                    )
                    for row in rows
                ],
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
