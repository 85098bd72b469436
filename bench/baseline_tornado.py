"""Baseline 1: the original Tornado + Motor design wsproxy comes from.

A Tornado ``WebSocketHandler`` at ``/ws`` keeps a set of clients; one
coroutine iterates a Motor change stream (``full_document="updateLookup"``)
and, per event, encodes once and awaits ``write_message`` for each client
in turn -- the naive sequential loop, kept on purpose since it is what is
being compared against. ``GET /readyz`` is 200 once the stream is open.

    python -m bench.baseline_tornado --uri URI --watch db.coll --port P
"""

import sys

import tornado.web
import tornado.websocket
from motor.motor_tornado import MotorClient

from .procs import run_baseline
from .wire import encode_change


class State:
    clients = set()
    ready = False


class BroadcastSocket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True  # benchmark clients send no Origin; loopback only anyway

    def open(self):
        State.clients.add(self)

    def on_message(self, message):
        pass  # clients only listen

    def on_close(self):
        State.clients.discard(self)


class Ready(tornado.web.RequestHandler):
    def get(self):
        self.set_status(200 if State.ready else 503)
        self.finish("ok\n" if State.ready else "not ready\n")


async def watch(uri, namespace):
    db, coll = namespace.split(".", 1)
    client = MotorClient(uri)
    # Motor runs the aggregate in __aenter__, so the stream is open (and no
    # later write is missed) once we set ready.
    async with client[db][coll].watch(full_document="updateLookup") as stream:
        State.ready = True
        print("READY", flush=True)
        async for change in stream:
            msg = encode_change(change)
            for c in list(State.clients):
                try:
                    await c.write_message(msg)
                except tornado.websocket.WebSocketClosedError:
                    State.clients.discard(c)


async def main(args):
    app = tornado.web.Application([(r"/ws", BroadcastSocket), (r"/readyz", Ready)])
    # backlog as gunicorn's default (2048) so 1,000 simultaneous connects
    # are not dropped at the listen queue; only fairness, not tuning.
    app.listen(args.port, address="127.0.0.1", backlog=2048)
    await watch(args.uri, args.watch)  # returns only if the stream ends


if __name__ == "__main__":
    sys.exit(run_baseline(main, __doc__))
