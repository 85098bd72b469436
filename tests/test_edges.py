"""Failure paths found by reading the code (issue "The edges", 5), each
checked where it lives: the hub, a catch-up, a snapshot, the metrics."""

import pytest

from wsproxy.hub import Hub

from .test_hub import FakeClient, hello


# -------------------------------------------------- a catch-up that cannot start

def test_a_catch_up_thread_that_cannot_start_leaves_nothing_in_the_hub():
    """At ~1,100 threads a new one may fail to start: the stand-in that was
    already in the hub must leave with it, or it counts toward
    WSPROXY_MAX_CLIENTS for good."""
    hub = Hub()
    client = FakeClient()
    stand_in = FakeClient()

    def catch_up(_client):
        def start():
            raise RuntimeError("can't start new thread")
        return stand_in, start

    with pytest.raises(RuntimeError, match="can't start new thread"):
        with hub.subscribe(client, "not-in-history", hello, catch_up):
            pytest.fail("the block must not run")
    assert len(hub) == 0 and hub.clients() == []
