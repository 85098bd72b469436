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


# -- connect rates and slots per principal or address ---------------------


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate_per_key():
    from wsproxy.limits.throttle import KeyedRateLimit, Throttled

    clock = _Clock()
    limit = KeyedRateLimit(2, 3, clock=clock)
    assert [limit.take("a") for _ in range(3)] == [0, 0, 0]
    assert limit.take("a") == pytest.approx(0.5)  # one token in 0.5 s
    assert limit.take("b") == 0  # keys are independent
    clock.now += 0.5
    assert limit.take("a") == 0
    assert limit.take("a") > 0
    with pytest.raises(Throttled) as info:
        limit.admit("a")
    assert info.value.status == 429 and info.value.retry_after == 1
    assert "too many connections (limit 2/s, bursts of 3)" in info.value.reason


def test_a_resume_that_filters_the_history_costs_its_work():
    from wsproxy.limits.throttle import KeyedRateLimit, connect_cost

    assert connect_cost(None, None, 1000) == 1
    assert connect_cost(None, "x" * 3600, 1000) == 1  # live only
    assert connect_cost("id", None, 1000) == 1  # no filter
    assert connect_cost("id", "x" * 3600, 1000) == pytest.approx(37)
    # A snapshot pays for its read after it (throttle.read_cost).
    clock = _Clock()
    limit = KeyedRateLimit(20, 100, clock=clock)
    assert limit.take("a", 37) == 0 and limit.take("a", 37) == 0
    assert limit.take("a", 37) == pytest.approx((37 - 26) / 20)
    assert limit.take("a", 10**6) > 0  # at most a burst
    clock.now += 100
    assert limit.take("a", 10**6) == 0


def test_a_reconnect_storm_through_one_address_gets_through():
    # A deploy closes every client of a worker with 1001; through a proxy
    # without ProxyFix they all come back from one address at once.
    from wsproxy.config import DEFAULTS
    from wsproxy.limits.throttle import KeyedRateLimit

    clock = _Clock()
    limit = KeyedRateLimit(
        DEFAULTS["WSPROXY_CONNECT_RATE"], DEFAULTS["WSPROXY_CONNECT_BURST"], clock=clock
    )
    admitted = 0
    for _ in range(1000):  # 1,000 clients over 10 s of backoff
        admitted += limit.take("proxy") == 0
        clock.now += 0.01
    assert admitted >= 250


def test_a_time_read_late_never_takes_tokens_away():
    # In a storm a thread may read the clock, then wait seconds for the GIL
    # while others spend from the same bucket at later times: its older
    # time counted as negative refill, and at a generous rate (100,000/s)
    # a second of it refused clients of an almost full bucket with 429.
    from wsproxy.limits.throttle import KeyedRateLimit

    times = iter([1001.0, 1000.0, 1000.5])
    limit = KeyedRateLimit(100_000, 100_000, clock=lambda: next(times))
    assert limit.take("proxy") == 0  # at 1001.0
    assert limit.take("proxy") == 0  # read at 1000.0, counted after
    assert limit.take("proxy") == 0


def test_buckets_are_bounded_in_number_and_fail_closed_when_all_are_busy():
    from wsproxy.limits.throttle import KeyedRateLimit

    clock = _Clock()
    limit = KeyedRateLimit(1, 2, max_keys=3, clock=clock)
    for key in "abc":
        assert limit.take(key) == 0
    # Three keys in use: a fourth is refused, not let in on a fresh bucket.
    assert limit.take("d") >= 1
    assert len(limit) == 3
    # Once a bucket has refilled it is as good as none, and makes room.
    clock.now += 1.0
    assert limit.take("d") == 0
    assert len(limit) <= 3
    # Idle keys are forgotten as others come and go.
    clock.now += 10
    limit.take("e")
    limit.take("e")
    assert len(limit) <= 2


def test_a_bucket_is_thread_safe():
    import threading

    from wsproxy.limits.throttle import KeyedRateLimit

    limit = KeyedRateLimit(1e-9, 100, clock=_Clock())  # no refill
    allowed = []

    def hammer():
        allowed.extend(1 for _ in range(500) if limit.take("k") == 0)

    threads = [
        threading.Thread(target=hammer, name=f"test-hammer-{i}") for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 100


def test_keyed_slots_bound_each_key_and_wait_for_a_release():
    import threading

    from wsproxy.limits.throttle import KeyedSlots

    slots = KeyedSlots(2)
    assert slots.acquire("p") and slots.acquire("p")
    assert not slots.acquire("p")
    assert slots.acquire("q")
    releaser = threading.Timer(0.05, slots.release, args=("p",))
    releaser.name = "test-release"
    releaser.start()
    assert slots.acquire("p", timeout=5)
    for key in ("p", "p", "q"):
        slots.release(key)
    assert slots.in_use("p") == 0 and not slots._used


def test_costs_are_charged_to_the_principal_or_else_the_address():
    from wsproxy import Principal
    from wsproxy.access import ANYONE
    from wsproxy.limits.throttle import client_key

    assert client_key(Principal("ada"), "10.0.0.1") == ("principal", "ada")
    assert client_key(ANYONE, "10.0.0.1") == ("address", "10.0.0.1")
    assert client_key(Principal(), "10.0.0.2") == ("address", "10.0.0.2")
