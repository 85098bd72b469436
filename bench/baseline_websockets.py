"""Baseline 2: a minimal asyncio ``websockets`` broadcast server.

One task reads the change stream with PyMongo's native async API
(``pymongo.AsyncMongoClient``, not Motor) and hands each encoded event to
``websockets.asyncio.server.broadcast`` for all connected clients.
``GET /readyz`` is answered by ``process_request``: 200 once the stream is
open. Server options are the library defaults except the listen backlog.
Compression is the library's default, ``deflate``: per connection, with
context takeover, so ``broadcast`` compresses every message once per
client that negotiated it; ``--compression none`` declines the offer.

    python -m bench.baseline_websockets --uri URI --watch db.coll \
        --port P [--compression none]
"""

import asyncio
import sys
from http import HTTPStatus

from pymongo import AsyncMongoClient
from websockets.asyncio.server import broadcast, serve

from .procs import run_baseline
from .wire import encode_change

CLIENTS = set()
READY = asyncio.Event()


async def handler(ws):
    CLIENTS.add(ws)
    try:
        await ws.wait_closed()
    finally:
        CLIENTS.discard(ws)


def process_request(connection, request):
    if request.path == "/readyz":
        if READY.is_set():
            return connection.respond(HTTPStatus.OK, "ok\n")
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
    if request.path != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None  # go on with the WebSocket handshake


async def watch(uri, namespace):
    db, coll = namespace.split(".", 1)
    client = AsyncMongoClient(uri)
    # The async watch() runs the aggregate before returning: the stream is
    # open when READY is set.
    stream = await client[db][coll].watch(full_document="updateLookup")
    async with stream:
        READY.set()
        print("READY", flush=True)
        async for change in stream:
            broadcast(CLIENTS, encode_change(change))


async def main(args):
    # backlog as gunicorn's default (2048), for 1,000 simultaneous connects.
    compression = None if args.compression == "none" else args.compression
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        process_request=process_request,
        backlog=2048,
        compression=compression,
    ):
        await watch(args.uri, args.watch)  # returns only if the stream ends


def arguments(parser):
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="permessage-deflate when a client offers it "
        "(the library's default) or never",
    )


if __name__ == "__main__":
    sys.exit(run_baseline(main, __doc__, add_arguments=arguments))
