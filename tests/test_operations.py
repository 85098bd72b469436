"""Operations: metrics summed across workers, graceful shutdown with 1001,
and readiness following the database."""

import socket

import psutil

from .helpers import RawPeer, WSClient, http_get, metric, scaled, scrape, wait_for


def test_metrics_move_under_a_small_workload_across_two_workers(
    mongo, mongo_client, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_MAX_AWAIT_MS": "100",
        },
        workers=2,
    )
    # Both workers' watchers must be up before writing, or one misses some.
    server.wait_every_worker_ready()
    clients = [WSClient(server.ws_url()) for _ in range(6)]
    for client in clients:
        assert client.recv()["type"] == "hello"
    wait_for(
        lambda: metric(scrape(server), "wsproxy_clients") == 6,
        10,
        "6 clients counted across workers",
    )
    mongo_client[db][coll].insert_many([{"i": i} for i in range(5)])
    for client in clients:
        assert len(client.changes(5)) == 5

    seen = {}

    def settled():
        text = scrape(server)
        seen["events"] = metric(text, "wsproxy_events_received_total")
        seen["sent"] = metric(text, "wsproxy_messages_sent_total")
        return seen == {"events": 10, "sent": 30} and text

    # Every worker watches on its own: 5 events x 2 workers read, and
    # 5 events x 6 clients sent, whichever worker answers the scrape.
    try:
        text = wait_for(settled, 10, "counters to settle")
    except AssertionError:
        raise AssertionError(f"counters: {seen}") from None
    assert metric(text, "wsproxy_resumes_total", '{mode="none"}') == 6
    assert metric(text, "wsproxy_bytes_sent_total") > 0
    assert metric(text, "wsproxy_event_lag_seconds_count") == 10
    assert "wsproxy_slow_consumer_disconnects_total" in text
    for client in clients:
        client.close()
    wait_for(
        lambda: metric(scrape(server), "wsproxy_clients") == 0,
        10,
        "clients to be counted out",
    )


def test_sigterm_closes_clients_with_1001_within_the_graceful_timeout(
    mongo, namespace, gunicorn
):
    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_GRACEFUL_TIMEOUT": "10",
        }
    )
    clients = [WSClient(server.ws_url()) for _ in range(5)]
    for client in clients:
        client.recv()
    # Well inside the graceful timeout, not at it.
    server.terminate_expecting_1001(clients, within=8)


def test_readiness_follows_the_database(own_mongo, gunicorn):
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": own_mongo.uri + "&serverSelectionTimeoutMS=2000",
            "WSPROXY_WATCH": "ops.items",
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_BACKOFF_INITIAL": "0.1",
            "WSPROXY_BACKOFF_MAX": "1",
        }
    )
    status, body = server.readyz()
    assert status == 200 and body["watcher"] == "connected"
    assert http_get(server.url + "/healthz")[0] == 200
    client = WSClient(server.ws_url())
    client.recv()
    own_mongo.kill()
    wait_for(lambda: server.readyz()[0] == 503, 15, "not ready")
    assert http_get(server.url + "/healthz")[0] == 200  # alive all along
    # Clients and the unauthenticated /readyz learn that, not where the
    # database is: the error text (hosts, ports) goes to the log only.
    status = client.recv_type("status", timeout=15)
    assert status["watcher"] == "reconnecting"
    address = f"127.0.0.1:{own_mongo.port}"
    assert "unreachable" in status["detail"] and address not in status["detail"]
    last_error = server.readyz()[1]["last_error"]
    assert last_error and address not in last_error
    assert address in server.output()
    client.close()
    own_mongo.start()
    server.wait_ready(30)
    text = scrape(server)
    assert metric(text, "wsproxy_watcher_errors_total") >= 1
    assert metric(text, "wsproxy_watcher_reconnects_total") >= 1


def test_a_stopping_worker_refuses_new_connections_while_its_clients_close(
    mongo, namespace, gunicorn
):
    """After SIGTERM a client that comes back at once is refused, not queued
    in the stopping worker's copy of the listening socket (which nobody
    accepts from any more, and which is reset when the worker exits): it
    then finds the next server as soon as that one listens."""
    db, coll = namespace
    server = gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_CLOSE_TIMEOUT": "10",
        }
    )
    # Never answers the server's close, so the worker waits for it.
    silent = RawPeer.connect(server.port)
    try:
        server.process.terminate()
        wait_for(lambda: not _connects(server.port), 5, "new connections to be refused")
        # ...while the worker still waits for the silent client's close.
        assert server.process.poll() is None and server.worker_pids()
        # And it lets go of the database meanwhile, not after its clients:
        # PyMongo's threads wind down now (its exit handler waited for them).
        (worker,) = server.worker_pids()
        wait_for(
            lambda: not _connections_to(worker, mongo.port),
            5,
            "the worker's database connections to close",
        )
        assert server.process.poll() is None and server.worker_pids() == [worker]
    finally:
        silent.close()
    assert server.process.wait(scaled(15)) == 0


def _connections_to(pid, port):
    return [
        c
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
