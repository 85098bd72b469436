"""wsproxy/stream/seam.py: what a catch-up (wsproxy/stream/catchup.py) and
a snapshot (wsproxy/live/snapshot.py) share, built once from a running
proxy."""

import threading
import types

from wsproxy import metrics
from wsproxy.limits.throttle import KeyedSlots
from wsproxy.live.snapshot import SnapshotInputs
from wsproxy.stream.catchup import CatchUpInputs


def _state():
    hub = types.SimpleNamespace(
        submit=object(),
        published_through="through",
        published_at=12.5,
        last_id=object(),
        idle=threading.Event(),
    )
    return types.SimpleNamespace(
        config={
            "WSPROXY_CLOSE_TIMEOUT": 3.0,
            "WSPROXY_CATCHUP_TIMEOUT": 60.0,
            "WSPROXY_SEND_TIMEOUT": 1.5,
        },
        hub=hub,
        source=types.SimpleNamespace(open_stream=object(), caught_up_as_of=7.0),
        stopping=threading.Event(),
        sealer=object(),
        mongo=object(),
        catchup_slots=threading.BoundedSemaphore(4),
        catchups_per_key=KeyedSlots(2),
        snapshot_slots=threading.BoundedSemaphore(3),
        snapshots_per_key=KeyedSlots(1),
        snapshot_slice_lock=threading.Lock(),
        connect_rate=types.SimpleNamespace(charge=object()),
    )


def test_both_jobs_take_the_shared_inputs_alike_and_their_own_slots():
    state = _state()
    catchup = CatchUpInputs.from_state(state)
    snapshot = SnapshotInputs.from_state(state)
    for inputs in (catchup, snapshot):
        assert inputs.submit is state.hub.submit
        assert inputs.published_through() == "through"
        assert inputs.watcher_caught_up_as_of() == 7.0
        assert inputs.stopping is state.stopping
        assert inputs.slot_wait == 3.0
        assert inputs.time_limit == 60.0
    assert catchup.slots is state.catchup_slots
    assert catchup.slots_per_key is state.catchups_per_key
    assert snapshot.slots is state.snapshot_slots
    assert snapshot.slots_per_key is state.snapshots_per_key
    assert catchup.open_stream is state.source.open_stream
    assert catchup.sealer is state.sealer
    assert snapshot.mongo is state.mongo
    assert snapshot.published_at() == 12.5
    assert snapshot.stall_limit == 1.5


def test_each_job_is_counted_and_refused_as_its_own_kind():
    assert CatchUpInputs.gauge is metrics.CATCHUPS
    assert SnapshotInputs.gauge is metrics.SNAPSHOTS
    assert "catch-ups" in CatchUpInputs.busy_for_key.format(limit=2)
    assert "snapshots" in SnapshotInputs.busy_for_key.format(limit=2)
    assert CatchUpInputs.busy != SnapshotInputs.busy
