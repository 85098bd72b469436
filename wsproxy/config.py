"""Every ``WSPROXY_*`` setting, in one table: its name, default, parser and
meaning. The table drives the defaults, the environment, validation and the
``init_app`` docstring and the documentation's configuration page
(docs/hooks.py); a test checks the README's configuration table against it.

A setting's value may come from ``app.config`` (typed, or text) or from the
environment (text); the same parser reads both and returns the typed value,
or raises ``ValueError`` with the reason.
"""

import copy
import difflib
import importlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, NamedTuple

from .access.watchspec import check_pipeline, check_watch
from .errors import ConfigError

MiB = 1024 * 1024

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_NONE = {"none", "null"}


# A setting's parser: the value as given (text from the environment, or
# the app's own), typed and checked; ValueError or ConfigError if bad.
Parser = Callable[[Any], Any]


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def _optional(parse: Parser) -> Parser:
    """``parse``, or None for None / "none" / "null"."""

    def parse_optional(value: Any) -> Any:
        return None if _is_none(value) else parse(value)

    return parse_optional


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    return value


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _number(
    minimum: float, *, integer: bool = False, exclusive: bool = False
) -> Parser:
    def parse(value: Any) -> int | float:
        if isinstance(value, str):
            value = int(value) if integer else float(value)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError("must be " + ("an integer" if integer else "a number"))
        if value < minimum or (exclusive and value == minimum):
            raise ValueError(f"must be {'>' if exclusive else '>='} {minimum}")
        return value

    return parse


_positive_int = _number(1, integer=True)
_positive = _number(0, exclusive=True)
_not_negative = _number(0)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be true or false")


def _list(value: Any) -> list[str]:
    """A list of strings: a list, JSON text, or comma-separated text."""
    if isinstance(value, str):
        text = value.strip()
        value = (
            json.loads(text)
            if text.startswith("[")
            else [v.strip() for v in text.split(",") if v.strip()]
        )
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ValueError("must be a list of non-empty strings")
    return list(value)


def _origins(value: Any) -> list[str]:
    return [origin.rstrip("/") for origin in _list(value)]


def _hide_fields(value: Any) -> list[str]:
    fields = _list(value)
    if any(field.startswith("$") for field in fields):
        raise ValueError("must be dotted field names")
    return fields


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must be a path starting with /")
    return value


def _authorizer(value: Any) -> Callable[..., Any]:
    if isinstance(value, str):
        value = _import_function(value)
    if not callable(value):
        raise ValueError("must be a callable or 'package.module:function'")
    return value


def _import_function(text: str) -> Any:
    """``"package.module:function"`` (or ``"package.module.function"``)."""
    module_name, colon, name = text.strip().partition(":")
    if not colon:
        module_name, _, name = module_name.rpartition(".")
    if not module_name or not name:
        raise ValueError("must be 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} ({exc}); give "
            "'package.module:function' with a module the app can import"
        ) from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(
            f"module {module_name!r} has no {name!r}; give "
            "'package.module:function' naming a function it defines"
        ) from None


class Setting(NamedTuple):
    name: str
    default: Any
    parse: Callable[[Any], Any]
    meaning: str

    @property
    def shown(self) -> str:
        """The default as the README, the docs and the docstring write it."""
        value = self.default
        if value is None or isinstance(value, bool):
            return repr(value)
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, (str, list)):
            return json.dumps(value)
        return str(value)


