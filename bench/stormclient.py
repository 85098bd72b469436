"""A process of N clients that behave like the bundled clients across a
restart (see :mod:`.storm`).

Each client resumes after the last id it received, presents the last
hello's reconnect ticket (unless ``--no-tickets``), reconnects at once
after a close, waits ``Retry-After`` (at least its backoff) after a 429,
and backs off 0.5 s doubling to 30 s (``--backoff-max``), with jitter,
after a failure (from the attempts since the last connection that stayed
up ``STABLE_AFTER``): the policy of ``wsproxy.client`` and
``wsproxy-client.js``. Line protocol::

    -> READY {}                      every client has had its first hello
    <- MARK <epoch>                  the server restarts now
    <- FINISH <last seq> <deadline>  the writer is done
    -> RESULT {...}                  back_ms: each client's time from MARK
                                     to its first hello after it; refused:
                                     429s after MARK; lost, dups; resumes:
                                     hello "resume" values after MARK
"""

import argparse
import asyncio
import collections
import json
import random
import sys
import time
import urllib.parse

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from wsproxy.client import STABLE_AFTER

from .procs import die_with_parent, raise_nofile


class Client:
    def __init__(self):
        self.last_id = None
        self.ticket = None
        self.seqs = set()
        self.dups = 0
        self.hellos = []  # (epoch, resume)
        self.refused = []  # epochs of 429s
        self.failures = []  # (epoch, why) of other failed attempts


async def run(client, url, tickets, stop, backoff_max=30.0):
    attempt = 0
    while not stop.is_set():
        query = {}
        if client.last_id:
            query["resume_after"] = client.last_id
        if tickets and client.ticket:
            query["ticket"] = client.ticket
        target = url + ("?" + urllib.parse.urlencode(query) if query else "")
        opened = None
        closed = False
        floor = 0.0
        try:
            async with connect(
                target, compression=None, proxy=None, max_size=None, open_timeout=30
            ) as ws:
                opened = time.monotonic()
                async for raw in ws:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "change":
                        seq = message["event"]["fullDocument"]["seq"]
                        if seq in client.seqs:
                            client.dups += 1
                        client.seqs.add(seq)
                        client.last_id = message["id"]
                    elif kind == "hello":
                        client.hellos.append((time.time(), message["resume"]))
                        client.ticket = message.get("ticket")
            closed = True  # by the server (1001 on a deploy)
        except InvalidStatus as exc:
            if exc.response.status_code == 429:
                client.refused.append(time.time())
                floor = float(exc.response.headers.get("Retry-After") or 1)
            else:
                client.failures.append(
                    (time.time(), f"HTTP {exc.response.status_code}")
                )
        except Exception as exc:  # noqa: BLE001 - the server is away: back off
            client.failures.append((time.time(), type(exc).__name__))
        # As the bundled clients do: a connection that stayed up a while
        # starts the backoff afresh, and the delay follows the attempts
        # made since (computed now, not before the attempt that failed).
        if opened is not None and time.monotonic() - opened >= STABLE_AFTER:
            attempt = 0
        if closed:
            continue  # reconnect at once
        delay = min(backoff_max, 0.5 * 2**attempt)
        attempt += 1
        backoff = max(delay / 2 + random.uniform(0, delay / 2), floor)
        try:
            await asyncio.wait_for(stop.wait(), backoff)
        except TimeoutError:
            pass


async def main(args):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    stop = asyncio.Event()
    clients = [Client() for _ in range(args.count)]
    tasks = [
        asyncio.create_task(run(c, args.url, args.tickets, stop, args.backoff_max))
        for c in clients
    ]
    while not all(c.hellos for c in clients):
        await asyncio.sleep(0.1)  # polling our own clients' state
    print("READY {}", flush=True)
    mark = float((await reader.readline()).decode().split()[1])
    line = (await reader.readline()).decode().split()
    last_seq, deadline = int(line[1]), float(line[2])
    want = set(range(last_seq + 1))
    while time.time() < deadline and not all(want <= c.seqs for c in clients):
        await asyncio.sleep(0.1)
    stop.set()
    for task in tasks:
        task.cancel()  # each connection closes as its task unwinds
    await asyncio.gather(*tasks, return_exceptions=True)
    back = [next((t for t, _ in c.hellos if t > mark), None) for c in clients]
    print(
        "RESULT "
        + json.dumps(
            {
                "back_ms": [None if t is None else (t - mark) * 1000 for t in back],
                "refused": sum(1 for c in clients for t in c.refused if t > mark),
                "failures": collections.Counter(
                    why for c in clients for t, why in c.failures if t > mark
                ),
                # When they failed: "<why> <whole seconds after MARK>".
                "failures_by_second": collections.Counter(
                    f"{why} {int(t - mark)}"
                    for c in clients
                    for t, why in c.failures
                    if t > mark
                ),
                "lost": sum(len(want - c.seqs) for c in clients),
                "dups": sum(c.dups for c in clients),
                "resumes": [r for c in clients for t, r in c.hellos if t > mark],
            }
        ),
        flush=True,
    )


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--no-tickets", dest="tickets", action="store_false")
    p.add_argument(
        "--backoff-max",
        type=float,
        default=30.0,
        help="cap on the backoff after a failure (the bundled clients': 30 s)",
    )
    args = p.parse_args(argv)
    die_with_parent()
    raise_nofile()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
