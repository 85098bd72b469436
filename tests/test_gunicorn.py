"""wsproxy/gunicorn.py, the packaged gunicorn config: it limits glibc's
malloc arenas in each worker (its post_fork hook): a worker's threads would
otherwise each get an arena and keep what they freed (the figures:
``python -m bench.arenas``)."""

import platform
import subprocess
import sys

import pytest

from .helpers import ROOT, scaled

# Eight threads each malloc at once (and hold it until all have), then
# glibc's malloc_info lists the arenas ("heaps") it has.
COUNT_ARENAS = r"""
import ctypes, logging, re, sys, threading
import wsproxy.gunicorn as config

class Worker:
    log = logging.getLogger("test")

if sys.argv[1] == "hook":
    config.post_fork(None, Worker())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
barrier = threading.Barrier(8)

def allocate():
    barrier.wait()
    libc.malloc(4096)
    barrier.wait()

threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
size = ctypes.c_size_t()
buf = ctypes.c_char_p()
libc.open_memstream.restype = ctypes.c_void_p
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(len(re.findall(rb'<heap nr="', ctypes.string_at(buf, size.value))))
"""


def _arenas(mode, tmp_path, **env):
    done = subprocess.run(
        [sys.executable, "-c", COUNT_ARENAS, mode],
        cwd=ROOT,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin", **env},
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's"
)
def test_the_packaged_post_fork_limits_malloc_arenas_to_two(tmp_path):
    assert _arenas("none", tmp_path) >= 8  # an arena per thread
    assert _arenas("hook", tmp_path) == 2
    # The operator's MALLOC_ARENA_MAX is left as it is.
    assert _arenas("hook", tmp_path, MALLOC_ARENA_MAX="3") == 3
