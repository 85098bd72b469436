"""Driver side of the load-client processes (:mod:`.loadclient`).

Spreads M connections over P processes, talks to each over its
stdin/stdout line protocol (every wait has a timeout), and merges their
results and latency files. ``close()`` always stops every process group.
With ``seqs=True`` the clients also record each latency's seq, and
``finish`` leaves them in ``self.seqs`` (parallel to the latencies).
With ``tenants=True`` client k of M subscribes to tenant k's documents
alone (the tenant scenario, ``python -m bench --tenants``).
With ``hold=True`` the connections outlive ``finish`` until ``close()``
(EOF: each closes politely) or ``kill()`` (SIGKILL to every process at
once: the kernel drops all their sockets, no close frames).
"""

import os
import signal
import subprocess
import sys
import time
from array import array

from . import procs


class ClientPool:
    def __init__(
        self,
        url,
        total,
        nprocs,
        workdir,
        *,
        hello=False,
        first_seq=0,
        not_before=0.0,
        connect_timeout=60.0,
        client="lean",
        seqs=False,
        deflate=False,
        hold=False,
        tenants=False,
    ):
        self.total = total
        self.hold = hold
        self.workdir = workdir
        self.children = []
        self.seqs = array("q") if seqs else None
        nprocs = max(1, min(nprocs, total))
        base, extra = divmod(total, nprocs)
        self._args = dict(
            url=url,
            hello=hello,
            first_seq=first_seq,
            not_before=not_before,
            connect_timeout=connect_timeout,
            client=client,
            deflate=deflate,
            tenants=total if tenants else 0,
        )
        self._counts = [base + (1 if i < extra else 0) for i in range(nprocs)]

    def _argv(self, i, count):
        a = self._args
        argv = [
            sys.executable,
            "-m",
            "bench.loadclient",
            "--url",
            a["url"],
            "--count",
            str(count),
            "--out",
            os.path.join(self.workdir, f"lat-{i}.bin"),
            "--first-seq",
            str(a["first_seq"]),
            "--not-before",
            repr(a["not_before"]),
            "--connect-timeout",
            str(a["connect_timeout"]),
            "--client",
            a["client"],
        ]
        return (
            argv
            + (["--hello"] if a["hello"] else [])
            + (["--deflate"] if a["deflate"] else [])
            + (["--hold"] if self.hold else [])
            + (["--seqs"] if self.seqs is not None else [])
            + (
                [
                    "--tenants",
                    str(a["tenants"]),
                    "--first-index",
                    str(sum(self._counts[:i])),
                ]
                if a["tenants"]
                else []
            )
        )

    def start(self):
        log = os.path.join(self.workdir, "clients.log")
        for i, n in enumerate(self._counts):
            if n:
                self.children.append(
                    procs.LineChild(f"client proc {i}", self._argv(i, n), log)
                )
                self.children[-1].index = i
        return self

    def wait_connected(self):
        """Block until every process has tried all its connections."""
        deadline = time.monotonic() + self._args["connect_timeout"] + 30
        ok = failed = retries = 0
        errors = {}
        for c in self.children:
            r = c.expect("CONNECTED", deadline)
            ok += r["ok"]
            failed += r["failed"]
            retries += r.get("retries", 0)
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {"ok": ok, "failed": failed, "retries": retries, "errors": errors}

    def finish(self, last_seq, drain_timeout):
        """Tell clients the last seq; merge their results and latencies."""
        deadline_epoch = time.time() + drain_timeout
        for c in self.children:
            c.send(f"FINISH {last_seq} {deadline_epoch!r}")
        deadline = time.monotonic() + drain_timeout + 30
        merged = {}
        lat = array("d")
        for c in self.children:
            r = c.expect("RESULT", deadline)
            for k, v in r.items():
                if k == "first_recv":
                    merged[k] = min(
                        (x for x in (merged.get(k), v) if x is not None), default=None
                    )
                elif k == "last_recv":
                    merged[k] = max(
                        (x for x in (merged.get(k), v) if x is not None), default=None
                    )
                elif isinstance(v, bool):
                    merged[k] = merged.get(k, False) or v
                elif v is None or (k in merged and merged[k] is None):
                    merged[k] = None  # not counted by some process
                else:
                    merged[k] = merged.get(k, 0) + v
            path = os.path.join(self.workdir, f"lat-{c.index}.bin")
            with open(path, "rb") as f:
                lat.frombytes(f.read())
            if self.seqs is not None:
                with open(path + ".seq", "rb") as f:
                    self.seqs.frombytes(f.read())
        return merged, lat

    def kill(self):
        """SIGKILL every client process group back to back; return the
        ``time.time()`` of the first signal (they die together)."""
        t = time.time()
        for c in self.children:
            try:
                os.killpg(c.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for c in self.children:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        return t

    def close(self):
        for c in self.children:
            if c.proc.stdin:
                try:
                    c.proc.stdin.close()  # EOF: clients clean up and exit
                except OSError:
                    pass
        deadline = time.monotonic() + 8
        for c in self.children:
            try:  # they close their sockets boundedly, then exit by themselves
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            procs.stop_group(c.proc, timeout=5.0)
