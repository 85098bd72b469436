"""Storms (issue 22, "The edges", 2 and 3): every client of a worker
coming back at once, after a mass disconnect or a restart."""

import asyncio
import json
import os
import signal
import socket

import pytest
from websockets.asyncio.client import connect

from wsproxy.limits import tickets

from .helpers import http_get, scaled, server_env

APP = "tests.stormapp:app"


async def _hellos(url, count, timeout):
    """Open ``count`` connections at once; each one's first message."""

    async def one():
        async with connect(
            url, compression=None, open_timeout=timeout, proxy=None
        ) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), timeout))

    return await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


@pytest.mark.heavy
def test_handshakes_run_a_few_at_a_time(mongo, namespace, gunicorn):
    """A thousand clients coming back at once each got a pool thread at
    once, and a thousand runnable threads made every lock a convoy
    (handshakes waited 5-17 s): the worker works on a few handshakes at a
    time, the others wait their turn without wanting the GIL."""
    from wsproxy.http import views

    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll), app=APP)
    hellos = asyncio.run(_hellos(server.ws_url(), 60, scaled(30)))
    assert [h["type"] if isinstance(h, dict) else h for h in hellos] == (["hello"] * 60)
    status, body = http_get(server.url + "/authorizing")
    assert status == 200
    most = json.loads(body)["most"]
    assert 1 <= most <= views._HANDSHAKES_AT_ONCE, most


# ---------------------------------------------------------------------------
# A restart behind one address (section 2): every client of the worker
# comes back at once through a proxy, with the id of the last event it got.


class _Storm:
    """``count`` clients on an asyncio loop of their own (a thread), each
    doing what the bundled clients do: resume after the last id, present
    the last hello's ticket, reconnect at once after a close, wait
    Retry-After after a 429 and a short jittered backoff after a failure."""

    def __init__(self, url, count):
        import threading

        self.url = url
        self.count = count
        self.seqs = [[] for _ in range(count)]
        self.last = [None] * count
        self.ticket = [None] * count
        self.hellos = [[] for _ in range(count)]  # (monotonic time, resume)
        self.refused = {}
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-storm-loop"
        )
        self._thread.start()
        self._tasks = asyncio.run_coroutine_threadsafe(self._all(), self._loop)

    async def _all(self):
        await asyncio.gather(*(self._client(i) for i in range(self.count)))

    async def _client(self, i):
        import random
        import time
        import urllib.parse

        from websockets.exceptions import InvalidStatus

        while not self._stopping:
            query = {}
            if self.last[i]:
                query["resume_after"] = self.last[i]
            if self.ticket[i]:
                query["ticket"] = self.ticket[i]
            url = self.url + ("?" + urllib.parse.urlencode(query) if query else "")
            try:
                async with connect(
                    url,
                    compression=None,
                    proxy=None,
                    max_size=None,
                    open_timeout=scaled(20),
                ) as ws:
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "hello":
                            self.hellos[i].append((time.monotonic(), message["resume"]))
                            self.ticket[i] = message.get("ticket")
                        elif message["type"] == "change":
                            self.seqs[i].append(message["event"]["fullDocument"]["seq"])
                            self.last[i] = message["id"]
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.refused[status] = self.refused.get(status, 0) + 1
                wait = float(exc.response.headers.get("Retry-After") or 1)
                await asyncio.sleep(wait * random.uniform(1, 1.5))
                continue
            except Exception:  # noqa: BLE001 - the server is away: retry
                pass
            await asyncio.sleep(random.uniform(0.05, 0.2))

    def hellos_after(self, moment):
        return [next((t for t, _ in h if t > moment), None) for h in self.hellos]

    def close(self):
        self._stopping = True

        async def cancel():
            self._tasks.cancel()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            # Each connection's context manager closes it as it unwinds.
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class _PacedWriter:
    """Inserts {"seq": n} at ``rate`` per second on a thread of its own."""

    def __init__(self, collection, rate):
        import threading

        self.collection = collection
        self.rate = rate
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-writer")
        self._thread.start()

    def _run(self):
        while not self._stop.wait(1 / self.rate):
            self.collection.insert_one({"seq": self.written})
            self.written += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self.written


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


STORM = 150  # more than WSPROXY_CONNECT_BURST's default of 100


