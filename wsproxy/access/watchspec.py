"""What the watcher may be told to watch: ``WSPROXY_WATCH`` and
``WSPROXY_PIPELINE``, checked when the app is configured rather than when
the first change stream opens in a worker (where a mistake would only show
as a log line, or as every client getting ``reset``).
"""

import json
from typing import Any

from ..errors import ConfigError

# MongoDB's naming rules (docs: "Naming Restrictions"), for Linux servers,
# which is what replica sets and Atlas run on.
_DB_FORBIDDEN = set('/\\. "$\x00')
_DB_MAX_BYTES = 63
_NAMESPACE_MAX_BYTES = 255

# The stages a change stream pipeline accepts (MongoDB docs: "Modify Change
# Stream Output").
STAGES = frozenset(
    {
        "$match",
        "$project",
        "$addFields",
        "$set",
        "$unset",
        "$replaceRoot",
        "$replaceWith",
        "$redact",
    }
)


def check_watch(scope: object) -> str:
    """``""`` (the deployment), ``"db"`` or ``"db.coll"``; returns it."""
    if scope is None:
        return ""
    if not isinstance(scope, str):
        raise ConfigError(f"WSPROXY_WATCH={scope!r}: a string, '', 'db' or 'db.coll'")
    if scope == "":
        return scope
    db, dot, coll = scope.partition(".")
    why = _db_problem(db) or (dot and _coll_problem(coll))
    if not why and len(scope.encode()) > _NAMESPACE_MAX_BYTES:
        why = f"longer than {_NAMESPACE_MAX_BYTES} bytes"
    if why:
        raise ConfigError(
            f"WSPROXY_WATCH={scope!r}: {why} (use '', 'db' or "
            "'db.coll' with MongoDB's naming rules)"
        )
    return scope


# A change stream never delivers these (MongoDB refuses to open one on
# them, and a deployment-wide stream leaves them out), so nothing a client
# names in them is ever a subscription or a snapshot.
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})


def never_streamed(db: str, coll: str | None = None) -> bool:
    """Whether ``db`` (or ``db.coll``) is outside anything a change stream
    delivers: the admin, local and config databases, system collections."""
    return db in SYSTEM_DATABASES or (coll or "").startswith("system.")


def _db_problem(db: str) -> str | None:
    if not db:
        return "empty database name"
    if db in SYSTEM_DATABASES:
        return "the admin, local and config databases cannot be watched"
    bad = sorted(set(db) & _DB_FORBIDDEN)
    if bad:
        return f"a database name cannot contain {''.join(bad)!r}"
    if len(db.encode()) > _DB_MAX_BYTES:
        return f"a database name is at most {_DB_MAX_BYTES} bytes"
    return None


def _coll_problem(coll: str) -> str | None:
    if not coll:
        return "empty collection name"
    if "$" in coll or "\x00" in coll:
        return "a collection name cannot contain '$' or NUL"
    if coll.startswith(".") or coll.endswith("."):
        # "shop..orders": PyMongo's InvalidName in the worker otherwise.
        return "a collection name cannot start or end with '.'"
    if coll.startswith("system."):
        return "system collections cannot be watched"
    return None


def check_pipeline(pipeline: object) -> list[Any]:
    """A list of change stream stages that keeps the resume token (``_id``)
    intact; JSON text is parsed first. Returns the list."""
    if isinstance(pipeline, str):
        try:
            pipeline = json.loads(pipeline)
        except ValueError as exc:
            raise ConfigError(f"WSPROXY_PIPELINE is not JSON: {exc}") from None
    if pipeline is None:
        return []
    if not isinstance(pipeline, list):
        raise ConfigError("WSPROXY_PIPELINE must be a list of stages")
    for index, stage in enumerate(pipeline):
        where = f"WSPROXY_PIPELINE stage {index}"
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ConfigError(f"{where}: a stage is one {{'$name': spec}}")
        ((name, spec),) = stage.items()
        if name not in STAGES:
            raise ConfigError(
                f"{where}: {str(name)[:40]!r} is not allowed in a change "
                f"stream (allowed: {', '.join(sorted(STAGES))})"
            )
        why = _rewrites_id(name, spec)
        if why:
            raise ConfigError(
                f"{where}: {why}; _id is the resume token, without it "
                "clients cannot resume and the stream fails"
            )
    return pipeline


def _touches_id(key: object) -> bool:
    return key == "_id" or str(key).startswith("_id.")


def _rewrites_id(name: str, spec: Any) -> str | None:
    """Why stage ``{name: spec}`` removes or rewrites ``_id``, or None."""
    if name == "$project":
        if not isinstance(spec, dict):
            return "$project takes a document"
        for key, value in spec.items():
            if _touches_id(key) and not (value is True or value == 1):
                return f"$project changes {key}"
    elif name in ("$addFields", "$set"):
        if not isinstance(spec, dict):
            return f"{name} takes a document"
        touched = [k for k in spec if _touches_id(k)]
        if touched:
            return f"{name} rewrites {touched[0]}"
    elif name == "$unset":
        fields = [spec] if isinstance(spec, str) else spec
        if not isinstance(fields, list):
            return "$unset takes a field name or a list of them"
        if any(_touches_id(f) for f in fields):
            return "$unset removes _id"
    elif name in ("$replaceRoot", "$replaceWith"):
        root = (
            spec.get("newRoot")
            if name == "$replaceRoot" and isinstance(spec, dict)
            else spec
        )
        if not _keeps_id(root):
            return (
                f"{name} must keep _id: use {{'$mergeObjects': "
                "['$$ROOT', {...}]}} or a document with '_id': '$_id'"
            )
    return None


def _keeps_id(root: Any) -> bool | list[Any]:  # [] (falsy) for no parts
    """A new root that provably carries the event's ``_id`` unchanged."""
    if not isinstance(root, dict):
        return False
    if list(root) == ["$mergeObjects"]:
        parts = root["$mergeObjects"]
        return (
            isinstance(parts, list)
            and parts
            and parts[0] == "$$ROOT"
            and all(
                isinstance(p, dict)
                and not any(_touches_id(k) or str(k).startswith("$") for k in p)
                for p in parts[1:]
            )
        )
    return root.get("_id") == "$_id" and not any(
        str(k).startswith("_id.") for k in root
    )
