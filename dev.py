#!/usr/bin/env python3
"""Set up and run wsproxy with nothing but Python 3.11+ and the registries.

    python3 dev.py demo    # venv + deps, then the demo on the embedded server
    python3 dev.py test    # venv + deps + Chromium, lint and types, docs, then tests
    python3 dev.py bench   # venv + deps, then the fan-out benchmark
    python3 dev.py docs    # venv + deps, then the documentation on :8001

Extra arguments go to gunicorn, pytest, the benchmark or mkdocs serve.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def lint():
    """The lint and type gate on the package (settings in pyproject.toml)."""
    run(PY, "-m", "ruff", "check", "wsproxy")
    run(PY, "-m", "ruff", "format", "--check", "wsproxy")
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


def main(argv):
    if not argv or argv[0] not in {"demo", "test", "bench", "docs"}:
        sys.exit(__doc__)
    command, extra = argv[0], argv[1:]
    ensure_venv()
    os.chdir(ROOT)
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
        os.execv(PY, [PY, "-m", "pytest", *extra])
    os.execv(PY, [PY, "-m", "bench", *extra])


if __name__ == "__main__":
    main(sys.argv[1:])
