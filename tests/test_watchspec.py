"""What may be watched (wsproxy/access/watchspec.py), on its own: the
watched scope, the operator's pipeline, and what a change stream never
delivers. (The same checks as init_app reports them: test_setup.py.)"""

import pytest

from wsproxy import ConfigError
from wsproxy.access.watchspec import check_pipeline, check_watch, never_streamed


def test_a_scope_is_the_deployment_a_database_or_a_collection():
    for scope in ("", "shop", "shop.orders", "shop.orders.2026"):
        assert check_watch(scope) == scope
    assert check_watch(None) == ""
    for bad, why in [
        ("$bad", "cannot contain '$'"),
        ("shop.system.users", "system collections"),
        ("x" * 64, "at most 63 bytes"),
        (42, "a string"),
    ]:
        with pytest.raises(ConfigError, match="WSPROXY_WATCH=") as info:
            check_watch(bad)
        assert why in str(info.value)


def test_system_databases_and_collections_are_never_streamed():
    for db, coll in [("admin", None), ("local", "x"), ("config", None)]:
        assert never_streamed(db, coll)
    assert never_streamed("shop", "system.views")
    assert not never_streamed("shop")
    assert not never_streamed("shop", "orders")
    assert not never_streamed("shop", "systems")


def test_a_pipeline_keeps_the_resume_token():
    stages = [{"$match": {"operationType": "insert"}}, {"$set": {"seen": True}}]
    assert check_pipeline(stages) == stages
    assert check_pipeline('[{"$match": {}}]') == [{"$match": {}}]
    assert check_pipeline(None) == []
    for bad, why in [
        ([{"$project": {"_id": 0}}], "$project changes _id"),
        ([{"$unset": "_id"}], "$unset removes _id"),
        ([{"$lookup": {"from": "x"}}], "'$lookup' is not allowed"),
        ({"$match": {}}, "a list of stages"),
    ]:
        with pytest.raises(ConfigError, match="WSPROXY_PIPELINE") as info:
            check_pipeline(bad)
        assert why in str(info.value)
