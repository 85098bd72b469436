"""The metrics (wsproxy/metrics.py), in one process: a write's bytes are
tallied and reach their counter when flushed, and ``/metrics``'s body
names every metric. (Across gunicorn workers: test_operations.py.)"""

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from wsproxy import metrics


def test_a_tally_reaches_its_counter_only_when_flushed():
    registry = CollectorRegistry()
    counter = Counter("tally_test_bytes", "test", registry=registry)
    tally = metrics.Tally(counter)

    def write():
        for _ in range(1000):
            tally.add(3)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert registry.get_sample_value("tally_test_bytes_total") == 0
    tally.flush()
    assert registry.get_sample_value("tally_test_bytes_total") == 12000
    tally.flush()  # nothing new: nothing added
    assert registry.get_sample_value("tally_test_bytes_total") == 12000


def test_the_exposition_names_every_metric(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    sent = "wsproxy_bytes_sent_total"
    metrics.BYTES_WRITTEN.flush()  # what earlier writes in this process left
    before = REGISTRY.get_sample_value(sent)
    metrics.BYTES_WRITTEN.add(5)
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    assert REGISTRY.get_sample_value(sent) == before + 5  # flushed first
    text = body.decode()
    for name in (
        "wsproxy_clients",
        "wsproxy_events_received_total",
        "wsproxy_messages_sent_total",
        "wsproxy_bytes_sent_total",
        "wsproxy_slow_consumer_disconnects_total",
        "wsproxy_resumes_total",
        "wsproxy_snapshots_active",
        "wsproxy_catchups_active",
        "wsproxy_resets_total",
        "wsproxy_watcher_errors_total",
        "wsproxy_watcher_reconnects_total",
        "wsproxy_event_lag_seconds",
        "wsproxy_refused_total",
    ):
        assert f"# HELP {name} " in text, name
