"""The floor under any server's CPU per delivered message: one ``send``.

A broadcast that never waits to fill a batch writes each event to each
client on its own when events arrive one at a time (50 a second is one at
a time). This measures what that write alone costs the sending process:
``sock.send(frame, MSG_DONTWAIT)`` of a frame of ``--size`` bytes to each
of ``--clients`` loopback TCP sockets, ``--events`` times with a 20 ms
gap, while a child process reads every socket. CPU is the sender's user +
system time (on loopback the kernel does the receiver's TCP work in the
sender's system time too), per send. Nothing else is done per message, so
no server, in any language, can spend less per delivered message here.

    python -m bench.sendfloor [--clients 1000] [--events 200] [--size 900]
"""

import argparse
import multiprocessing
import selectors
import socket
import sys
import time


def _reader(port, count, ready):
    """The clients: ``count`` connections, read until each is closed."""
    selector = selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    ready.set()
    while selector.get_map():
        for key, _ in selector.select(1):
            try:
                if not key.fileobj.recv(1 << 16):
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
            except BlockingIOError:
                pass


def measure(clients, events, size):
    """CPU microseconds per send."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=clients)
    ready = multiprocessing.Event()
    child = multiprocessing.Process(
        target=_reader,
        args=(listener.getsockname()[1], clients, ready),
        name="sendfloor-reader",
    )
    child.start()
    conns = [listener.accept()[0] for _ in range(clients)]
    ready.wait(60)
    # A text frame header for 126..65535 bytes, then the payload.
    frame = b"\x81\x7e" + size.to_bytes(2, "big") + b"x" * size
    cpu0 = time.process_time()
    for _ in range(events):
        for conn in conns:
            conn.send(frame, socket.MSG_DONTWAIT)
        time.sleep(0.02)  # the gap between events: one at a time
    cpu = time.process_time() - cpu0
    for conn in conns:
        conn.close()
    child.join(60)
    listener.close()
    return cpu / (clients * events) * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--size", type=int, default=900)
    args = p.parse_args(argv)
    us = measure(args.clients, args.events, args.size)
    print(
        f"{args.clients} loopback sockets x {args.events} events of "
        f"{args.size} bytes: {us:.2f} us of CPU per send (user + system)"
    )


if __name__ == "__main__":
    sys.exit(main())
