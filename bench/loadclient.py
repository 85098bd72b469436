"""A load-client process: N ``websockets`` connections on asyncio, one URL.

Started by :mod:`.clientpool`; talks to the driver with lines on
stdin/stdout (stderr is free for diagnostics)::

    -> CONNECTED {"ok": n, "failed": k, ...}   all connect attempts done
    <- FINISH <last_seq> <deadline_epoch>      the writer has finished
    -> RESULT {...}                            counts (latencies go to --out
                                               as float64 milliseconds, and
                                               with --seqs each one's seq to
                                               --out.seq as int64)

Each received change is parsed with a regex (:func:`.wire.change_seq_t`),
not JSON, and connections are "lean" by default (see :mod:`.connections`),
to keep the client processes from being the bottleneck. Latency is receive
time minus the document's ``t`` (both ``time.time()`` on this machine).

With ``--hold`` the connections stay open after RESULT (still reading,
no longer counted) until EOF on stdin: the driver can then take them all
away at once by killing the process (the mass-disconnect step).

With ``--deflate`` the connections offer permessage-deflate as browsers do.
RESULT then tells, from CONNECTED on (handshakes and hellos excluded), the
bytes read from the sockets (``wire_bytes``, lean connections only), the
change messages they carried (``changes``, warm-up included) and those
messages' inflated size (``payload_bytes``).

With ``--tenants N`` connection j subscribes to tenant ``first-index + j``
alone (``?filter=``, see :func:`.wire.tenant_filter`) and is done at the
last measured seq of its tenant.
"""

import argparse
import asyncio
import json
import resource
import sys
import time
from array import array
from urllib.parse import quote

from .connections import OPENERS
from .procs import die_with_parent, raise_nofile
from .wire import change_seq_t, tenant_filter, tenant_last_seq


class Conn:
    __slots__ = (
        "seen",
        "max_seq",
        "dups",
        "ooo",
        "done",
        "link",
        "closed",
        "tenant",
        "target",
    )

    def __init__(self, tenant=None):
        self.seen = set()
        self.max_seq = -1
        self.dups = 0
        self.ooo = 0
        self.done = False  # got the last seq, or closed: stop waiting
        self.link = None  # the open connection (see .connections)
        self.closed = False  # the connection ended before we closed it
        self.tenant = tenant  # its tenant's index (--tenants), or None
        self.target = None  # the last seq it is to get, once known


class Load:
    def __init__(self, args):
        self.args = args
        self.opener = OPENERS[args.client]
        self.conns = [
            Conn(args.first_index + j if args.tenants else None)
            for j in range(args.count)
        ]
        self.lat_ms = array("d")
        # The seq of each latency, for a driver that splits a run into
        # phases by seq (bench.snapshot); None: not recorded.
        self.seqs = array("q") if args.seqs else None
        self.first_recv = None
        self.last_recv = None
        self.stale = 0  # events from before this run (t < not_before)
        self.warmup = 0
        self.other = 0  # non-change messages (hello, status, ...)
        self.changes = 0  # change messages, warm-up and stale included
        self.payload = 0  # their bytes as received (inflated)
        self.target = None  # last seq, known once FINISH arrives
        self.pending = 0
        self.all_done = asyncio.Event()
        self.errors = {}  # final connect failures by exception type
        self.retries = 0  # failed connect attempts (retried or not)
        self.closing = False

    def _finished(self, c):
        if not c.done:
            c.done = True
            if self.target is not None:
                self.pending -= 1
                if self.pending <= 0:
                    self.all_done.set()

    def receiver(self, c):
        """The per-message callback for connection ``c``: the hot path."""
        first_seq, not_before = self.args.first_seq, self.args.not_before
        lat, seen, seqs = self.lat_ms, c.seen, self.seqs
        seq_t = change_seq_t
        now_f = time.time

        def on_message(msg):
            now = now_f()
            found = seq_t(msg)
            if found is None:
                self.other += 1
                return
            self.changes += 1
            self.payload += len(msg)
            seq, t = found
            if t < not_before:
                self.stale += 1
                return
            if seq < first_seq:
                self.warmup += 1
                return
            if seq in seen:
                c.dups += 1
                return
            seen.add(seq)
            if seq < c.max_seq:
                c.ooo += 1
            else:
                c.max_seq = seq
            lat.append((now - t) * 1000.0)
            if seqs is not None:
                seqs.append(seq)
            if self.first_recv is None:
                self.first_recv = now
            self.last_recv = now
            if c.target is not None and seq >= c.target:
                self._finished(c)

        return on_message

    async def _open(self, c, deadline):
        a = self.args
        err = None
        while time.monotonic() < deadline:
            link = None
            try:
                url = a.url
                if c.tenant is not None:
                    url += "?filter=" + quote(tenant_filter(c.tenant))
                link = await self.opener(
                    url,
                    self.receiver(c),
                    max(1.0, deadline - time.monotonic()),
                    deflate=a.deflate,
                )
                if a.hello:
                    # wsproxy greets first; a client counts as connected
                    # only once the server has it registered.
                    first = await asyncio.wait_for(
                        asyncio.shield(link.first_text),
                        max(0.1, deadline - time.monotonic()),
                    )
                    if b'"hello"' not in first:
                        raise RuntimeError(f"expected hello: {first[:80]}")
                return link
            except Exception as e:  # noqa: BLE001 - any failure: count it and retry
                err = type(e).__name__
                self.retries += 1
                if link is not None:
                    link.abort()
                await asyncio.sleep(0.1)  # retry back-off, bounded above
        self.errors[err] = self.errors.get(err, 0) + 1
        return None

    async def run_conn(self, c, sem, deadline):
        """Connect ``c``; return whether it worked. Watches it close."""
        # Bounded concurrent handshakes: a burst of 1,000 SYNs at once
        # overflows slow accept loops and costs 1 s SYN retransmits.
        async with sem:
            c.link = await self._open(c, deadline)
        if c.link is None:
            self._finished(c)
            return False
        c.link.closed.add_done_callback(lambda _: self._on_closed(c))
        return True

    def _on_closed(self, c):
        if not self.closing:
            c.closed = True
        self._finished(c)

    def finish(self, last_seq):
        self.target = last_seq
        for c in self.conns:
            c.target = (
                last_seq
                if c.tenant is None
                else tenant_last_seq(
                    c.tenant, self.args.tenants, self.args.first_seq, last_seq
                )
            )
        self.pending = sum(1 for c in self.conns if not c.done and c.max_seq < c.target)
        for c in self.conns:
            if not c.done and c.max_seq >= c.target:
                c.done = True
        if self.pending <= 0:
            self.all_done.set()

    def wire_bytes(self):
        """Bytes read by all open connections so far; None if not counted."""
        links = [c.link for c in self.conns if c.link is not None]
        if any(x.wire_bytes is None for x in links):
            return None
        return sum(x.wire_bytes for x in links)

    def result(self, timed_out, cpu_s, wire_bytes):
        cs = self.conns
        return {
            "connections": len(cs),
            "connected": sum(1 for c in cs if c.link is not None),
            "received": len(self.lat_ms),
            "dups": sum(c.dups for c in cs),
            "ooo": sum(c.ooo for c in cs),
            "closed_early": sum(1 for c in cs if c.closed),
            "incomplete": sum(
                1 for c in cs if c.link is not None and c.max_seq < (c.target or 0)
            ),
            "stale": self.stale,
            "warmup": self.warmup,
            "other": self.other,
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "timed_out": timed_out,
            "client_cpu_s": cpu_s,
            "changes": self.changes,
            "payload_bytes": self.payload,
            "wire_bytes": wire_bytes,
        }


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _stdin_lines():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    return reader


