"""Redaction (wsproxy/access/redaction.py): hidden fields are removed from
every part of an event, whatever numeric names and array positions the
changed paths carry."""

import pytest

from wsproxy.access.redaction import redact


def _update(updated=None, removed=(), truncated=(), **extra):
    description = {
        "updatedFields": updated or {},
        "removedFields": list(removed),
        "truncatedArrays": list(truncated),
        **extra,
    }
    return {
        "_id": {"_data": "82AB"},
        "operationType": "update",
        "documentKey": {"_id": 1},
        "updateDescription": description,
    }


@pytest.mark.parametrize(
    "key",
    [
        "scores.2024",  # a field named "2024"
        "scores.2024.points",  # inside it
        "scores.0.2024",  # "2024" inside an element of a scores array
        "scores",  # the parent as a whole: checked below
    ],
)
def test_a_hidden_path_with_a_numeric_component_is_hidden_in_updated_fields(key):
    value = {"2024": 99} if key == "scores" else 99
    event = redact(_update({key: value, "name": "ada"}), ["scores.2024"])
    updated = event["updateDescription"]["updatedFields"]
    assert "99" not in repr(updated), updated
    assert updated["name"] == "ada"


def test_numeric_hidden_paths_in_removed_and_truncated_lists_and_documents():
    raw = _update(
        removed=["scores.2024", "scores.2023", "other.2024"],
        truncated=[
            {"field": "scores.2024", "newSize": 1},
            {"field": "scores.2023", "newSize": 1},
        ],
        disambiguatedPaths={"scores.2024": ["scores", "2024"], "items.0": ["items", 0]},
    )
    raw["fullDocument"] = {"scores": {"2024": 1, "2023": 2}}
    event = redact(raw, ["scores.2024"])
    description = event["updateDescription"]
    assert description["removedFields"] == ["scores.2023", "other.2024"]
    assert description["truncatedArrays"] == [{"field": "scores.2023", "newSize": 1}]
    assert description["disambiguatedPaths"] == {"items.0": ["items", 0]}
    assert event["fullDocument"] == {"scores": {"2023": 2}}


@pytest.mark.parametrize(
    "updated, hide, kept",
    [
        # Array positions in the changed path still match a field path.
        (
            {"items.0.price": 5, "items.0.sku": "a"},
            ["items.price"],
            {"items.0.sku": "a"},
        ),
        (
            {"items.3": {"price": 5, "sku": "a"}},
            ["items.price"],
            {"items.3": {"sku": "a"}},
        ),
        (
            {"items": [{"price": 5, "sku": "a"}]},
            ["items.price"],
            {"items": [{"sku": "a"}]},
        ),
        # A different numeric field stays.
        ({"scores.2023": 1}, ["scores.2024"], {"scores.2023": 1}),
        # A numeric hidden component does not hide a position with that number
        # of another field, nor a longer number.
        (
            {"scores.20240": 1, "other.2024": 2},
            ["scores.2024"],
            {"scores.20240": 1, "other.2024": 2},
        ),
        # Nested numeric names and positions together.
        (
            {"a.1.2.b": 1, "a.2.b": 2, "a.1.b": 3, "a.b": 4, "a.2.c": 5},
            ["a.2.b"],
            {"a.1.b": 3, "a.b": 4, "a.2.c": 5},
        ),
    ],
)
def test_array_positions_and_numeric_names_in_changed_paths(updated, hide, kept):
    event = redact(_update(updated), hide)
    assert event["updateDescription"]["updatedFields"] == kept
