"""Every ``WSPROXY_*`` setting: its default, its type, and how the
environment spells it. The README's configuration table mirrors this.
"""

import copy
import json
import os

from .errors import ConfigError
from .watchspec import check_pipeline, check_watch

MiB = 1024 * 1024

DEFAULTS = {
    # Where and what to watch.
    "WSPROXY_MONGODB_URI": None,
    "WSPROXY_WATCH": "",                     # "" deployment, "db", "db.coll"
    "WSPROXY_FULL_DOCUMENT": "updateLookup",
    "WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE": None,
    "WSPROXY_PIPELINE": [],                  # operator's aggregation stages
    "WSPROXY_MAX_AWAIT_MS": 500,
    "WSPROXY_BACKOFF_INITIAL": 0.5,
    "WSPROXY_BACKOFF_MAX": 30.0,
    # Routes; every one but WSPROXY_PATH can be None (not served).
    "WSPROXY_PATH": "/ws",
    "WSPROXY_PAGE_PATH": "/wsproxy/",        # the bundled page
    "WSPROXY_METRICS_PATH": "/metrics",
    "WSPROXY_HEALTH_PATH": "/healthz",
    "WSPROXY_READY_PATH": "/readyz",
    "WSPROXY_READY_DETAILS": False,          # /readyz shows the error text
    # Fan-out and connections.
    "WSPROXY_HISTORY_SIZE": 1000,
    "WSPROXY_HISTORY_MAX_BYTES": 64 * MiB,   # frame bytes; memory ~3x
    "WSPROXY_MAX_CATCHUPS": 16,             # concurrent replays from MongoDB
    "WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL": 2,  # ...of them for one key
    "WSPROXY_CATCHUP_TIMEOUT": 60.0,         # seconds one may take; then 1013
    "WSPROXY_QUEUE_SIZE": 10000,
    "WSPROXY_OUTBOX_MAX_MESSAGES": 1000,
    "WSPROXY_OUTBOX_MAX_BYTES": 8 * MiB,
    "WSPROXY_SEND_TIMEOUT": 10.0,
    "WSPROXY_CLOSE_TIMEOUT": 5.0,
    "WSPROXY_PING_INTERVAL": 25.0,
    "WSPROXY_MAX_MESSAGE_SIZE": 4096,
    # Who may connect and what they see.
    "WSPROXY_ALLOWED_ORIGINS": None,         # None: same origin only
    "WSPROXY_ALLOWED_HOSTS": None,           # None: loopback names on loopback
    "WSPROXY_AUTHORIZE": None,               # callable(request) -> Principal
    "WSPROXY_HIDE_FIELDS": [],               # dotted fields hidden from all
    "WSPROXY_MAX_CLIENTS": 1000,             # per worker; then 503
    "WSPROXY_MAX_FILTER_BYTES": 4096,
    "WSPROXY_CLIENT_MESSAGE_RATE": 5.0,      # control messages per second
    "WSPROXY_CLIENT_MESSAGE_BURST": 20,
    # Read from the environment by the demo's gunicorn.conf.py in wsproxy's
    # repository only: start the embedded demo server (SecantusDB) when no
    # URI is given. The package itself never starts one.
    "WSPROXY_EMBEDDED": False,
    # Connections per second per principal (or address, if anonymous) and
    # worker, and bursts; beyond, 429.
    "WSPROXY_CONNECT_RATE": 20.0,
    "WSPROXY_CONNECT_BURST": 100,
    # Resume ids are sealed with the first; the rest still open (rotation).
    # None: derived from SECRET_KEY and SECRET_KEY_FALLBACKS.
    "WSPROXY_SECRET_KEYS": None,
}

_LISTS = {"WSPROXY_ALLOWED_ORIGINS", "WSPROXY_ALLOWED_HOSTS",
          "WSPROXY_SECRET_KEYS"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(key, text, default):
    if text.strip().lower() in {"none", "null"}:
        return None
    try:
        if isinstance(default, bool):
            value = text.strip().lower()
            if value in _TRUE:
                return True
            if value in _FALSE:
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list) or key in _LISTS:
            text = text.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise ConfigError(f"{key}={text!r}: {exc}") from None
    return text