def _say(tag, obj):
    sys.stdout.write(f"{tag} {json.dumps(obj)}\n")
    sys.stdout.flush()


async def main(args):
    load = Load(args)
    stdin = await _stdin_lines()
    sem = asyncio.Semaphore(args.concurrency)
    deadline = time.monotonic() + args.connect_timeout
    oks = await asyncio.gather(*(load.run_conn(c, sem, deadline) for c in load.conns))
    _say(
        "CONNECTED",
        {
            "ok": sum(oks),
            "failed": len(oks) - sum(oks),
            "errors": load.errors,
            "retries": load.retries,
        },
    )
    cpu0 = _cpu()
    # Nothing but handshakes and hellos has been read yet: the writer
    # starts once every client process has said CONNECTED.
    wire0 = load.wire_bytes()

    timed_out = False
    line = (await stdin.readline()).decode().split()
    if line and line[0] == "FINISH":
        load.finish(int(line[1]))
        wait = max(0.0, float(line[2]) - time.time())
        try:
            await asyncio.wait_for(load.all_done.wait(), wait)
        except TimeoutError:
            timed_out = True
    # else: EOF or garbage -- the driver is gone; just clean up.

    load.closing = True
    with open(args.out, "wb") as f:
        load.lat_ms.tofile(f)
    if load.seqs is not None:
        with open(args.out + ".seq", "wb") as f:
            load.seqs.tofile(f)
    wire = load.wire_bytes()
    _say(
        "RESULT",
        load.result(timed_out, _cpu() - cpu0, None if wire is None else wire - wire0),
    )
    if args.hold and line:
        await stdin.readline()  # EOF (or any line): now close
    # Close politely but boundedly (each close() has its own timeout).
    links = [c.link for c in load.conns if c.link is not None]
    if links:
        await asyncio.gather(*(x.close() for x in links), return_exceptions=True)


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True, help="latency file (float64 ms)")
    p.add_argument(
        "--first-seq",
        type=int,
        default=0,
        help="seqs below this are warm-up: not recorded",
    )
    p.add_argument(
        "--not-before",
        type=float,
        default=0.0,
        help="ignore documents with t before this (older runs)",
    )
    p.add_argument(
        "--tenants",
        type=int,
        default=0,
        metavar="N",
        help="each connection subscribes to one tenant of N",
    )
    p.add_argument(
        "--first-index",
        type=int,
        default=0,
        help="with --tenants: the first connection's tenant",
    )
    p.add_argument(
        "--hello",
        action="store_true",
        help="wait for the server's hello before counting a connection as established",
    )
    p.add_argument(
        "--seqs", action="store_true", help="also write each latency's seq to OUT.seq"
    )
    p.add_argument(
        "--hold",
        action="store_true",
        help="keep the connections open after RESULT until EOF",
    )
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument(
        "--concurrency", type=int, default=32, help="handshakes in flight at once"
    )
    p.add_argument(
        "--client",
        choices=sorted(OPENERS),
        default="lean",
        help="connection implementation (see .connections)",
    )
    p.add_argument(
        "--deflate", action="store_true", help="offer permessage-deflate as browsers do"
    )
    args = p.parse_args(argv)
    die_with_parent()
    raise_nofile()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