SETTINGS = (
    # Where and what to watch.
    Setting(
        "WSPROXY_MONGODB_URI",
        None,
        _optional(_text),
        "A replica set or Atlas URI (required).",
    ),
    Setting(
        "WSPROXY_WATCH",
        "",
        check_watch,
        '"" the deployment, "db" or "db.coll" (MongoDB\'s naming rules).',
    ),
    Setting(
        "WSPROXY_FULL_DOCUMENT",
        "updateLookup",
        _optional(_choice("default", "updateLookup", "whenAvailable", "required")),
        "PyMongo's full_document.",
    ),
    Setting(
        "WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE",
        None,
        _optional(_choice("off", "whenAvailable", "required")),
        "PyMongo's full_document_before_change (pre-images).",
    ),
    Setting(
        "WSPROXY_PIPELINE",
        [],
        check_pipeline,
        "Change stream stages appended for everyone; none may remove or rewrite _id.",
    ),
    Setting(
        "WSPROXY_MAX_AWAIT_MS",
        500,
        _positive_int,
        "Longest the watcher blocks in one try_next().",
    ),
    Setting(
        "WSPROXY_BACKOFF_INITIAL",
        0.5,
        _positive,
        "Seconds before reopening a failed stream; doubles per failure.",
    ),
    Setting("WSPROXY_BACKOFF_MAX", 30.0, _positive, "Cap on that delay."),
    # Routes.
    Setting("WSPROXY_PATH", "/ws", _path, "The WebSocket route."),
    Setting(
        "WSPROXY_PAGE_PATH",
        "/wsproxy/",
        _optional(_path),
        "The bundled page; None leaves it out.",
    ),
    Setting(
        "WSPROXY_METRICS_PATH",
        "/metrics",
        _optional(_path),
        "Prometheus metrics; None leaves them out.",
    ),
    Setting(
        "WSPROXY_HEALTH_PATH",
        "/healthz",
        _optional(_path),
        "Liveness; None leaves it out.",
    ),
    Setting(
        "WSPROXY_READY_PATH",
        "/readyz",
        _optional(_path),
        "Readiness; None leaves it out.",
    ),
    Setting(
        "WSPROXY_READY_DETAILS",
        False,
        _flag,
        "/readyz shows the watcher's error text, not only its type.",
    ),
    # Fan-out and connections.
    Setting(
        "WSPROXY_HISTORY_SIZE",
        1000,
        _positive_int,
        "Recent events kept per worker for resume.",
    ),
    Setting(
        "WSPROXY_HISTORY_MAX_BYTES",
        64 * MiB,
        _positive_int,
        "...and at most this many bytes of their frames.",
    ),
    Setting(
        "WSPROXY_HISTORY_PREFILL",
        30.0,
        _not_negative,
        "Seconds of events a starting worker reads back into its history, "
        "so clients resuming after a restart resume from it; 0: none.",
    ),
    Setting(
        "WSPROXY_MAX_CATCHUPS",
        16,
        _positive_int,
        "Clients replaying from MongoDB at once (then 1013).",
    ),
    Setting(
        "WSPROXY_SNAPSHOT_MAX_DOCS",
        10000,
        _positive_int,
        "Documents in one snapshot (a larger limit is 400) and held per "
        "filtered snapshot client.",
    ),
    Setting(
        "WSPROXY_MAX_SNAPSHOTS",
        4,
        _positive_int,
        "Snapshots read at once per worker (others wait, then 1013).",
    ),
    Setting(
        "WSPROXY_MAX_SNAPSHOTS_PER_PRINCIPAL",
        None,
        _optional(_positive_int),
        "...of them for one principal or anonymous address; None: half of "
        "WSPROXY_MAX_SNAPSHOTS (at least 1).",
    ),
    Setting(
        "WSPROXY_MAX_CATCHUPS_PER_PRINCIPAL",
        2,
        _positive_int,
        "...of them for one principal or anonymous address.",
    ),
    Setting(
        "WSPROXY_CATCHUP_TIMEOUT",
        60.0,
        _positive,
        "Seconds one catch-up or snapshot may take (then 1013).",
    ),
    Setting(
        "WSPROXY_QUEUE_SIZE",
        10000,
        _positive_int,
        "Intake queue between watcher and broadcaster.",
    ),
    Setting(
        "WSPROXY_OUTBOX_MAX_MESSAGES",
        1000,
        _positive_int,
        "Messages queued for one client before 4008.",
    ),
    Setting(
        "WSPROXY_OUTBOX_MAX_BYTES",
        8 * MiB,
        _positive_int,
        "Bytes queued for one client before 4008.",
    ),
    Setting(
        "WSPROXY_SEND_TIMEOUT", 10.0, _positive, "Seconds one write may wait on a peer."
    ),
    Setting(
        "WSPROXY_CLOSE_TIMEOUT",
        5.0,
        _positive,
        "Seconds to wait for the peer's close reply.",
    ),
    Setting(
        "WSPROXY_PING_INTERVAL", 25.0, _not_negative, "Heartbeat seconds; 0 disables."
    ),
    Setting(
        "WSPROXY_COMPRESSION",
        "shared",
        _choice("off", "independent", "shared"),
        "permessage-deflate for clients that offer it: off; each message "
        "compressed once on its own; or once per subscription, in a shared "
        "context.",
    ),
    Setting(
        "WSPROXY_MAX_MESSAGE_SIZE",
        4096,
        _positive_int,
        "Largest client message in bytes (then 1009).",
    ),
    # Who may connect and what they see.
    Setting(
        "WSPROXY_ALLOWED_ORIGINS",
        None,
        _optional(_origins),
        'Browser origins allowed; None same origin, ["*"] any.',
    ),
    Setting(
        "WSPROXY_ALLOWED_HOSTS",
        None,
        _optional(_list),
        "Host names served (DNS rebinding); None: loopback names on a "
        "loopback address.",
    ),
    Setting(
        "WSPROXY_AUTHORIZE",
        None,
        _optional(_authorizer),
        "callable(request) or 'module:function' returning a Principal.",
    ),
    Setting(
        "WSPROXY_HIDE_FIELDS",
        [],
        _hide_fields,
        "Dotted document fields never sent to anyone.",
    ),
    Setting(
        "WSPROXY_MAX_CLIENTS", 1000, _positive_int, "Connections per worker (then 503)."
    ),
    Setting(
        "WSPROXY_MAX_CLIENTS_PER_PRINCIPAL",
        None,
        _optional(_positive_int),
        "...of them for one principal or anonymous address (then 429); None: "
        "half of WSPROXY_MAX_CLIENTS.",
    ),
    Setting(
        "WSPROXY_MAX_FILTER_TERMS_PER_PRINCIPAL",
        1000,
        _positive_int,
        "Filter terms one principal's open subscriptions may hold in all, each "
        "distinct subscription counted once (then 429, or error for subscribe).",
    ),
    Setting(
        "WSPROXY_TRACKED_DOCS",
        1000,
        _positive_int,
        "Documents a feed with a filter on document fields follows, for its "
        "deletes and leaves without pre-images (about 200 bytes each).",
    ),
    Setting("WSPROXY_MAX_FILTER_BYTES", 4096, _positive_int, "Largest ?filter=."),
    Setting(
        "WSPROXY_CLIENT_MESSAGE_RATE",
        5.0,
        _positive,
        "Frames per second a client may send...",
    ),
    Setting(
        "WSPROXY_CLIENT_MESSAGE_BURST",
        20,
        _positive_int,
        "...in bursts this large (then 1008).",
    ),
    Setting(
        "WSPROXY_CONNECT_RATE",
        20.0,
        _positive,
        "Connection cost per second per principal or address...",
    ),
    Setting(
        "WSPROXY_CONNECT_BURST",
        100,
        _positive_int,
        "...in bursts this large (then 429).",
    ),
    Setting(
        "WSPROXY_SECRET_KEYS",
        None,
        _optional(_list),
        "Keys sealing resume ids, current first; None: derived from "
        "SECRET_KEY and SECRET_KEY_FALLBACKS.",
    ),
    Setting(
        "WSPROXY_RESUME_IDS",
        "two-part",
        _choice("two-part", "one-part"),
        "How resume ids are sealed: two-part (the collection's part repeats, "
        "so compression removes it); one-part, as releases before "
        "2026-12-06 did, while any host serving the same clients still "
        "runs one (every release opens both).",
    ),
    Setting(
        "WSPROXY_EMBEDDED",
        False,
        _flag,
        "Read from the environment by the repository's gunicorn.conf.py "
        "(the demo): start the embedded demo server.",
    ),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}