@pytest.mark.heavy
@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_a_restart_behind_one_address_gets_everyone_back_exactly_once(
    mongo, mongo_client, namespace, gunicorn, how
):
    """Anonymous clients behind one proxy address, the default limits, and
    the only worker restarted: every client is back without a 429 (its
    ticket says it is a returning client, not a new one), resumes from the
    history the new worker read back (no catch-up from MongoDB), and gets
    every event exactly once."""
    import time

    from .helpers import wait_for

    db, coll = namespace
    env = server_env(mongo.uri, db, coll)
    # The defaults: the connect budget, and reading history back.
    env.update(
        WSPROXY_CONNECT_RATE=None,
        WSPROXY_CONNECT_BURST=None,
        WSPROXY_HISTORY_PREFILL=None,
    )
    server = gunicorn(env)
    storm = _Storm(server.ws_url(), STORM)
    writer = None
    try:
        # The first connections of 150 new clients: the connect budget
        # admits 100 at once, the rest within a few seconds.
        wait_for(lambda: all(storm.hellos), scaled(30), "every client in")
        refused_before = dict(storm.refused)
        writer = _PacedWriter(mongo_client[db][coll], 20)
        # Connected for a while, as clients are when a deploy comes: each
        # has earned a reconnect (tickets.REFILL seconds).
        wait_for(
            lambda: all(len(s) >= 20 * (tickets.REFILL + 0.5) for s in storm.seqs),
            scaled(30),
            "events before the restart",
        )
        if how == "sigterm":
            server.stop(signal.SIGTERM)  # each client gets 1001
        else:  # the whole server at once: the master and its worker
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(scaled(10))
            wait_for(
                lambda: not _listening(server.port),
                scaled(10),
                "the killed server's port to be free",
            )
        restarted = gunicorn(env, port=server.port)
        ready = time.monotonic()
        wait_for(
            lambda: all(storm.hellos_after(ready - 5)), scaled(30), "every client back"
        )
        back = sorted(t - ready for t in storm.hellos_after(ready - 5))
        written = writer.stop()
        writer = None
        try:
            wait_for(
                lambda: all(len(s) >= written for s in storm.seqs),
                scaled(20),
                "every event",
            )
        except AssertionError:
            import collections

            print("written", written, collections.Counter(len(s) for s in storm.seqs))
            bad = [s for s in storm.seqs if s != list(range(written))][:3]
            for s in bad:
                print(
                    sorted(set(range(written)) - set(s)),
                    [x for x in s if s.count(x) > 1][:5],
                    s[:5],
                    len(s),
                )
            print([h for h in storm.hellos][:3])
            print(restarted.output()[-3000:])
            raise
    finally:
        if writer is not None:
            writer.stop()
        storm.close()
    assert storm.refused == refused_before, storm.refused
    for seqs in storm.seqs:
        assert seqs == list(range(written))
    log = restarted.output()
    assert "resume: catch-up" not in log
    assert log.count("resume: history") >= STORM - 5
    assert back[-1] < scaled(15), back[-10:]


@pytest.mark.heavy
def test_a_client_reconnecting_in_a_loop_is_still_throttled(
    mongo, mongo_client, namespace, gunicorn
):
    """One client from the address opens connections in a loop, each time
    with the ticket of the last hello: its ticket's allowance runs out (the
    one it is given on a reconnect carries what is left), so it gets what
    the connect budget gives anyone, and a bystander keeps getting events."""
    import time
    import urllib.parse

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as sync_connect

    from .helpers import WSClient

    db, coll = namespace
    env = server_env(mongo.uri, db, coll)
    env.update(WSPROXY_CONNECT_RATE="2", WSPROXY_CONNECT_BURST="5")
    server = gunicorn(env)
    bystander = WSClient(server.ws_url(), source_address=("127.0.0.2", 0))
    assert bystander.recv()["type"] == "hello"
    ticket, admitted, refused = None, 0, 0
    seconds = 3 + tickets.REFILL * tickets.CAP  # long enough to earn them all
    end = time.monotonic() + seconds
    # 40 attempts a second, 20 times the connect rate: a loop that the
    # budget must hold, without spending two cores on it for 18 s.
    period, next_attempt = 0.025, time.monotonic()
    while time.monotonic() < end:
        time.sleep(max(0.0, next_attempt - time.monotonic()))
        next_attempt += period
        url = server.ws_url(
            urllib.parse.urlencode({"ticket": ticket}) if ticket else ""
        )
        try:
            with sync_connect(
                url, compression=None, proxy=None, source_address=("127.0.0.1", 0)
            ) as ws:
                ticket = json.loads(ws.recv(timeout=scaled(5)))["ticket"]
                admitted += 1
        except InvalidStatus as exc:
            assert exc.response.status_code == 429
            refused += 1
    # The connect budget's burst and rate, and at most the reconnects its
    # ticket earned while it looped (one per REFILL seconds, CAP at once).
    budget = 5 + 2 * seconds
    assert admitted <= budget + seconds / tickets.REFILL + 1, admitted
    assert refused > 10 * admitted, (admitted, refused)
    mongo_client[db][coll].insert_one({"seq": 1})
    assert bystander.recv_type("change")["event"]["fullDocument"]["seq"] == 1
    bystander.close()


def test_what_a_starting_worker_reads_back_is_history_for_resumes_only():
    """Changes from before the watcher started (Recorded) go into the
    history and to no one; until PREFILLED an id found in it is not served
    from it (changes still to be recorded would be missed), then it is."""
    import threading

    from wsproxy.fanout.hub import PREFILLED, Barrier, Hub, Recorded
    from wsproxy.transport import codec

    from .test_hub import FakeClient, change, hello

    hub = Hub(history_size=100, prefilling=True)
    hub.start()
    stop = threading.Event()
    try:
        live = FakeClient()
        assert hub.register(live, None, hello) == "none"
        old = [change(i) for i in range(5)]
        for item in old[:3]:
            assert hub.submit(Recorded(item), stop)
        recorded = threading.Event()
        assert hub.submit(Barrier(recorded.set), stop)
        assert recorded.wait(scaled(5))
        assert hub.history_ids() == [c.id for c in old[:3]]
        assert hub.register(FakeClient(), old[0].id, hello) is None
        for item in old[3:]:
            assert hub.submit(Recorded(item), stop)
        assert hub.submit(PREFILLED, stop)
        assert hub.prefilled.wait(scaled(5))
        resumed = FakeClient()
        assert hub.register(resumed, old[0].id, hello) == "history"
        assert resumed.frames == [codec.frame(hello("history"))] + [
            c.frame for c in old[1:]
        ]
        new = change(5)
        assert hub.submit(new, stop)
        assert live.wait_for(2)[1:] == [new.frame]  # none of the old ones
        assert resumed.wait_for(6)[-1] == new.frame
    finally:
        hub.stop()