def from_env(environ=None):
    """The ``WSPROXY_*`` settings present in the environment, typed."""
    environ = os.environ if environ is None else environ
    return {key: _parse(key, environ[key], default)
            for key, default in DEFAULTS.items() if key in environ}


# Paths a route is registered at; all but WSPROXY_PATH may be None.
ROUTE_KEYS = ("WSPROXY_PATH", "WSPROXY_PAGE_PATH", "WSPROXY_METRICS_PATH",
              "WSPROXY_HEALTH_PATH", "WSPROXY_READY_PATH")


def apply_defaults(config, environ=None):
    """Fill every ``WSPROXY_*`` key the app did not set: from the
    environment if it is there, else the built-in default. The app's own
    value always wins."""
    from_environment = from_env(environ)
    for key, default in DEFAULTS.items():
        if key not in config:
            config[key] = from_environment.get(key, copy.deepcopy(default))


def validate(config):
    """Check the settings an app ended up with; raise ConfigError."""
    if not config.get("WSPROXY_MONGODB_URI"):
        raise ConfigError(
            "WSPROXY_MONGODB_URI is not set. Set it (in app.config or the "
            "environment) to your replica set or Atlas URI, or, in a checkout "
            "of wsproxy's repository, run the demo on its embedded server: "
            "python3 dev.py demo (or WSPROXY_EMBEDDED=1 with the repository's "
            "gunicorn -c gunicorn.conf.py)")
    config["WSPROXY_PIPELINE"] = check_pipeline(config["WSPROXY_PIPELINE"])
    config["WSPROXY_WATCH"] = check_watch(config["WSPROXY_WATCH"])
    for key in ("WSPROXY_HISTORY_SIZE", "WSPROXY_HISTORY_MAX_BYTES",
                "WSPROXY_QUEUE_SIZE",
                "WSPROXY_MAX_CATCHUPS", "WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL",
                "WSPROXY_CONNECT_BURST",
                "WSPROXY_OUTBOX_MAX_MESSAGES", "WSPROXY_OUTBOX_MAX_BYTES"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be a positive integer")
    hosts = config["WSPROXY_ALLOWED_HOSTS"]
    if isinstance(hosts, str):
        hosts = config["WSPROXY_ALLOWED_HOSTS"] = [
            h.strip() for h in hosts.split(",") if h.strip()]
    if hosts is not None and not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError("WSPROXY_ALLOWED_HOSTS must be a list of host names")
    for key in ("WSPROXY_CONNECT_RATE", "WSPROXY_CATCHUP_TIMEOUT"):
        if not isinstance(config[key], (int, float)) or not config[key] > 0:
            raise ConfigError(f"{key} must be a positive number")
    origins = config["WSPROXY_ALLOWED_ORIGINS"]
    if isinstance(origins, str):
        origins = config["WSPROXY_ALLOWED_ORIGINS"] = [
            o.strip() for o in origins.split(",") if o.strip()]
    if origins is not None:
        config["WSPROXY_ALLOWED_ORIGINS"] = [o.rstrip("/") for o in origins]
    authorize = config["WSPROXY_AUTHORIZE"]
    if isinstance(authorize, str):
        config["WSPROXY_AUTHORIZE"] = _import(authorize)
    hide = config["WSPROXY_HIDE_FIELDS"]
    if isinstance(hide, str):
        hide = config["WSPROXY_HIDE_FIELDS"] = [
            h.strip() for h in hide.split(",") if h.strip()]
    if not all(isinstance(h, str) and h and not h.startswith("$")
               for h in hide):
        raise ConfigError("WSPROXY_HIDE_FIELDS must be dotted field names")
    for key in ROUTE_KEYS:
        path = config[key]
        if path is None and key != "WSPROXY_PATH":
            continue
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"{key}={path!r}: a path starting with /"
                              + ("" if key == "WSPROXY_PATH" else ", or None"))


def _import(spec):
    """``"package.module:attribute"`` -> the attribute."""
    import importlib

    module, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"WSPROXY_AUTHORIZE={spec!r}: {exc}") from None
