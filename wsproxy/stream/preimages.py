"""Whether the watched collections keep pre-images, which decides how
exactly a filtered feed learns of deletes and of documents leaving it.

With pre-images (MongoDB 6.0+ and Atlas: ``collMod`` with
``changeStreamPreAndPostImages: {enabled: true}``, and
``WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE`` ``whenAvailable`` or ``required``)
every update, replace and delete event carries the document as it was, so
a filter on document fields decides a delete by that document, and an
update that takes a document out of the filter is a ``leave``: exact,
for every client (:meth:`wsproxy.fanout.subscription.Subscription.decide`).
Without them a connection can only be told about the documents it was
sent (:mod:`wsproxy.fanout.tracking`).

The watcher looks once it is connected (on its own thread, never holding
up startup): it logs one WARNING naming the collections without
pre-images and the command that turns them on, and ``hello`` tells each
client which rule holds for it (``deletes``: ``"exact"`` or
``"tracked"``). An account that may not list collections gets
``"tracked"``: the weaker claim.
"""

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

from ..access.watchspec import never_streamed

if TYPE_CHECKING:
    from ..fanout.subscription import Subscription

# Named as before the modules moved into layers: logging configs name it.
log = logging.getLogger("wsproxy.preimages")

# WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE values that bring pre-images.
PRE_IMAGE_MODES = ("whenAvailable", "required")
EXACT, TRACKED = "exact", "tracked"


def _keeps_preimages(info: Mapping[str, Any]) -> bool:
    options = info.get("options") or {}
    setting = options.get("changeStreamPreAndPostImages") or {}
    return bool(setting.get("enabled"))


def collections_without(
    target: MongoClient[Any] | Database[Any] | Collection[Any],
) -> tuple[set[str], set[str]]:
    """``(all, without)``: the ``db.coll`` names of the collections
    ``target`` (a MongoClient, Database or Collection) covers, and of those
    that keep no pre-images. Raises what the driver raises."""
    databases: list[tuple[Database[Any], dict[str, Any]]]
    if isinstance(target, Collection):
        databases = [(target.database, {"name": target.name})]
    elif isinstance(target, Database):
        databases = [(target, {})]
    else:
        databases = [
            (target[name], {})
            for name in target.list_database_names()
            if not never_streamed(name)
        ]
    every: set[str]
    without: set[str]
    every, without = set(), set()
    for database, query in databases:
        for info in database.list_collections(filter=query):
            name = info.get("name", "")
            if info.get("type", "collection") != "collection" or never_streamed(
                database.name, name
            ):
                continue
            ns = f"{database.name}.{name}"
            every.add(ns)
            if not _keeps_preimages(info):
                without.add(ns)
    return every, without


class PreImages:
    """What the watcher found, for ``hello`` (thread-safe: replaced whole)."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode  # WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE
        # db.coll names without pre-images; None: unknown
        self.without: frozenset[str] | None = None

    def check(self, target: MongoClient[Any] | Database[Any] | Collection[Any]) -> None:
        """Look at the watched collections once; one WARNING if filtered
        feeds cannot be exact. Never raises (called on the watcher)."""
        if self.mode not in PRE_IMAGE_MODES:
            log.warning(
                "wsproxy: WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE is not set, so a "
                "feed with a filter on document fields learns of deletes and "
                "of documents leaving its filter only for documents it was "
                "sent; for exact ones, turn pre-images on for the watched "
                "collections (db.runCommand({collMod: '<collection>', "
                "changeStreamPreAndPostImages: {enabled: true}})) and set "
                "WSPROXY_FULL_DOCUMENT_BEFORE_CHANGE=whenAvailable"
            )
            return
        try:
            _, without = collections_without(target)
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not stop the watcher
            log.debug("watcher: cannot tell which collections keep pre-images: %s", exc)
            return
        self.without = frozenset(without)
        if without:
            names = sorted(without)
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            log.warning(
                "wsproxy: %d watched collection(s) keep no pre-images (%s): "
                "filtered feeds learn of their deletes and of documents "
                "leaving a filter only for documents they were sent; for exact "
                "ones run, for each, db.runCommand({collMod: '<collection>', "
                "changeStreamPreAndPostImages: {enabled: true}})",
                len(names),
                shown,
            )

    def deletes(self, subscription: "Subscription") -> str:
        """``"exact"`` if every delete and leave the subscription can be
        sent is decided by the event itself, else ``"tracked"``."""
        if not subscription.tracks:
            return EXACT  # no filter on documents: every delete is sent
        without = self.without
        if self.mode not in PRE_IMAGE_MODES or without is None:
            return TRACKED
        if subscription.namespaces is None:
            return EXACT if not without else TRACKED
        for ns in without:
            db = ns.split(".", 1)[0]
            if ns in subscription.namespaces or db in subscription.namespaces:
                return TRACKED
        return EXACT
