"""Hiding fields: removing document fields from change events before they
are encoded for a client (operator-wide ``WSPROXY_HIDE_FIELDS`` and a
principal's own ``hide`` list). Done here, in Python, because the hidden set
differs per client while the change stream is shared.

A hidden path names fields, as a MongoDB projection does: ``items.price``
is the ``price`` of every element of an ``items`` array, and a numeric
component (``scores.2024``) is a field named ``"2024"``. The paths of an
update description (``updatedFields`` keys, ``removedFields``,
``truncatedArrays``, ``disambiguatedPaths``) are different: there a numeric
component may be an array position *or* a field name, and the event does
not say which. So a changed path is hidden if it is, or lies inside, a
hidden field under *either* reading (fail closed).
"""

import copy
from collections.abc import Iterable
from typing import Any

# Fields whose contents are document data (and so subject to hiding).
_DOCUMENT_FIELDS = ("fullDocument", "fullDocumentBeforeChange", "documentKey")


def _drop(value: Any, parts: list[str]) -> None:
    """Remove the dotted path ``parts`` from ``value`` in place, descending
    into arrays as MongoDB paths do."""
    if isinstance(value, list):
        for item in value:
            _drop(item, parts)
    elif isinstance(value, dict):
        head = parts[0]
        if len(parts) == 1:
            value.pop(head, None)
        elif head in value:
            _drop(value[head], parts[1:])


def relation(changed: list[str], hidden: list[str]) -> tuple[bool, list[list[str]]]:
    """How the update-description path ``changed`` relates to the hidden
    field path ``hidden`` (both lists of components).

    Returns ``(covered, rests)``: ``covered`` if, under some reading of its
    numeric components, ``changed`` is the hidden field or lies inside it;
    ``rests``, for each reading under which ``changed`` is an ancestor of
    the hidden field, what remains of ``hidden`` below it (to be removed
    from the value set at ``changed``).
    """
    covered = False
    reached = {0}  # how much of ``hidden`` each reading has matched so far
    for part in changed:
        following: set[int] = set()
        for matched in reached:
            if matched == len(hidden):
                covered = True  # already inside the hidden field
                continue
            if part.isdigit():
                following.add(matched)  # an array position
            if hidden[matched] == part:
                following.add(matched + 1)  # a field name
        reached = following
    rests = []
    for matched in sorted(reached):
        if matched == len(hidden):
            covered = True
        else:
            rests.append(hidden[matched:])
    return covered, rests


def redact(raw: dict[str, Any], hide: Iterable[str]) -> dict[str, Any]:
    """A copy of change event ``raw`` without the ``hide`` fields anywhere
    they can appear: the documents, and the update description (whose keys
    are themselves dotted paths)."""
    event = copy.deepcopy(raw)
    paths = [h.split(".") for h in hide]
    for field in _DOCUMENT_FIELDS:
        doc = event.get(field)
        if isinstance(doc, dict):
            for parts in paths:
                _drop(doc, parts)
    description = event.get("updateDescription")
    if isinstance(description, dict):
        updated = description.get("updatedFields")
        if isinstance(updated, dict):
            for key in list(updated):
                for parts in paths:
                    covered, rests = relation(str(key).split("."), parts)
                    if covered:
                        updated.pop(key, None)
                        break
                    for rest in rests:
                        _drop(updated[key], rest)
        for name in ("removedFields", "truncatedArrays"):
            listed = description.get(name)
            if isinstance(listed, list):
                description[name] = [
                    item for item in listed if not _hidden(_names(item), paths)
                ]
        # {"a.0": ["a", 0]}: names a changed path; its value says which
        # components are array positions, but the path is enough to hide.
        ambiguous = description.get("disambiguatedPaths")
        if isinstance(ambiguous, dict):
            for key in list(ambiguous):
                if _hidden(str(key), paths):
                    ambiguous.pop(key)
    return event


def _names(item: Any) -> str:
    if isinstance(item, dict):  # truncatedArrays: {"field": ..., "newSize": ...}
        return str(item.get("field", ""))
    return str(item)


def _hidden(path: str, paths: list[list[str]]) -> bool:
    parts = path.split(".")
    return any(relation(parts, hidden)[0] for hidden in paths)
