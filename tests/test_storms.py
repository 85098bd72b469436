"""Storms (issue 22, "The edges", 2 and 3): every client of a worker
coming back at once, after a mass disconnect or a restart."""

import asyncio
import json

from websockets.asyncio.client import connect

from .helpers import http_get, scaled, server_env

APP = "tests.stormapp:app"


async def _hellos(url, count, timeout):
    """Open ``count`` connections at once; each one's first message."""
    async def one():
        async with connect(url, compression=None, open_timeout=timeout,
                           proxy=None) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), timeout))

    return await asyncio.gather(*(one() for _ in range(count)),
                                return_exceptions=True)


def test_handshakes_run_a_few_at_a_time(mongo, namespace, gunicorn):
    """A thousand clients coming back at once each got a pool thread at
    once, and a thousand runnable threads made every lock a convoy
    (handshakes waited 5-17 s): the worker works on a few handshakes at a
    time, the others wait their turn without wanting the GIL."""
    from wsproxy import views
    db, coll = namespace
    server = gunicorn(server_env(mongo.uri, db, coll), app=APP)
    hellos = asyncio.run(_hellos(server.ws_url(), 60, scaled(30)))
    assert [h["type"] if isinstance(h, dict) else h for h in hellos] == (
        ["hello"] * 60)
    status, body = http_get(server.url + "/authorizing")
    assert status == 200
    most = json.loads(body)["most"]
    assert 1 <= most <= views._HANDSHAKES_AT_ONCE, most
