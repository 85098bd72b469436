"""One error policy for every change stream: the watcher's and a catch-up's.

PyMongo already resumes by itself, once per ``try_next()``, from what its
change-stream spec calls resumable (``_resumable`` in
``pymongo/change_stream_shared.py``): any ``ConnectionFailure`` (a dropped
connection, a timeout, and every "not primary" / "node is recovering" code,
raised as ``NotPrimaryError``), ``CursorNotFound``, and server errors
labelled ``ResumableChangeStreamError``. It never resumes a stream's first
``aggregate``, and tries only once. What still reaches us is sorted here
into one of three kinds (:class:`ErrorKind`), each saying what the
stream's user should do:

* :attr:`ErrorKind.HISTORY_LOST`: the position itself is gone. The token is older
  than the oplog window, was not found there, or the server will not read
  it as a token at all. Retrying from it can never work: start again from
  now and tell whoever reads the stream that events may have been missed
  (a ``reset`` message).
* :attr:`ErrorKind.FATAL`: the deployment or the settings refuse the stream (a
  missing privilege, not a replica set, a bad pipeline). The position is
  still good and nothing was lost, but a retry will not work until someone
  fixes the cause: log it at ERROR and retry only slowly.
* :attr:`ErrorKind.TRANSIENT`: everything else: the network, an election, a
  shutdown, a time limit, and any error not named here. Nothing was lost
  and retrying from the same position loses nothing, which is why it is
  the default: an unknown error must never claim that events were lost.
"""

from enum import StrEnum

from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError


class ErrorKind(StrEnum):
    """What an error means for a change stream's user (:func:`classify`)."""

    HISTORY_LOST = "history lost"  # the position is gone: reset, then from now
    FATAL = "fatal"  # refused by the deployment or the settings: retry slowly
    TRANSIENT = "transient"  # anything else: retry from the same position


# The kinds by their former names.
HISTORY_LOST = ErrorKind.HISTORY_LOST
FATAL = ErrorKind.FATAL
TRANSIENT = ErrorKind.TRANSIENT

# The server cannot resume from the position: it has left the oplog, or
# was never in it.
HISTORY_LOST_CODES = frozenset(
    {
        286,  # ChangeStreamHistoryLost: older than the oplog window
        280,  # ChangeStreamFatalError: the resume token was not found
        260,  # InvalidResumeToken (e.g. resumeAfter an invalidate)
    }
)

# MongoDB's own checks while parsing a resume token (resume_token.cpp):
# the server will not read it as a position at all. Sealed ids mean a
# client can no longer forge one, but a token from another server version
# or deployment can still meet them.
TOKEN_REJECTED_CODES = frozenset(
    {
        40646,  # oversized resume token
        40647,  # _data missing or of the wrong type
        40648,  # _typeBits of the wrong type
        40649,  # empty resume token
        50793,
        50794,
        50855,  # txnOpIndex missing, negative, not an integer
        50795,
        50796,
        50854,  # version unsupported, missing, not an integer
        50870,
        50872,  # fromInvalidate not a boolean, missing
        51055,
        51056,
        51057,  # tokenType missing, not an integer, unknown
        6189500,
        6189501,
        6189503,
        6189504,  # UUID / eventIdentifier shape
        7182501,  # fragmentNum
    }
)

# Generic codes a server also uses for a bad token, told apart from a bad
# pipeline (the same codes, FATAL below) only by the message: MongoDB says
# FailedToParse "resume token string was not a valid hex string", and
# SecantusDB uses FailedToParse for every token it cannot read ("resume
# token is not a valid resume token", "resume token missing _data").
GENERIC_PARSE_CODES = frozenset({9, 2})  # FailedToParse, BadValue
TOKEN_MESSAGE = "resume token"

# The deployment or the settings refuse the stream; a retry will not fix
# it by itself, but the watcher still retries (slowly), so fixing a role
# or a pipeline needs no restart.
FATAL_CODES = frozenset(
    {
        13,  # Unauthorized
        18,  # AuthenticationFailed
        8000,  # AtlasError (e.g. the user may not run changeStream)
        40573,  # change streams need a replica set or sharded cluster
        40324,  # unrecognised pipeline stage
        40602,  # $changeStream must be the first stage
        9,  # FailedToParse (bad pipeline)
        2,  # BadValue (bad option)
    }
)


def error_code(exc: BaseException | None) -> int | None:
    return exc.code if isinstance(exc, OperationFailure) else None


def rejects_token(exc: BaseException | None) -> bool:
    """The server will not read the resume token as a position."""
    code = error_code(exc)
    if code in TOKEN_REJECTED_CODES:
        return True
    return code in GENERIC_PARSE_CODES and TOKEN_MESSAGE in _message(exc).lower()


def is_history_lost(exc: BaseException | None) -> bool:
    return error_code(exc) in HISTORY_LOST_CODES or rejects_token(exc)


def is_fatal(exc: BaseException | None) -> bool:
    if is_history_lost(exc):
        return False  # a bad token is not a bad deployment
    return error_code(exc) in FATAL_CODES or isinstance(exc, ConfigurationError)


class StreamEnded(PyMongoError):
    """The server closed a change stream's cursor without an error (no
    invalidate). Nothing says where it stopped: treat it as transient, and
    never as "idle", or a catch-up would join the live feed past events it
    never read."""


def classify(exc: BaseException) -> ErrorKind:
    """What a stream's user should do about ``exc``, an :class:`ErrorKind`
    (see the module docstring)."""
    if is_history_lost(exc):
        return ErrorKind.HISTORY_LOST
    if is_fatal(exc):
        return ErrorKind.FATAL
    return ErrorKind.TRANSIENT


def _message(exc: BaseException | None) -> str:
    details = getattr(exc, "details", None)
    if isinstance(details, dict) and isinstance(details.get("errmsg"), str):
        return details["errmsg"]
    return str(exc)
