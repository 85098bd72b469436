"""Whether the watched database or collection exists.

A change stream on a namespace that does not exist opens without an error
and stays quiet, so a misspelt ``WSPROXY_WATCH`` ("shop.order") would look
like a quiet collection. The watcher asks once, on its own thread after
its first round trip has worked (never holding up startup), and logs one
WARNING if the namespace is missing. It may be created later, so this is
only a warning; an account that may not list databases or collections
gets no answer, and no warning.
"""

import logging
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.scopecheck")


def missing(
    target: MongoClient[Any] | Database[Any] | Collection[Any],
) -> str | None:
    """``"database 'shop'"`` or ``"collection 'shop.orders'"`` if what
    ``target`` (a MongoClient, Database or Collection) names does not
    exist, else None. Raises what the driver raises (e.g. OperationFailure:
    not authorized to list them)."""
    if isinstance(target, Collection):
        names = target.database.list_collection_names(
            filter={"name": target.name}, authorizedCollections=True
        )
        return None if target.name in names else f"collection {target.full_name!r}"
    if isinstance(target, Database):
        names = target.client.list_database_names()
        return None if target.name in names else f"database {target.name!r}"
    return None  # the whole deployment


def warn_if_missing(
    target: MongoClient[Any] | Database[Any] | Collection[Any],
) -> None:
    """One WARNING if the watched namespace does not exist; never raises."""
    try:
        what = missing(target)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not stop the watcher
        # e.g. Unauthorized: the account may not list them.
        log.debug("watcher: cannot tell whether the watched scope exists: %s", exc)
        return
    if what is not None:
        log.warning(
            "watcher: the watched %s does not exist (yet): no events until it "
            "is created; if WSPROXY_WATCH is misspelt, correct it",
            what,
        )