# Read from the environment only, never from app.config: by wsproxy.gunicorn
# (threads, timeouts, log level), the repository's gunicorn.conf.py (the
# demo) and its tests. The README's second configuration table lists them,
# as does docs/configuration.md ("Environment only").
ENVIRONMENT_ONLY = frozenset(
    {
        "WSPROXY_BIND",
        "WSPROXY_THREADS",
        "WSPROXY_GRACEFUL_TIMEOUT",
        "WSPROXY_LOG_LEVEL",
        "WSPROXY_DEMO_WRITER",
        "WSPROXY_EMBEDDED_STORAGE",
        "WSPROXY_TEST_TIMEOUT_SCALE",
        "WSPROXY_CHROMIUM",
        "WSPROXY_TEST_ARTIFACTS",
    }
)
_PREFIX = "WSPROXY_"
DEFAULTS = {setting.name: setting.default for setting in SETTINGS}


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``WSPROXY_*`` settings present in the environment, typed."""
    environ = os.environ if environ is None else environ
    return {
        name: _parse(BY_NAME[name], environ[name])
        for name in BY_NAME
        if name in environ
    }


def check_names(
    config: Iterable[Any], environ: Mapping[str, str] | None = None
) -> None:
    """Refuse a ``WSPROXY_*`` name wsproxy does not read, in ``config`` or
    the environment: a misspelt setting would otherwise be ignored without
    a word. ConfigError names the closest known name."""
    environ = os.environ if environ is None else environ
    for where, names, known in (
        ("app.config", config, BY_NAME.keys()),
        ("the environment", environ, BY_NAME.keys() | ENVIRONMENT_ONLY),
    ):
        for name in sorted(n for n in names if _is_ours(n)):
            if name in known:
                continue
            if name in ENVIRONMENT_ONLY:
                raise ConfigError(
                    f"{name} (in {where}) is read from the environment only, "
                    "by wsproxy.gunicorn or the repository's gunicorn.conf.py: "
                    "set it there, not in app.config"
                )
            raise ConfigError(
                f"{name} (in {where}) is not a wsproxy setting; "
                + _closest(name, known)
            )


def _is_ours(name: object) -> bool:
    return isinstance(name, str) and name.startswith(_PREFIX)


def _closest(name: str, known: Iterable[str]) -> str:
    suffixes = {k[len(_PREFIX) :]: k for k in known}
    match = difflib.get_close_matches(name[len(_PREFIX) :], suffixes, n=1)
    if match:
        return f"did you mean {suffixes[match[0]]}?"
    return "the settings are listed in the README's Configuration tables"


def apply_defaults(
    config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None
) -> None:
    """Fill every ``WSPROXY_*`` key the app did not set: from the
    environment if it is there, else the built-in default. The app's own
    value always wins."""
    environ = os.environ if environ is None else environ
    for setting in SETTINGS:
        if setting.name not in config:
            config[setting.name] = (
                environ[setting.name]
                if setting.name in environ
                else copy.deepcopy(setting.default)
            )


def validate(config: MutableMapping[str, Any]) -> None:
    """Parse every setting in place (text from the environment becomes
    typed); raise ConfigError naming the key and why."""
    for setting in SETTINGS:
        config[setting.name] = _parse(setting, config[setting.name])
    if not config["WSPROXY_MONGODB_URI"]:
        raise ConfigError(
            "WSPROXY_MONGODB_URI is not set: set it, in app.config or the "
            "environment, to your MongoDB replica set or Atlas URI (change "
            "streams need one), e.g. "
            "WSPROXY_MONGODB_URI='mongodb://db1,db2,db3/?replicaSet=rs0'. "
            "(To try wsproxy without a database: in a checkout of wsproxy's "
            "repository, python3 dev.py demo runs it on an embedded server, "
            "as does WSPROXY_EMBEDDED=1 with the repository's "
            "gunicorn.conf.py.)"
        )


def _parse(setting: Setting, value: Any) -> Any:
    try:
        return setting.parse(value)
    except ConfigError:
        raise  # watchspec names the key and the rule itself
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{setting.name}={_short(value)}: {exc}") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def docstring_lines() -> list[str]:
    """The settings as the ``init_app`` docstring lists them."""
    return [f"- ``{s.name}`` (``{s.shown}``): {s.meaning}" for s in SETTINGS]


def per_principal(config: Mapping[str, Any], key: str, total_key: str) -> int:
    """A per-principal limit: the setting, or half of the worker's total
    (at least 1) when it is None."""
    value = config[key]
    return value if value is not None else max(1, config[total_key] // 2)
