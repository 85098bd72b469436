"""The one error policy (wsproxy/stream/errorpolicy.py), as a table.

What each kind leads to is tested where it happens: the watcher in
test_source.py, a client's catch-up in test_catchup.py.
"""

import pytest
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    CursorNotFound,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from wsproxy.stream.errorpolicy import FATAL, HISTORY_LOST, TRANSIENT, classify


def failure(code, errmsg="failed"):
    """An OperationFailure as PyMongo builds it from a server's reply."""
    return OperationFailure(errmsg, code, {"ok": 0, "errmsg": errmsg, "code": code})


@pytest.mark.parametrize(
    "exc, kind",
    [
        # The position is gone.
        (failure(286, "resume point may no longer be in the oplog"), HISTORY_LOST),
        (failure(280, "the resume token was not found"), HISTORY_LOST),
        (failure(260, "cannot resumeAfter an invalidate"), HISTORY_LOST),
        (
            failure(40647, "Bad resume token: _data of missing or of wrong type"),
            HISTORY_LOST,
        ),
        (
            failure(50795, "Invalid Resume Token: only supports version 0, 1 and 2"),
            HISTORY_LOST,
        ),
        # FailedToParse about the token (MongoDB, SecantusDB) ...
        (failure(9, "resume token string was not a valid hex string"), HISTORY_LOST),
        (failure(9, "resume token is not a valid resume token"), HISTORY_LOST),
        # ... and about the pipeline: the same code, a different meaning.
        (failure(9, "Unrecognized pipeline stage name: '$bogus'"), FATAL),
        (failure(2, "unknown fullDocument mode"), FATAL),
        # The deployment or the settings refuse.
        (failure(13, "not authorized on db to execute command"), FATAL),
        (failure(18, "Authentication failed."), FATAL),
        (failure(8000, "user is not allowed to do action [changeStream]"), FATAL),
        (failure(40573, "only supported on replica sets"), FATAL),
        (ConfigurationError("server reports wire version 2"), FATAL),
        # Everything else is retried from the same position.
        (NotPrimaryError("not primary", {"code": 10107}), TRANSIENT),
        (failure(11600, "interrupted at shutdown"), TRANSIENT),
        (failure(91, "shutdown in progress"), TRANSIENT),
        (failure(189, "primary stepped down"), TRANSIENT),
        (failure(262, "exceeded time limit"), TRANSIENT),
        (failure(11601, "operation was interrupted"), TRANSIENT),
        (CursorNotFound("cursor id 101 not found", 43), TRANSIENT),
        (ExecutionTimeout("operation exceeded time limit", 50), TRANSIENT),
        (AutoReconnect("connection closed"), TRANSIENT),
        (NetworkTimeout("timed out"), TRANSIENT),
        (ServerSelectionTimeoutError("no primary"), TRANSIENT),
        (failure(12345, "a code nobody named"), TRANSIENT),
        (RuntimeError("not even a database error"), TRANSIENT),
    ],
    ids=lambda value: (
        value
        if isinstance(value, str)
        else f"{type(value).__name__}-{getattr(value, 'code', '')}"
    ),
)
def test_every_error_has_one_kind(exc, kind):
    assert classify(exc) == kind
