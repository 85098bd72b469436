"""A load test harness: an attacker in a process of its own (so its
hammering does not slow the test's readers and skew what they measure),
well-behaved bystanders that must see every event exactly once and in
order with a bounded latency, and a newcomer every half second that must
connect quickly, all while a writer makes WRITE_RATE changes per second."""

import json
import subprocess
import sys
import threading
import time

from .helpers import ROOT, WSClient, scaled

BYSTANDERS = 5
WRITE_RATE = 20  # events per second during the attack


# The end of every attacker script: ``count`` threads running ``attack``
# until the time is up, then the outcomes as JSON on stdout.
RUN_ATTACKERS = """
threads = [threading.Thread(target=attack, name="attacker")
           for _ in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(counts))
"""


def order(seq, rng, **extra):
    return {
        "seq": seq,
        "t": time.time(),
        "customer": rng.choice(["ada", "ken"]),
        "status": "open",
        "note": "x" * 200,
        "items": [
            {"sku": f"SKU-{rng.randint(1, 40):03d}", "qty": rng.randint(1, 4)}
            for _ in range(3)
        ],
        **extra,
    }


def serve(gunicorn, mongo, db, coll):
    """The server under attack, with the default connect limits rather
    than the test helper's generous ones."""
    from wsproxy.config import DEFAULTS

    return gunicorn(
        {
            "WSPROXY_MONGODB_URI": mongo.uri,
            "WSPROXY_WATCH": f"{db}.{coll}",
            "WSPROXY_MAX_AWAIT_MS": "100",
            "WSPROXY_CONNECT_RATE": str(DEFAULTS["WSPROXY_CONNECT_RATE"]),
            "WSPROXY_CONNECT_BURST": str(DEFAULTS["WSPROXY_CONNECT_BURST"]),
        }
    )


def connect_bystanders(server):
    """Bystanders from another address than the attacker (127.0.0.1)."""
    bystanders = [
        WSClient(server.ws_url(), source_address=("127.0.0.2", 0))
        for _ in range(BYSTANDERS)
    ]
    for client in bystanders:
        assert client.recv()["type"] == "hello"
    return bystanders


class Report:
    def __init__(self, outcomes, written, received, probes):
        self.outcomes = outcomes
        self.written = written
        self.received = received
        self.probes = probes
        latencies = sorted(lat for got in received for _, lat in got)
        self.p99 = latencies[int(len(latencies) * 0.99) - 1]
        self.max = latencies[-1]

    def __str__(self):
        return (
            f"attack: {self.outcomes}; {self.written} events, bystander "
            f"p99 {self.p99 * 1000:.0f} ms, max {self.max * 1000:.0f} ms; "
            f"newcomers connected in max {max(self.probes) * 1000:.0f} ms "
            f"({len(self.probes)} of them)"
        )

    def assert_contained(self, seconds):
        """No gap, no duplicate, p99 under 1 s, every newcomer in 2 s."""
        for got in self.received:
            assert [seq for seq, _ in got] == list(range(self.written))
        assert self.p99 < scaled(1.0), self.p99
        assert len(self.probes) >= seconds, self.probes
        assert max(self.probes) < scaled(2.0), self.probes


def run(server, items, rng, bystanders, attacker_argv, seconds):
    """Run ``python -c <attacker_argv...>`` (which prints a JSON dict of
    outcomes) for its ``seconds`` while measuring; returns a Report."""
    stop = threading.Event()  # ends the writer and the newcomers
    received = [[] for _ in bystanders]  # (seq, latency)
    failures, probes, written = [], [], [0]

    def read(index, client):
        try:
            while True:
                message = client.recv_type("change", timeout=30)
                doc = message["event"]["fullDocument"]
                if doc.get("end"):
                    return
                received[index].append((doc["seq"], time.time() - doc["t"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(("bystander", index, exc))

    def write():
        try:
            seq = 0
            while not stop.wait(1 / WRITE_RATE):
                items.insert_one(order(seq, rng))
                seq += 1
                written[0] = seq
            items.insert_one({"end": True})
        except BaseException as exc:  # noqa: BLE001
            failures.append(("writer", exc))

    def probe():
        # A newcomer every half second, each from an address of its own.
        n = 0
        while not stop.wait(0.5):
            n += 1
            started = time.monotonic()
            try:
                client = WSClient(
                    server.ws_url(),
                    open_timeout=scaled(60),
                    source_address=(f"127.0.1.{n}", 0),
                )
                assert client.recv(timeout=60)["type"] == "hello"
                probes.append(time.monotonic() - started)
                client.close()
            except BaseException as exc:  # noqa: BLE001
                failures.append(("newcomer", n, exc))

    threads = [
        threading.Thread(target=read, args=(i, c), name=f"test-bystander-{i}")
        for i, c in enumerate(bystanders)
    ]
    threads += [
        threading.Thread(target=write, name="test-writer"),
        threading.Thread(target=probe, name="test-newcomers"),
    ]
    for thread in threads:
        thread.start()
    attacker = subprocess.Popen(
        [sys.executable, "-c", *attacker_argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes = {}
    try:
        out, _ = attacker.communicate(timeout=scaled(seconds + 90))
        outcomes = json.loads(out)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        stop.set()
        for thread in threads:
            thread.join(scaled(90))
    assert not any(t.is_alive() for t in threads), "test threads still running"
    assert not failures, (
        failures[:3],
        outcomes,
        written[0],
        [len(got) for got in received],
    )
    report = Report(outcomes, written[0], received, probes)
    print("\n" + str(report))
    return report
