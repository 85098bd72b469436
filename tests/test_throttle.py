"""wsproxy/limits/throttle.py: what one principal or address may cost
the worker (connect rates, slots held at once)."""

import threading

import pytest

from wsproxy.limits.throttle import KeyedSlots, holding
from wsproxy.protocol import CloseCode


class _Gauge:
    def __init__(self):
        self.value = 0

    def inc(self):
        self.value += 1

    def dec(self):
        self.value -= 1


class _Client:
    closed = None

    def request_close(self, code, reason):
        self.closed = (code, reason)


def _holding(client, per_key, slots, gauge):
    return holding(
        client,
        ("principal", "ada"),
        per_key=per_key,
        slots=slots,
        timeout=0.0,
        gauge=gauge,
        busy_for_key="too many for ada (limit {limit})",
        busy="too many at once",
    )


def test_holding_takes_both_slots_counts_the_job_and_gives_them_back():
    per_key, slots, gauge, client = (
        KeyedSlots(1),
        threading.Semaphore(1),
        _Gauge(),
        _Client(),
    )
    with _holding(client, per_key, slots, gauge) as key:
        assert key == ("principal", "ada")
        assert per_key.in_use(key) == 1
        assert not slots.acquire(blocking=False)
        assert gauge.value == 1
    assert per_key.in_use(("principal", "ada")) == 0
    assert slots.acquire(blocking=False)
    assert gauge.value == 0 and client.closed is None


def test_holding_gives_both_back_when_the_job_fails():
    per_key, slots, gauge = KeyedSlots(1), threading.Semaphore(1), _Gauge()
    with pytest.raises(RuntimeError), _holding(_Client(), per_key, slots, gauge):
        raise RuntimeError("the job failed")
    assert per_key.in_use(("principal", "ada")) == 0
    assert slots.acquire(blocking=False)
    assert gauge.value == 0


def test_no_slot_for_the_principal_closes_with_1013_and_its_limit():
    per_key, slots, gauge, client = (
        KeyedSlots(1),
        threading.Semaphore(1),
        _Gauge(),
        _Client(),
    )
    assert per_key.acquire(("principal", "ada"))
    with _holding(client, per_key, slots, gauge) as key:
        assert key is None
        assert gauge.value == 0
    assert client.closed == (CloseCode.TRY_AGAIN, "too many for ada (limit 1)")
    assert per_key.in_use(("principal", "ada")) == 1  # only the other one's
    assert slots.acquire(blocking=False)  # never taken


def test_no_slot_in_the_worker_closes_with_1013_and_frees_the_principals():
    per_key, slots, gauge, client = (
        KeyedSlots(1),
        threading.Semaphore(0),
        _Gauge(),
        _Client(),
    )
    with _holding(client, per_key, slots, gauge) as key:
        assert key is None
        assert gauge.value == 0
    assert client.closed == (CloseCode.TRY_AGAIN, "too many at once")
    assert per_key.in_use(("principal", "ada")) == 0
