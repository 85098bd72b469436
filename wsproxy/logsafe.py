"""Text from clients on its way to a log.

A client chooses much of what wsproxy logs (a refusal's reason quotes its
filter path or namespace; the access log its URL path, percent-decoded): a
newline in it would start a line of the client's making, one that reads
like any other. :func:`shown` escapes control characters, so a log line
stays one line. And a URL may carry credentials (``?access_token=``), which
gunicorn writes into its own log when a request line is malformed:
:class:`MaskAccessTokens` masks them. Nothing here imports the rest of
wsproxy: gunicorn's master loads the filters below with the packaged log
config (:mod:`wsproxy.gunicorn`), before any worker exists.
"""

import logging
import re

# Backslashes too, so that an escape in the log always means a character
# the client sent, never the text of one.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(value: object) -> str:
    """``str(value)`` with every character that is not printable (line
    breaks, terminal escapes, U+2028...) and backslashes escaped."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escaped(c) for c in text)


def _escaped(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable():
        return c
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class OneLine(logging.Filter):
    """Logs each record as one line, :func:`shown`: for the access log,
    whose atoms (the URL path, headers) are client text and never hold a
    line break of the server's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging reports a bad format itself
            return True
        record.msg, record.args = shown(message), ()
        return True


# The value of an access_token parameter, up to where a URL or a quoted
# log field would end it.
_ACCESS_TOKEN = re.compile(r"(access_token=)[^&\s'\"#;]+", re.IGNORECASE)
MASK = "***"


def masked(text: str) -> str:
    """``text`` with every ``access_token=`` value replaced by ``***``."""
    return _ACCESS_TOKEN.sub(r"\g<1>" + MASK, text)


class MaskAccessTokens(logging.Filter):
    """Masks ``access_token=`` values in a record: in its message once the
    arguments are in it (gunicorn logs ``Invalid request from ip=...:
    Invalid HTTP request line: 'GET /ws?access_token=...'`` formatted, and
    ``Error handling request %s`` with the URI as an argument), and in its
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging reports a bad format itself
            return True
        if _ACCESS_TOKEN.search(message):
            record.msg, record.args = masked(message), ()
        if record.exc_info and not record.exc_text:
            # What the formatter would write, formatted here to be masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masked(record.exc_text)
        return True
