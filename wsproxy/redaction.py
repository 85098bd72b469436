"""Hiding fields: removing document fields from change events before they
are encoded for a client (operator-wide ``WSPROXY_HIDE_FIELDS`` and a
principal's own ``hide`` list). Done here, in Python, because the hidden set
differs per client while the change stream is shared.
"""

import copy

# Fields whose contents are document data (and so subject to hiding).
_DOCUMENT_FIELDS = ("fullDocument", "fullDocumentBeforeChange", "documentKey")



def _drop(value, parts):
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


def redact(raw, hide):
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
                plain = _without_indexes(key)
                for h, parts in zip(hide, paths):
                    if plain == h or plain.startswith(h + "."):
                        updated.pop(key, None)
                        break
                    if h.startswith(plain + "."):
                        _drop(updated[key], parts[len(plain.split(".")):])
        for name in ("removedFields", "truncatedArrays"):
            listed = description.get(name)
            if isinstance(listed, list):
                description[name] = [
                    item for item in listed
                    if not _hidden(_without_indexes(_names(item)), hide)]
    return event


def _names(item):
    if isinstance(item, dict):  # truncatedArrays: {"field": ..., "newSize": ...}
        return str(item.get("field", ""))
    return str(item)


def _without_indexes(path):
    """``items.0.price`` -> ``items.price``: update descriptions name array
    elements by position, hidden fields do not."""
    return ".".join(p for p in path.split(".") if not p.isdigit())


def _hidden(path, hide):
    return any(path == h or path.startswith(h + ".") for h in hide)
