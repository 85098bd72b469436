"""Reconnect tickets (wsproxy/limits/tickets.py): a returning client is not a new
one, and a client reconnecting in a loop runs out."""

import pytest

from wsproxy.limits import tickets
from wsproxy.limits.tickets import Tickets

from .helpers import sealer_for_tests

KEY = ("address", "10.0.0.1")


class _Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def _issuer():
    clock = _Clock()
    return Tickets(sealer_for_tests(), clock=clock), clock


def test_a_new_client_holds_no_reconnect_and_earns_them_while_connected():
    issuer, clock = _issuer()
    text = issuer.seal(issuer.new(), KEY)
    assert issuer.open(text, KEY).allowance(clock.now) == 0
    clock.now += tickets.REFILL
    assert issuer.open(text, KEY).allowance(clock.now) == pytest.approx(1)
    clock.now += 100 * tickets.REFILL
    assert issuer.open(text, KEY).allowance(clock.now) == tickets.CAP


def test_a_reconnect_does_not_restart_the_allowance():
    """The ticket given on a reconnect carries what is left: a client that
    reconnects in a loop runs out after CAP."""
    issuer, clock = _issuer()
    text = issuer.seal(issuer.new(), KEY)
    clock.now += 1000
    spent = 0
    for _ in range(10):
        ticket = issuer.open(text, KEY)
        used = ticket.allowance(clock.now) >= 1
        spent += used
        text = issuer.seal(issuer.after(ticket, used=used), KEY)
        clock.now += 0.1
    assert spent == tickets.CAP


def test_a_ticket_already_used_here_buys_nothing():
    issuer, clock = _issuer()
    first = issuer.seal(issuer.new(), KEY)
    clock.now += 1000
    ticket = issuer.open(first, KEY)
    issuer.seal(issuer.after(ticket, used=True), KEY)
    clock.now += 1
    assert issuer.open(first, KEY) is None  # replayed: spent


def test_a_ticket_is_bound_to_its_principal_and_deployment():
    from wsproxy.access.sealing import Sealer

    issuer, clock = _issuer()
    text = issuer.seal(issuer.new(), KEY)
    assert issuer.open(text, ("address", "10.0.0.2")) is None
    assert issuer.open(text, ("principal", "10.0.0.1")) is None
    other = Tickets(Sealer(["another deployment's secret!"]), clock=clock)
    assert other.open(text, KEY) is None
    # Tampered, foreign, empty, huge or not text: nothing, never an error.
    flipped = text[:10] + ("A" if text[10] != "A" else "B") + text[11:]
    for bad in (flipped, "", "x" * 5000, None, 42, "!!", text + "A"):
        assert issuer.open(bad, KEY) is None
    # A resume id is sealed with the same keys, for another purpose.
    resume_id = sealer_for_tests().seal({"_data": "82AB"})
    assert issuer.open(resume_id, KEY) is None


def test_tickets_open_on_every_worker_sharing_the_key():
    """No shared state but the key: another process (another worker, host,
    or this one after a kill -9) opens them too."""
    issuer, clock = _issuer()
    text = issuer.seal(issuer.new(), KEY)
    restarted = Tickets(sealer_for_tests(), clock=clock)
    clock.now += 2 * tickets.REFILL
    assert restarted.open(text, KEY).allowance(clock.now) == pytest.approx(2)
