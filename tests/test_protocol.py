"""The wire protocol's vocabulary (wsproxy/protocol.py): message types,
states and close codes are their values on the wire, and what a client
does about each close. (docs/protocol.md and the README against these
enums: test_readme.py.)"""

import json

from wsproxy.protocol import (
    CLOSE_POLICY,
    REFUSAL_ACTION,
    ClientAction,
    ClientMessageType,
    CloseCode,
    LocalCloseCode,
    MessageType,
    ResumeMode,
    SourceState,
    WatcherState,
    watcher_state,
)
from wsproxy.transport import codec


def test_watcher_states_on_the_wire():
    assert watcher_state("starting") is WatcherState.STARTING
    assert watcher_state("connected") is WatcherState.CONNECTED
    for state in ("reconnecting", "failed", "stopped"):
        assert watcher_state(state) is WatcherState.RECONNECTING
    assert [str(s) for s in SourceState] == [
        "starting",
        "connected",
        "reconnecting",
        "failed",
        "stopped",
    ]
    for state in SourceState:
        assert watcher_state(state) is watcher_state(state.value)


def test_the_enums_are_their_values_on_the_wire():
    # hello's resume and watcher, and every other enum a message carries,
    # encode to exactly the bytes their plain values did.
    assert [m.value for m in ResumeMode] == ["none", "history", "catch-up", "snapshot"]
    for mode in ResumeMode:
        for state in WatcherState:
            assert codec.control_message(
                MessageType.HELLO, resume=mode, watcher=state
            ) == (
                codec.control_message("hello", resume=mode.value, watcher=state.value)
            )
    assert codec.control_message(
        MessageType.STATUS, watcher=WatcherState.CONNECTED, detail=""
    ) == ('{"type": "status", "watcher": "connected", "detail": ""}')
    assert json.dumps({"watcher": SourceState.FAILED}) == '{"watcher": "failed"}'


def test_message_types_are_their_values_on_the_wire():
    assert [str(m) for m in MessageType] == [
        "hello",
        "change",
        "reset",
        "status",
        "pong",
        "subscribed",
        "error",
        "snapshot",
        "snapshot_end",
        "leave",
    ]
    assert [str(m) for m in ClientMessageType] == ["ping", "subscribe"]


def test_close_codes_and_what_a_client_does_about_each():
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "UNSUPPORTED_DATA": 1003,
        "INVALID_DATA": 1007,
        "ABNORMAL": 1006,
        "POLICY": 1008,
        "TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN": 1013,
        "SLOW_CONSUMER": 4008,
    }
    assert [int(c) for c in LocalCloseCode] == [1005, 1015]
    # Every code has a policy; a worker going away or an overflowed outbox
    # resumes at once, a busy worker backs off, a refusal of the data stops.
    assert set(CLOSE_POLICY) == set(CloseCode) | set(LocalCloseCode)
    assert CLOSE_POLICY[CloseCode.GOING_AWAY] is ClientAction.RESUME
    assert CLOSE_POLICY[CloseCode.SLOW_CONSUMER] is ClientAction.RESUME
    assert CLOSE_POLICY[CloseCode.TRY_AGAIN] is ClientAction.BUSY
    assert CLOSE_POLICY[CloseCode.POLICY] is ClientAction.STOP
    assert REFUSAL_ACTION[401] is ClientAction.SIGNIN
    assert REFUSAL_ACTION[503] is ClientAction.BUSY
    assert REFUSAL_ACTION[403] is ClientAction.STOP
