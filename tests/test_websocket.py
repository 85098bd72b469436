"""The frame policy, the handler's wake-up and the handshake checks, on
their own. (The host and origin checks: test_principal.py.)"""

import flask_sock
import pytest
import simple_websocket
from flask import Blueprint, Flask
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from wsproxy import ClientError
from wsproxy.transport import websocket
from wsproxy.transport.websocket import FramePolicy


def policy(rate=1000, burst=1000, max_bytes=4096):
    return FramePolicy(rate=rate, burst=burst, max_message_bytes=max_bytes)


def test_every_kind_of_frame_is_paid_for():
    p = policy(rate=0.001, burst=4)
    frames = [
        Ping(b""),
        Pong(b""),
        TextMessage("a", message_finished=False),
        TextMessage("", message_finished=True),
    ]
    assert [p.check(f) for f in frames] == [None] * 4
    assert p.check(Ping(b"")) == (1008, "too many frames (limit 0.001/s)")


def test_a_message_may_not_be_split_into_more_than_16_fragments():
    p = policy()
    assert p.check(TextMessage("{", message_finished=False)) is None
    for _ in range(FramePolicy.MAX_FRAGMENTS - 2):
        assert p.check(TextMessage("", message_finished=False)) is None
    assert p.check(TextMessage("", message_finished=False)) == (
        1008,
        "too many fragments (limit 16 per message)",
    )


def test_a_finished_message_starts_the_count_again():
    p = policy()
    for _ in range(40):
        assert p.check(TextMessage("x", message_finished=False)) is None
        assert p.check(TextMessage("y", message_finished=True)) is None


def test_the_size_limit_counts_bytes_across_fragments():
    p = policy(max_bytes=10)
    assert p.check(TextMessage("éé", message_finished=False)) is None  # 4
    assert p.check(BytesMessage(b"123456", message_finished=False)) is None
    assert p.check(TextMessage("é", message_finished=True)) == (
        1009,
        "message too big (limit 10 bytes)",
    )


def test_after_a_breach_only_the_close_reply_gets_through():
    woken = []
    p = FramePolicy(
        rate=0.001, burst=1, max_message_bytes=100, on_breach=lambda: woken.append(True)
    )
    assert p.admit(Ping(b"")) is True
    assert p.admit(Ping(b"")) is False
    assert p.breach == (1008, "too many frames (limit 0.001/s)")
    assert woken == [True]
    assert p.admit(TextMessage("x")) is False
    assert p.admit(CloseConnection(1000)) is True


# ---------------------------------------------------------------------------
# The handler's wake-up (one poll waits for it and the client's socket).


def _readable(fd):
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_a_wakeup_set_from_another_thread_makes_its_descriptor_readable():
    import threading

    wake = websocket.Wakeup()
    fd = wake.fileno()
    assert not _readable(fd) and not wake.is_set()
    setter = threading.Thread(target=wake.set, name="test-setter")
    setter.start()
    setter.join()
    assert wake.is_set() and _readable(fd)
    wake.clear()
    assert not wake.is_set() and not _readable(fd)
    wake.close()


def test_the_waiting_thread_sets_its_own_wakeup_without_a_syscall():
    import threading

    wake = websocket.Wakeup()
    wake.owner = threading.get_ident()
    fd = wake.fileno()
    wake.set()
    # Not readable, but set: wait() looks at the flag before it polls.
    assert wake.is_set() and not _readable(fd)
    assert wake.wait(10)
    wake.clear()
    assert not wake.wait(0)
    wake.close()


def test_a_closed_wakeup_ignores_late_sets():
    wake = websocket.Wakeup()
    wake.fileno()
    wake.close()
    wake.set()  # the broadcaster, after the connection ended
    assert not wake.is_set()
    with pytest.raises(ValueError):
        wake.fileno()


_HANDSHAKE = {
    "HTTP_SEC_WEBSOCKET_VERSION": "13",
    "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    "HTTP_HOST": "example.com",
}


@pytest.mark.parametrize(
    "headers, reason",
    [
        (
            {
                "HTTP_SEC_WEBSOCKET_EXTENSIONS": (
                    "permessage-deflate; server_max_window_bits=abc"
                )
            },
            "Sec-WebSocket-Extensions: server_max_window_bits must be an integer",
        ),
        (
            {
                "HTTP_SEC_WEBSOCKET_EXTENSIONS": (
                    "permessage-deflate; client_max_window_bits=1x"
                )
            },
            "Sec-WebSocket-Extensions: client_max_window_bits must be an integer",
        ),
        (
            {
                "HTTP_SEC_WEBSOCKET_EXTENSIONS": (
                    'permessage-deflate; server_max_window_bits="10"'
                )
            },
            "Sec-WebSocket-Extensions: server_max_window_bits must be an integer",
        ),
        (
            {"HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; x=\u00e9"},
            "Sec-WebSocket-Extensions must be ASCII",
        ),
        (
            {"HTTP_SEC_WEBSOCKET_PROTOCOL": "bearer, \u00e9"},
            "Sec-WebSocket-Protocol must be ASCII",
        ),
        ({"HTTP_CONNECTION": "Upgrade, \u00e9"}, "Connection must be ASCII"),
        ({"HTTP_HOST": "xn--zz"}, "Host is not a valid host name"),
        ({"HTTP_HOST": "\u00e9"}, "Host is not a valid host name"),
    ],
)
def test_handshake_headers_wsproto_would_fail_on_are_400(headers, reason):
    # wsproto raised (a 500 and a traceback) for each of these.
    with pytest.raises(ClientError) as info:
        websocket.check_handshake({**_HANDSHAKE, **headers})
    assert info.value.status == 400 and info.value.reason == reason


@pytest.mark.parametrize(
    "extensions",
    [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits=15",
        "permessage-deflate; server_max_window_bits=99",  # declined, not an error
        "x-webkit-deflate-frame; max_window_bits=abc",  # not ours to read
        ";;;,,,",
    ],
)
def test_handshake_headers_wsproto_reads_are_accepted(extensions):
    websocket.check_handshake(
        {**_HANDSHAKE, "HTTP_SEC_WEBSOCKET_EXTENSIONS": extensions}
    )


def test_only_wsproxys_route_builds_wsproxys_server():
    """flask-sock builds every route's server from its module's ``Server``
    and the app's SOCK_SERVER_OPTIONS: wsproxy's route gets a ``Server`` of
    its own, the module and the host's routes keep simple-websocket's
    (tests/test_access.py has both routes answering in one app)."""
    app = Flask(__name__)
    sock = flask_sock.Sock(app)
    bp = Blueprint("ours", __name__)

    @sock.route("/echo")
    def echo(ws):
        pass

    @websocket.route(flask_sock.Sock(), "/ws", bp=bp, endpoint="websocket")
    def view(ws):
        pass

    app.register_blueprint(bp)
    assert flask_sock.Server is simple_websocket.Server
    host_view = app.view_functions["echo"]
    our_view = app.view_functions["ours.websocket"]
    assert host_view.__globals__["Server"] is simple_websocket.Server
    assert our_view.__globals__["Server"] is not simple_websocket.Server
    assert host_view.__globals__ is vars(flask_sock)
