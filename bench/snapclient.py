"""A snapshot client process: K connections taking ``snapshot=1``
snapshots of one collection back to back.

Started by :mod:`.snapshot`; talks to the driver with lines on
stdin/stdout, like :mod:`.loadclient`::

    -> READY {}          imported; nothing connected yet
    <- GO                start taking snapshots
    <- STOP              stop (or after --snapshots N in all): in-flight
                         snapshots are abandoned, connections closed
    -> RESULT {...}      one record per finished snapshot, failures, CPU

A record is ``[ms, bytes, count, complete, end]``: milliseconds from the
start of the TCP connect to the arrival of ``snapshot_end`` (what a
reconnecting page waits for), the payload bytes of every message up to and
including it (frame headers add about 10 bytes per 64 KiB message), the
``count`` and ``complete`` it reported, and when it arrived (epoch).

Connections are lean (see :mod:`.connections`) and ``snapshot`` messages
are recognised by their first bytes, never parsed: decoding 9 MB of JSON
per snapshot would make this process, not the server, the bottleneck.
The next snapshot starts as soon as ``snapshot_end`` arrived; the old
connection closes in the background.
"""

import argparse
import asyncio
import json
import resource
import sys
import time

from .connections import open_lean
from .procs import die_with_parent

_SNAPSHOT = b'{"type": "snapshot", '
_END = b'{"type": "snapshot_end"'


class Take:
    """What one connection received, until its ``snapshot_end``."""

    def __init__(self):
        self.bytes = 0
        self.end = asyncio.get_running_loop().create_future()
        self.end_monotonic = None

    def on_message(self, data):
        if self.end.done():
            return  # live changes after the snapshot: not counted
        self.bytes += len(data)
        head = bytes(data[: len(_END)])
        if head.startswith(_SNAPSHOT):
            return
        if head == _END:
            self.end_monotonic = time.monotonic()
            self.end.set_result(json.loads(bytes(data)))


class Snapshotters:
    def __init__(self, args):
        self.args = args
        self.records = []
        self.failures = {}
        self.left = args.snapshots or None  # None: until STOP
        self.abandoned = 0  # cut short by STOP
        self.closers = set()  # background closes

    async def take_one(self):
        """One snapshot on a new connection; closes it in the background."""
        take = Take()
        t0 = time.monotonic()
        link = await open_lean(self.args.url, take.on_message, self.args.timeout)
        try:
            await asyncio.wait(
                [take.end, link.closed],
                timeout=self.args.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not take.end.done():
                code = link.ws.close_code if link.closed.done() else None
                raise RuntimeError(f"no snapshot_end (close code {code})")
            end = take.end.result()
            self.records.append(
                [
                    round((take.end_monotonic - t0) * 1000.0, 3),
                    take.bytes,
                    end.get("count"),
                    end.get("complete"),
                    time.time(),
                ]
            )
        finally:
            closer = asyncio.ensure_future(link.close())
            self.closers.add(closer)
            closer.add_done_callback(self.closers.discard)

    async def worker(self):
        while self.left is None or self.left > 0:
            if self.left is not None:
                self.left -= 1
            try:
                await self.take_one()
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
            except Exception as e:  # noqa: BLE001 - counted: a failure is a result
                key = f"{type(e).__name__}: {e}"[:120]
                self.failures[key] = self.failures.get(key, 0) + 1
                await asyncio.sleep(0.1)  # retry back-off, not synchronisation

    async def run(self, stop):
        """Take snapshots until ``stop`` (a future) or the budget is spent."""
        workers = [
            asyncio.ensure_future(self.worker()) for _ in range(self.args.concurrency)
        ]
        everyone = asyncio.ensure_future(asyncio.gather(*workers))
        await asyncio.wait([everyone, stop], return_when=asyncio.FIRST_COMPLETED)
        for w in workers:
            w.cancel()
        await asyncio.gather(everyone, return_exceptions=True)

    async def close(self):
        if self.closers:
            await asyncio.gather(*self.closers, return_exceptions=True)


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _say(tag, obj):
    sys.stdout.write(f"{tag} {json.dumps(obj)}\n")
    sys.stdout.flush()


async def main(args):
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    _say("READY", {})
    if (await stdin.readline()).strip() != b"GO":
        return  # EOF: the driver is gone
    cpu0 = _cpu()
    # Any further line (STOP) or EOF stops the run.
    stop = asyncio.ensure_future(stdin.readline())
    snaps = Snapshotters(args)
    await snaps.run(stop)
    _say(
        "RESULT",
        {
            "records": snaps.records,
            "failures": snaps.failures,
            "abandoned": snaps.abandoned,
            "client_cpu_s": _cpu() - cpu0,
        },
    )
    stop.cancel()
    await snaps.close()


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--url",
        required=True,
        help="a snapshot=1 URL: ws://host/ws?snapshot=1&ns=db.coll",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="connections taking snapshots at once",
    )
    p.add_argument(
        "--snapshots",
        type=int,
        default=0,
        help="stop after this many in all (0: at STOP)",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="max seconds for one snapshot"
    )
    args = p.parse_args(argv)
    die_with_parent()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
