"""The mass-disconnect step: what 1,000 vanishing clients cost a bystander.

Run by :mod:`.run` after the measured phase (``--mass-disconnect``), with
the M pool clients still connected (``ClientPool(hold=True)``):

1. a *bystander* -- one more load client, its own process -- connects;
2. a second writer writes at ``--rate`` for ``--stall-before`` +
   ``--stall-window`` seconds (seqs after the measured ones); the held
   pool clients go on receiving, so the server is under the run's load;
3. ``--stall-before`` s after its first write, every pool process is
   SIGKILLed at once: the kernel closes all M sockets at the same instant,
   with no close frames;
4. for wsproxy, ``/readyz`` is polled until its ``"clients"`` is down to
   the bystander alone (``gone_s``; the baselines do not count: None);
5. once the writer is done the bystander waits (at most ``--drain`` s,
   default 10) for its last seq, and reports every event's latency.

Each event's receive time is its send time (the writer's ``sent_at``)
plus its latency, which splits them into before and after the kill.
``stall_ms`` is the worst latency after the kill minus the median before.
"""

import os
import sys
import time

from . import procs
from .clientpool import ClientPool


def _wait_gone(server, want, deadline):
    """Seconds-since-epoch when /readyz first counts ``want`` clients or
    fewer; None if that does not happen by ``deadline`` (monotonic)."""
    while time.monotonic() < deadline:
        body = server.ready_json()
        if isinstance(body, dict) and body.get("clients", want + 1) <= want:
            return time.time()
        time.sleep(0.02)  # polling the server's count, not synchronisation
    return None


def mass_disconnect(server, pool, monitor, opts, db_uri, namespace, workdir, seq_base):
    """Run the step; return its raw dict (see
    :func:`.report.disconnect_summary`)."""
    before, window = opts.stall_before, opts.stall_window
    sub = os.path.join(workdir, "bystander")
    os.makedirs(sub, exist_ok=True)
    out = {
        "before_s": before,
        "window_s": window,
        "killed": pool.total,
        "seq_base": seq_base,
    }
    bystander = ClientPool(
        server.url,
        1,
        1,
        sub,
        hello=server.spec.hello,
        first_seq=seq_base,
        not_before=time.time(),
        connect_timeout=opts.connect_timeout,
        client=opts.client,
        seqs=True,
    ).start()
    writer = None
    try:
        conn = bystander.wait_connected()
        if conn["ok"] != 1:
            raise RuntimeError(f"bystander did not connect: {conn}")
        writer = procs.LineChild(
            "stall writer",
            [
                sys.executable,
                "-m",
                "bench.writer",
                "--uri",
                db_uri,
                "--ns",
                namespace,
                "--rate",
                str(opts.rate),
                "--duration",
                str(before + window),
                "--seq-base",
                str(seq_base),
            ],
            os.path.join(sub, "writer.log"),
        )
        deadline = time.monotonic() + before + window + 60
        t_first = writer.expect("MEASURE", deadline)
        time.sleep(max(0.0, t_first + before - time.time()))  # the schedule
        cpu0 = monitor.cpu_seconds()
        t_kill = pool.kill()
        out["kill_wait_s"] = time.time() - t_kill
        if server.spec.hello:  # wsproxy: /readyz counts its clients
            t_gone = _wait_gone(server, 1, time.monotonic() + window + 30)
            out["gone_s"] = None if t_gone is None else t_gone - t_kill
        done = writer.expect("DONE", deadline)
        out["cpu_s"] = monitor.cpu_seconds() - cpu0
        recv, lat = bystander.finish(done["last_seq"], opts.drain or 10.0)
        out.update(
            t_kill=t_kill,
            writes=done["written"],
            sent_at=done["sent_at"],
            seqs=list(bystander.seqs),
            lat_ms=list(lat),
            dups=recv.get("dups", 0),
            closed=recv.get("closed_early", 0),
        )
    finally:
        if writer:
            procs.stop_group(writer.proc, timeout=5)
        bystander.close()
    return out
