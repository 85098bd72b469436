"""The package's import contracts, read from its modules' own imports (the
abstract syntax tree, every import at any depth): which layer may use
which library, so that a boundary that holds today cannot erode unseen.
Run ``python -m pytest tests/test_contracts.py``; a new module is put in
its layer here."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "wsproxy"

# The WebSocket libraries: only the transport knows them. The transport is
# websocket.py (flask-sock and simple-websocket, guarded writes, the frame
# policy), codec.py (wsproto frames, built once per event), views.py (the
# blueprint's flask-sock route) and client.py (the Python client's socket).
WEBSOCKET_LIBRARIES = {"flask_sock", "simple_websocket", "wsproto"}
TRANSPORT = {"websocket", "codec", "views", "client"}

# The change stream's side knows no Flask: it runs on threads of its own.
STREAM = {"source", "resume", "errorpolicy", "watchspec", "scopecheck",
          "preimages", "hub", "routing", "tracking", "liverules",
          "documents", "snapshot"}

# Access rules are pure: no I/O, no threads, no database, no web framework.
ACCESS = {"access", "filters", "redaction", "sealing", "subscription",
          "documentquery", "watchspec", "errors", "protocol"}
IMPURE = {"threading", "socket", "select", "subprocess", "pymongo", "flask",
          "werkzeug", "gunicorn", "logging", "os", "time", "queue",
          "concurrent", "asyncio"} | WEBSOCKET_LIBRARIES

# What the Python client may use of the package: no server module.
CLIENT_MAY_IMPORT = {"ejson", "liverules", "errors", "protocol"}


def _modules():
    return {path.stem: path for path in PACKAGE.glob("*.py")}


def _imports(path):
    """(top-level names of absolute imports, names of the package's own
    modules imported relatively)."""
    absolute, own = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add(node.module.split(".")[0])
                if node.module.split(".")[0] == "wsproxy":
                    own |= {node.module.split(".")[1]} if "." in node.module \
                        else {alias.name for alias in node.names}
            elif node.module:
                own.add(node.module.split(".")[0])
            else:  # from . import a, b
                own |= {alias.name for alias in node.names}
    return absolute, own


IMPORTS = {name: _imports(path) for name, path in _modules().items()}


def test_every_layer_names_modules_that_exist():
    for layer in (TRANSPORT, STREAM, ACCESS, CLIENT_MAY_IMPORT):
        assert layer <= set(IMPORTS), layer - set(IMPORTS)


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_only_the_transport_imports_the_websocket_libraries(module):
    used = IMPORTS[module][0] & WEBSOCKET_LIBRARIES
    assert module in TRANSPORT or not used, used


@pytest.mark.parametrize("module", sorted(STREAM))
def test_the_stream_side_knows_no_flask(module):
    assert not IMPORTS[module][0] & {"flask", "flask_sock", "werkzeug"}


@pytest.mark.parametrize("module", sorted(ACCESS))
def test_access_rules_are_pure(module):
    assert not IMPORTS[module][0] & IMPURE, IMPORTS[module][0] & IMPURE


def test_the_client_imports_nothing_of_the_server():
    assert IMPORTS["client"][1] <= CLIENT_MAY_IMPORT, IMPORTS["client"][1]
    # ...nor do the modules it imports.
    for module in CLIENT_MAY_IMPORT:
        assert IMPORTS[module][1] <= CLIENT_MAY_IMPORT, module


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_nothing_in_the_package_imports_the_demo_or_the_benchmark(module):
    assert not IMPORTS[module][0] & {"demo", "bench", "tests"}


def test_the_contracts_can_fail(tmp_path):
    """The reader sees what a violation looks like."""
    path = tmp_path / "probe.py"
    path.write_text("import threading\nfrom flask import request\n"
                    "from . import hub\nfrom .codec import Change\n")
    absolute, own = _imports(path)
    assert absolute & IMPURE == {"threading", "flask"}
    assert own == {"hub", "codec"}
