"""Benchmark for wsproxy against two baseline broadcast servers.

``python -m bench`` starts one SecantusDB, then for every client
count in the sweep and every server (wsproxy under gunicorn, a Tornado + Motor
baseline, an asyncio ``websockets`` baseline) it starts a fresh server
process, connects M WebSocket clients spread over several client processes,
writes documents at a fixed rate and measures what the clients receive
(throughput, latency, losses) and what the server spends (CPU seconds,
also per 100,000 delivered messages; RSS and threads per connection, from
the server's process tree idle and with all M clients connected).

Run from the repository root (wsproxy needs its ``wsgi.py`` and
``gunicorn.conf.py``)::

    python -m bench                # 1,100,1000 clients, 50/s, 10 s
    python -m bench --quick        # smoke: 1,10 clients, 2 s
    python -m bench --servers tornado,websockets --clients 1,100 \
        --duration 3 --json results.json
    python -m bench --deflate --mix demo --servers compression \
        --clients 100,1000          # issue 14: compression compared
    python -m bench --clients 100,1000 --mass-disconnect --sigterm
    python -m bench --clients 100 --burst 10000

``--burst N`` replaces the measured rate*duration writes with N documents
inserted back to back (``insert_many``, 500 a chunk, each carrying seq and
t so latency, loss and duplicates count as usual); the warm-up is still
written at ``--rate`` (``--warmup 0`` skips it). msgs/s is then the
delivery rate from the first measured write to the last message received;
CPU per message is the point. ``--drain`` defaults to 30 + M*N/10,000 s.

``--mass-disconnect`` adds a step after the measured phase (see
:mod:`.disconnect`): a bystander client connects, a second writer writes at
``--rate``, and ``--stall-before`` s (default 2) later every client process
is SIGKILLed at once (M sockets closed by the kernel, no close frames);
the bystander records ``--stall-window`` s (default 5) more. Reported: its
p50 before, max after, ``stall_ms`` (their difference) and, for wsproxy,
how long until ``/readyz`` counted the clients gone. ``--sigterm`` ends
each run by SIGTERMing the server's process group with M clients connected
(a fresh M after a mass disconnect) and reports the seconds until its
whole process tree is gone. The report then adds a table of both steps,
and every report a table of wsproxy beside the asyncio baseline (CPU per
message and p99 as ratios, threads and KB per connection, stall, SIGTERM)
with the issue's targets.

Clients are "lean" (websockets' sans-I/O protocol on a bare asyncio
Protocol) unless ``--client asyncio``; see :mod:`.connections` for why.
With ``--deflate`` they offer permessage-deflate as browsers do and count
the bytes they receive; ``--mix demo`` writes the demo's mix of order
changes (see :mod:`.mix`), and the report adds a compression table: wire
bytes and server CPU per delivered event against ``wsproxy-off``.

``python -m bench.snapshot`` is a focused benchmark of live documents:
live-event latency without and with full-size snapshots being taken on
the same worker, and what a snapshot client's reconnect costs (see
:mod:`.snapshot`).

One concept per module:

- ``__main__``      command line
- ``driver``        the sweep: SecantusDB lifecycle, runs, report, cleanup
- ``run``           one measured run of one server with M clients
- ``servers``       how to start each server and wait until it is ready
- ``procs``         process plumbing: spawning, stopping, CPU/RSS sampling
- ``clientpool``    driver side of the client processes
- ``disconnect``    the mass-disconnect step: bystander, kill, stall
- ``loadclient``    a client process: N connections, per-message records
- ``connections``   the two client connection implementations
- ``writer``        the writer process: inserts (or updates) at a fixed
                    rate, or a burst
- ``mix``           the demo's mix of order changes, measurable
- ``idcost``        ``python -m bench.idcost``: what the sealed ids cost
                    once compressed
- ``wire``          the shared message format (encode and cheap parse)
- ``report``        statistics, the table, ratios, JSON output
- ``baseline_tornado``, ``baseline_websockets``  the two baseline servers
- ``snapshot``      ``python -m bench.snapshot``: command line and the run
- ``snapclient``    a process of snapshot clients, back to back
- ``sendfloor``     ``python -m bench.sendfloor``: the CPU of one loopback
                    ``send`` per client per event, under any server's cost
                    per delivered message when events come one at a time
- ``streamprobe``   a plain change stream: the database's own latency
- ``snapreport``    its statistics, table and JSON
"""
