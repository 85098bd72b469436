"""wsproxy.logsafe: client text escaped for a log line."""

import logging

import pytest

from wsproxy.logsafe import OneLine, shown


@pytest.mark.parametrize(
    "text, logged",
    [
        ("shop.orders", "shop.orders"),
        ("café ünïcode", "café ünïcode"),  # printable: as is
        ("a\n2026-01-01 [CRITICAL] forged", "a\\n2026-01-01 [CRITICAL] forged"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x1b[31mred", "\\x1b[31mred"),  # terminal escapes
        ("a\u2028b\x85c", "a\\u2028b\\x85c"),  # other line breaks
        ("a\\nb", "a\\\\nb"),  # a backslash the client sent
        (None, "None"),
    ],
)
def test_shown_keeps_one_line(text, logged):
    assert shown(text) == logged
    assert len(shown(text).splitlines()) <= 1


def test_one_line_formats_the_record_then_escapes_it():
    record = logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '"%(m)s %(U)s" %(s)s',
        ({"m": "GET", "U": "/x\nforged", "s": 404},),
        None,
    )
    assert OneLine().filter(record)
    assert record.getMessage() == '"GET /x\\nforged" 404'


@pytest.mark.parametrize(
    "text, logged",
    [
        (
            "Invalid HTTP request line: 'GET /ws?access_token=SECRET'",
            "Invalid HTTP request line: 'GET /ws?access_token=***'",
        ),
        (
            "GET /ws?ns=a&access_token=SECRET&ops=insert HTTP/1.1",
            "GET /ws?ns=a&access_token=***&ops=insert HTTP/1.1",
        ),
        ('"GET /ws?ACCESS_TOKEN=SECRET#x"', '"GET /ws?ACCESS_TOKEN=***#x"'),
        ("access_token= nothing", "access_token= nothing"),
        ("no token here", "no token here"),
    ],
)
def test_masked(text, logged):
    from wsproxy.logsafe import masked

    assert masked(text) == logged


def _record(msg, args=(), exc_info=None):
    return logging.LogRecord(
        "gunicorn.error", logging.WARNING, __file__, 1, msg, args, exc_info
    )


def test_mask_access_tokens_covers_the_message_its_arguments_and_traceback():
    from wsproxy.logsafe import MaskAccessTokens

    mask = MaskAccessTokens()
    for record in (
        _record("Invalid request: 'GET /?access_token=SECRET'"),
        _record("Error handling request %s %s", ("GET", "/ws?access_token=SECRET")),
        _record("%(r)s", ({"r": "GET /?access_token=SECRET"},)),
    ):
        assert mask.filter(record)
        assert "SECRET" not in record.getMessage()
        assert "access_token=***" in record.getMessage()
    try:
        raise ValueError("bad /ws?access_token=SECRET")
    except ValueError:
        import sys

        record = _record("failed", exc_info=sys.exc_info())
    assert mask.filter(record)
    text = logging.Formatter().format(record)
    assert "SECRET" not in text and "access_token=***" in text
    assert "Traceback" in text
    # Nothing to mask: the record is left as it was.
    record = _record("client %s connected", (7,))
    assert mask.filter(record) and record.args == (7,)
