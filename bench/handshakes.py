"""A process that opens N connections at once and times each handshake.

Started by :mod:`.reconnect`; talks to the driver with lines::

    -> READY {}                       started, waiting for GO
    <- GO <epoch>                     open every connection at that moment
    -> DONE {"ms": [...], "failed": k, "errors": {...}}
                                      each connection's time from GO to its
                                      hello (or, without --hello, its
                                      upgrade); failures are not timed
    (then the connections are held, reading, until EOF on stdin or a kill)

All N connections are opened at the same moment, as clients coming back
after a network blip or a load balancer's restart would: no concurrency
cap, one attempt each (a handshake that does not finish within
``--timeout`` is a failure, not retried), so the time is what one client
waited.
"""

import argparse
import asyncio
import json
import sys
import time

from .connections import open_lean
from .procs import die_with_parent, raise_nofile


async def _one(url, hello, timeout, t0):
    link = None
    try:
        link = await open_lean(url, lambda _msg: None, timeout)
        if hello:
            first = await asyncio.wait_for(
                asyncio.shield(link.first_text), max(0.1, t0 + timeout - time.time())
            )
            if b'"hello"' not in first:
                raise RuntimeError(f"expected hello: {first[:80]!r}")
        return (time.time() - t0) * 1000.0, link, None
    except Exception as e:  # noqa: BLE001 - any failure is counted by type
        if link is not None:
            link.abort()
        return None, None, type(e).__name__


async def main(args):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    sys.stdout.write("READY {}\n")
    sys.stdout.flush()
    line = (await reader.readline()).decode().split()
    if not line or line[0] != "GO":
        return
    t0 = float(line[1])
    await asyncio.sleep(max(0.0, t0 - time.time()))  # the common start
    results = await asyncio.gather(
        *(_one(args.url, args.hello, args.timeout, t0) for _ in range(args.count))
    )
    errors = {}
    for _, _, err in results:
        if err:
            errors[err] = errors.get(err, 0) + 1
    sys.stdout.write(
        "DONE "
        + json.dumps(
            {
                "ms": [ms for ms, _, _ in results if ms is not None],
                "failed": sum(errors.values()),
                "errors": errors,
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    await reader.readline()  # held until EOF (or killed)
    links = [link for _, link, _ in results if link is not None]
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument(
        "--hello", action="store_true", help="a handshake ends with the server's hello"
    )
    args = p.parse_args(argv)
    die_with_parent()
    raise_nofile()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
