"""Process plumbing shared by the driver and its child processes.

Spawning children in their own session (so a whole server tree can be
signalled as one process group), stopping them with escalation, raising the
file-descriptor limit, and sampling a server's process tree (CPU seconds,
RSS and threads) with psutil.
"""

import ctypes
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time

import psutil

_PR_SET_PDEATHSIG = 1


def raise_nofile():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft.

    1,000 sockets per run (plus the server's side of them when it inherits
    our limits) is over the usual soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is still capped by fs.nr_open; pick a sane value.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def die_with_parent():
    """Ask Linux to SIGKILL this process when its parent dies.

    Called by our own child processes at start-up (not via ``preexec_fn``,
    which is unsafe in a threaded parent), so a driver killed with -9 does
    not leave clients, writers or baselines running.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_baseline(main, doc, argv=None, add_arguments=None):
    """The command line every baseline server shares: parse --uri, --watch
    and --port (and what ``add_arguments(parser)`` adds), tie the process
    to its parent, and run ``main(args)``."""
    import argparse
    import asyncio

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--watch", default="bench.events")
    p.add_argument("--port", type=int, required=True)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    die_with_parent()
    raise_nofile()
    asyncio.run(main(args))
    return 1  # the change stream ended: a failure for a long-lived server


def exec_with_parent_death(argv):
    """``argv`` prefixed so the program dies with us, for foreign programs.

    PR_SET_PDEATHSIG survives execve, so a tiny Python stub sets it and
    execs the real program (gunicorn) in the same pid.
    """
    return [sys.executable, "-m", "bench.procs", "--exec"] + argv


# The repository root, holding the bench and wsproxy packages: children run
# ``python -m bench.*`` whatever their working directory.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(env=None):
    env = dict(os.environ if env is None else env)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_PARENT + os.pathsep + path if path else _PACKAGE_PARENT
    return env


def spawn(argv, *, stdout=None, stderr=None, stdin=None, env=None, cwd=None):
    """Popen in a new session: its pid is the pgid of everything it starts."""
    return subprocess.Popen(
        argv,
        stdout=stdout,
        stderr=stderr,
        stdin=stdin,
        env=child_env(env),
        cwd=cwd,
        start_new_session=True,
    )


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def gone(p):
    """Whether psutil.Process ``p`` has exited (a zombie counts as gone)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def stop_group(proc, timeout=10.0, sig=signal.SIGTERM):
    """Stop ``proc`` and its process group; return how it went.

    ``sig`` first, SIGKILL after ``timeout``. A final SIGKILL to the group
    catches stragglers (e.g. gunicorn workers outliving their master).
    Returns "exited", "terminated" or "killed".
    """
    if proc is None:
        return "none"
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)
        return "exited"
    _killpg(proc.pid, sig)
    how = "terminated"
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        how = "killed"
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    _killpg(proc.pid, signal.SIGKILL)
    return how


class LineChild:
    """A child process speaking a line protocol: ``TAG <json>`` on stdout.

    A reader thread queues stdout lines so every wait has a deadline, even
    if the child hangs without writing anything.
    """

    def __init__(self, name, argv, log_path):
        self.name = name
        self.lines = queue.Queue()
        with open(log_path, "ab") as log:
            self.proc = spawn(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        threading.Thread(target=self._read, daemon=True, name=f"{name}-stdout").start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)  # EOF

    def expect(self, tag, deadline):
        """The payload (JSON-decoded) of the next ``tag`` line.

        ``deadline`` is a ``time.monotonic()`` value; raises TimeoutError
        after it, RuntimeError if the child exits first.
        """
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {tag} in time")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)  # stay at EOF for later calls
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.poll()}) before {tag}"
                )
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])

    def send(self, line):
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone; expect() will say so


class TreeMonitor:
    """Samples a process tree in a background thread.

    Tracks peak RSS (summed over the tree; shared pages count once per
    process, as ``ps`` would) and answers CPU seconds (user+sys of the tree,
    including reaped children) on demand.
    """

    def __init__(self, pid, interval=0.2):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self._procs = {pid: self.root}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def _members(self):
        try:
            kids = self.root.children(recursive=True)
        except psutil.Error:
            kids = []
        with self._lock:
            for p in kids:
                # Keep the first Process object: its cached create_time
                # guards against pid reuse.
                self._procs.setdefault(p.pid, p)
            return [p for p in self._procs.values() if p.is_running()]

    def rss(self):
        total = 0
        for p in self._members():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, total)
        return total

    def threads(self):
        """Threads of every live process of the tree, summed."""
        total = 0
        for p in self._members():
            try:
                total += p.num_threads()
            except psutil.Error:
                pass
        return total

    def members(self):
        """The tree's live processes (psutil.Process), the root included."""
        return self._members()

    def cpu_seconds(self):
        total = 0.0
        for p in self._members():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.rss()

    def start(self):
        self.rss()
        self._thread = threading.Thread(
            target=self._loop, daemon=True, name="tree-monitor"
        )
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(2)


def guard(pid):
    """Kill ``pid``'s process group if this (driver) process dies.

    For processes we cannot start ourselves (SecantusDB via EmbeddedMongo):
    a small watchdog holds a pipe from us; EOF on it -- our exit, even by
    SIGKILL -- makes it SIGKILL the group. Returns the watchdog's Popen;
    closing its stdin (or ``stop_group``) ends it without killing anything
    once the guarded process is gone.
    """
    create = psutil.Process(pid).create_time()
    return subprocess.Popen(
        [sys.executable, "-m", "bench.procs", "--guard", str(pid), repr(create)],
        stdin=subprocess.PIPE,
        env=child_env(),
        start_new_session=True,
    )


def _guard_main(pid, create_time):
    sys.stdin.buffer.read()  # blocks until the driver closes or dies
    try:
        if psutil.Process(pid).create_time() == create_time:  # not reused
            os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["--exec"]:
        die_with_parent()
        os.execv(sys.argv[2], sys.argv[2:])
    elif sys.argv[1:2] == ["--guard"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's
        _guard_main(int(sys.argv[2]), float(sys.argv[3]))
