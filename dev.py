#!/usr/bin/env python3
"""Set up and run wsproxy with nothing but Python 3.11+ and the registries.

    python3 dev.py demo    # venv + deps, then the demo on the embedded server
    python3 dev.py test    # venv + deps + Chromium, lint and types, docs, then tests
    python3 dev.py bench   # venv + deps, then the fan-out benchmark
    python3 dev.py docs    # venv + deps, then the documentation on :8001

Extra arguments go to gunicorn, pytest (both passes of `test`: see test()),
the benchmark or mkdocs serve. `python3 dev.py test -m "not slow"` is the
inner loop.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "bin")
PY = os.path.join(BIN, "python")
CHROMIUM = "/usr/bin/chromium"


def run(*cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_venv():
    """Create .venv and install requirements.txt when it changed."""
    if sys.version_info < (3, 11):
        sys.exit("wsproxy needs Python 3.11 or newer")
    if not os.path.exists(PY):
        venv.create(VENV, with_pip=True)
    with open(os.path.join(ROOT, "requirements.txt"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(VENV, ".requirements.sha256")
    if not os.path.exists(stamp) or open(stamp).read() != digest:
        run(PY, "-m", "pip", "install", "-q", "-r",
            os.path.join(ROOT, "requirements.txt"))
        with open(stamp, "w") as f:
            f.write(digest)


def compile_sources():
    """Byte-compile the checkout, as pip does for an installed wheel. With
    PYTHONDONTWRITEBYTECODE set (as on CI machines and in many containers)
    every gunicorn worker, test server and benchmark process would otherwise
    compile the package again: 0.17 s of CPU per start, a hundred times in a
    test run, and in the worker's start-up time a deploy waits for."""
    run(PY, "-m", "compileall", "-q", "-j", "0", "wsproxy", "tests", "demo",
        "bench", "wsgi.py", "gunicorn.conf.py")


