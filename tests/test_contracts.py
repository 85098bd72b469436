"""The package's import contracts, read from its modules' own imports (the
abstract syntax tree, every import at any depth): which layer may use
which layer and which library, so that a boundary that holds today cannot
erode unseen. Run ``python -m pytest tests/test_contracts.py``; a new
module is put in a layer (a subpackage) or, if it is shared by all, at the
package's top.

The layers, from the bottom up (docs/architecture.md, "Modules"):

* ``access/``: pure rules (principals, filters, redaction, queries, the
  watch spec, sealed ids);
* ``limits/``: what a principal may cost a worker;
* ``transport/``: the wire (sockets, frames, compression);
* ``fanout/``: a change to every connection that should see it;
* ``stream/``: MongoDB's change streams, feeding the fan-out;
* ``live/``: snapshots and live documents;
* ``http/``: the Flask side, over all of them.

``client/`` is the Python client, beside them, not above or below.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "wsproxy"

# Bottom first: a layer may import the layers before it, never one after.
LAYERS = ["access", "limits", "transport", "fanout", "stream", "live", "http"]

# The top-level modules every layer may use: none imports a layer.
SHARED = {"errors", "protocol", "metrics", "logsafe", "liverules"}
# config (the settings, checked with access/watchspec.py) is read by the
# extension alone: http is the one layer above it.
CONFIG_USERS = {"http"}

# The WebSocket libraries: only the transport knows them, with two
# exceptions. http/views.py registers the blueprint's route with flask-sock's
# Sock (the route is the HTTP side's; the socket it hands over is wrapped by
# the transport at once). client/ is the Python client, with its own
# simple-websocket socket and wsproto frames: it must not import the
# server's transport (which needs flask-sock, hence Flask).
WEBSOCKET_LIBRARIES = {"flask_sock", "simple_websocket", "wsproto"}
WEBSOCKET_EXCEPTIONS = {"http.views", "client"}

# The change stream's side knows no Flask: it runs on threads of its own.
FLASK = {"flask", "flask_sock", "werkzeug"}
NO_FLASK_LAYERS = {"stream", "fanout", "live"}
NO_FLASK_MODULES = {"liverules"}

# Access rules are pure: no I/O, no threads, no database, no web framework.
# So are the modules they use, and a subscription (fanout/subscription.py,
# which decides a change's shape, so sits above the transport's codec).
IMPURE = {
    "threading",
    "socket",
    "select",
    "subprocess",
    "pymongo",
    "flask",
    "werkzeug",
    "gunicorn",
    "logging",
    "os",
    "time",
    "queue",
    "concurrent",
    "asyncio",
} | WEBSOCKET_LIBRARIES
PURE_MODULES = {"errors", "protocol", "fanout.subscription"}

# What the Python client may use of the package: no server module.
CLIENT_MAY_IMPORT = {"client", "liverules", "errors", "protocol"}


def _name(path):
    """A module's name inside the package: "errors", "fanout.hub",
    "client" (a package's __init__.py)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_name(path): path for path in PACKAGE.rglob("*.py")}


def _layer(name):
    """The layer (subpackage) a module is in, or None at the top."""
    head, dot, _ = name.partition(".")
    return head if (dot or (PACKAGE / head).is_dir()) and head else None


def _own_module(target):
    """The package's module that an import of ``target`` (a dotted name
    inside the package) loads: the longest prefix that is a module."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if (
            PACKAGE.joinpath(*parts).with_suffix(".py").exists()
            or (PACKAGE.joinpath(*parts) / "__init__.py").exists()
        ):
            return name
        parts.pop()
    return ""


def _imports(path, name=None):
    """(top-level names of absolute imports, the package's own modules
    imported, by their names inside the package)."""
    package = name.split(".") if name else []
    if path.name != "__init__.py":
        package = package[:-1]
    absolute, own = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
            own |= {
                _own_module(alias.name.partition(".")[2])
                for alias in node.names
                if alias.name.startswith("wsproxy.")
            }
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add(node.module.split(".")[0])
                if node.module.split(".")[0] != "wsproxy":
                    continue
                base = node.module.split(".")[1:]
            else:
                up = node.level - 1
                base = (package[: len(package) - up] if up else package) + (
                    node.module.split(".") if node.module else []
                )
            for alias in node.names:
                own.add(
                    _own_module(".".join(base + [alias.name]))
                    or _own_module(".".join(base))
                )
    own.discard("")
    return absolute, own


IMPORTS = {name: _imports(path, name) for name, path in _modules().items()}


def test_every_layer_and_shared_module_exists():
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").exists(), layer
    named = SHARED | WEBSOCKET_EXCEPTIONS | NO_FLASK_MODULES | PURE_MODULES
    assert named <= set(IMPORTS), named - set(IMPORTS)
    assert CLIENT_MAY_IMPORT <= set(IMPORTS), CLIENT_MAY_IMPORT - set(IMPORTS)


def test_every_subpackage_is_a_layer_or_the_client():
    subpackages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS) | {"client"}


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_a_layer_imports_only_the_layers_below_it(module):
    layer = _layer(module)
    if layer not in LAYERS:
        return
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    used = {_layer(name) for name in IMPORTS[module][1]} - {None}
    assert used <= allowed, used - allowed
    tops = {name for name in IMPORTS[module][1] if _layer(name) is None}
    may = SHARED | ({"config"} if layer in CONFIG_USERS else set())
    assert tops <= may, tops - may


def test_the_settings_stand_below_the_http_layer():
    used = {_layer(name) or name for name in IMPORTS["config"][1]}
    assert used <= SHARED | set(LAYERS[: LAYERS.index("http")]), used


@pytest.mark.parametrize("module", sorted(SHARED))
def test_the_shared_modules_import_no_layer(module):
    assert IMPORTS[module][1] <= SHARED, IMPORTS[module][1] - SHARED


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_only_the_transport_imports_the_websocket_libraries(module):
    used = IMPORTS[module][0] & WEBSOCKET_LIBRARIES
    allowed = (
        _layer(module) == "transport"
        or module in WEBSOCKET_EXCEPTIONS
        or _layer(module) == "client"
    )
    assert allowed or not used, used


@pytest.mark.parametrize(
    "module",
    sorted(
        name
        for name in IMPORTS
        if _layer(name) in NO_FLASK_LAYERS or name in NO_FLASK_MODULES
    ),
)
def test_the_stream_side_knows_no_flask(module):
    assert not IMPORTS[module][0] & FLASK


@pytest.mark.parametrize(
    "module",
    sorted(
        name for name in IMPORTS if _layer(name) == "access" or name in PURE_MODULES
    ),
)
def test_access_rules_are_pure(module):
    assert not IMPORTS[module][0] & IMPURE, IMPORTS[module][0] & IMPURE


def test_the_client_imports_nothing_of_the_server():
    client = [name for name in IMPORTS if _layer(name) == "client"]
    assert client
    for module in client:
        used = {
            name if _layer(name) is None else _layer(name)
            for name in IMPORTS[module][1]
        }
        assert used <= CLIENT_MAY_IMPORT, (module, used)
    # ...nor do the modules it imports.
    for module in CLIENT_MAY_IMPORT - {"client"}:
        assert IMPORTS[module][1] <= CLIENT_MAY_IMPORT, module


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_nothing_in_the_package_imports_the_demo_or_the_benchmark(module):
    assert not IMPORTS[module][0] & {"demo", "bench", "tests"}


def test_the_contracts_can_fail(tmp_path):
    """The reader sees what a violation looks like."""
    path = tmp_path / "probe.py"
    path.write_text(
        "import threading\nfrom flask import request\n"
        "from ..fanout import hub\nfrom ..transport.codec import Change\n"
        "from .. import errors\n"
    )
    absolute, own = _imports(path, "access.probe")
    assert absolute & IMPURE == {"threading", "flask"}
    assert own == {"fanout.hub", "transport.codec", "errors"}
    # access is the bottom layer: fanout and transport are above it.
    used = {_layer(name) for name in own} - {None}
    assert used - set(LAYERS[:1]) == {"fanout", "transport"}