def ensure_chromium():
    """The browser tests drive Debian's chromium (Playwright's own browser
    download cannot work offline)."""
    if os.path.exists(CHROMIUM):
        return
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    if shutil.which(apt[0]) is None or shutil.which("apt-get") is None:
        sys.exit("the browser tests need Debian's chromium at /usr/bin/chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(*apt, "update", "-qq", env=env)
    run(*apt, "install", "-y", "-qq", "chromium", env=env)


# What ruff checks and format-checks: the package, its tests, the benchmark
# and the demo.
LINTED = ("wsproxy", "tests", "bench", "demo")


def lint():
    """The lint gate on the package, its tests, the benchmark and the demo,
    and the type gate on the package (settings in pyproject.toml)."""
    run(PY, "-m", "ruff", "check", *LINTED)
    run(PY, "-m", "ruff", "format", "--check", *LINTED)
    run(PY, "-m", "mypy")


def check_docs():
    """The documentation site, built strictly (a broken link, anchor or
    reference fails; mkdocs.yml, docs/), and the browser client's .d.ts
    against its JavaScript and a typed usage file (typecheck/)."""
    with tempfile.TemporaryDirectory() as site:
        run(PY, "-m", "mkdocs", "build", "--strict", "--site-dir", site)
    typecheck = os.path.join(ROOT, "typecheck")
    if shutil.which("npm") is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
        run(*apt, "update", "-qq", env=env)
        run(*apt, "install", "-y", "-qq", "nodejs", "npm", env=env)
    # TypeScript, pinned in typecheck/package-lock.json: npm ci when it changed.
    with open(os.path.join(typecheck, "package-lock.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(typecheck, "node_modules", ".package-lock.sha256")
    if not os.path.exists(stamp) or open(stamp).read() != digest:
        run("npm", "ci", "--no-audit", "--no-fund", cwd=typecheck)
        with open(stamp, "w") as f:
            f.write(digest)
    # The client's place is said once, in tsconfig.json; tsc infers the
    # JavaScript's types from a copy (beside its .d.ts, the .js would
    # resolve to the .d.ts).
    with open(os.path.join(typecheck, "tsconfig.json")) as f:
        declared = json.load(f)["compilerOptions"]["paths"]["wsproxy-client"][0]
    script = os.path.join(typecheck, declared).removesuffix(".d.ts") + ".js"
    os.makedirs(os.path.join(typecheck, "build"), exist_ok=True)
    shutil.copyfile(script, os.path.join(typecheck, "build", "wsproxy-client.js"))
    run(os.path.join(typecheck, "node_modules", ".bin", "tsc"), "-p", typecheck)


# Parallel workers for the first pass: most tests wait on processes (the
# database, gunicorn, a browser), not on the CPU, so more than the cores.
# `python3 dev.py test -n N` sets another number (for that pass only).
TEST_WORKERS = "4"


def _workers(extra):
    """(-n's value, the other arguments): -n N, -nN, --numprocesses[=]N."""
    workers, rest, args = TEST_WORKERS, [], iter(extra)
    for arg in args:
        if arg in ("-n", "--numprocesses"):
            workers = next(args, workers)
        elif arg.startswith("--numprocesses="):
            workers = arg.split("=", 1)[1]
        elif arg.startswith("-n") and arg[2:].isdigit():
            workers = arg[2:]
        else:
            rest.append(arg)
    return workers, rest


def test(extra):
    """Two pytest passes: every test but those that measure, on parallel
    workers; then those (latency against a baseline of the same run, memory
    or file descriptors under load: serial_markers in pyproject.toml), alone
    on the machine. Both run whatever the first one's outcome; the exit
    status is the worse. At the end: both passes' counts, failures and
    slowest tests together."""
    workers, extra = _workers(extra)
    passes = [("parallel", ["-n", workers, "--dist", "loadgroup",
                            "--serial-tests=exclude"]),
              ("serial", ["-p", "no:xdist", "--serial-tests=only"])]
    totals = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
    failures, slowest, codes, took = [], [], [], []
    for name, args in passes:
        with tempfile.NamedTemporaryFile(prefix="wsproxy-summary-") as counts:
            # Not WSPROXY_*: the test servers inherit the environment, and
            # wsproxy refuses a WSPROXY_ name it does not know.
            env = dict(os.environ, DEV_PY_TEST_SUMMARY=counts.name)
            print(f"== {name} pass", flush=True)
            started = time.monotonic()
            code = subprocess.run([PY, "-m", "pytest", *args, *extra],
                                  env=env).returncode
            took.append(f"{name} {time.monotonic() - started:.0f} s")
            codes.append(code)
            text = open(counts.name).read()
        summary = json.loads(text) if text else {}
        for key in totals:
            totals[key] += summary.get(key, 0)
        failures += summary.get("failures", [])
        slowest += [(seconds, f"{nodeid} ({name})")
                    for nodeid, seconds in summary.get("slowest", [])]
    print("== slowest tests (setup, call and teardown):")
    for seconds, what in sorted(slowest, reverse=True)[:15]:
        print(f"{seconds:7.2f}s {what}")
    for nodeid in failures:
        print(f"FAILED {nodeid}")
    # The closing line: both passes together (errors count as failures).
    print(f"== {', '.join(took)}; tests: {totals['passed']} passed, "
          f"{totals['failed'] + totals['error']} failed, "
          f"{totals['skipped']} skipped", flush=True)
    # 5 is pytest's "no tests collected": fine for one pass (-k, -m or a
    # path may select tests of one kind only), not for both.
    failed = [code for code in codes if code not in (0, 5)]
    if failed:
        return failed[0]
    return 5 if codes == [5, 5] else 0


def main(argv):
    if not argv or argv[0] not in {"demo", "test", "bench", "docs"}:
        sys.exit(__doc__)
    command, extra = argv[0], argv[1:]
    ensure_venv()
    os.chdir(ROOT)
    compile_sources()
    if command == "demo":
        if not os.environ.get("WSPROXY_MONGODB_URI"):
            os.environ["WSPROXY_EMBEDDED"] = "1"
        os.execv(os.path.join(BIN, "gunicorn"),
                 ["gunicorn", "-c", "gunicorn.conf.py", *extra, "wsgi:app"])
    if command == "docs":
        os.execv(PY, [PY, "-m", "mkdocs", "serve", "-a", "127.0.0.1:8001", *extra])
    if command == "test":
        lint()
        check_docs()
        ensure_chromium()
        sys.exit(test(extra))
    os.execv(PY, [PY, "-m", "bench", *extra])


if __name__ == "__main__":
    main(sys.argv[1:])
