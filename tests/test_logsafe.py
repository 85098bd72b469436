"""wsproxy.logsafe: client text escaped for a log line."""

import logging

import pytest

from wsproxy.logsafe import OneLine, shown


@pytest.mark.parametrize("text, logged", [
    ("shop.orders", "shop.orders"),
    ("café ünïcode", "café ünïcode"),            # printable: as is
    ("a\n2026-01-01 [CRITICAL] forged", "a\\n2026-01-01 [CRITICAL] forged"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x1b[31mred", "\\x1b[31mred"),              # terminal escapes
    ("a\u2028b\x85c", "a\\u2028b\\x85c"),         # other line breaks
    ("a\\nb", "a\\\\nb"),                         # a backslash the client sent
    (None, "None"),
])
def test_shown_keeps_one_line(text, logged):
    assert shown(text) == logged
    assert len(shown(text).splitlines()) <= 1


def test_one_line_formats_the_record_then_escapes_it():
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1,
                               '"%(m)s %(U)s" %(s)s',
                               ({"m": "GET", "U": "/x\nforged", "s": 404},),
                               None)
    assert OneLine().filter(record)
    assert record.getMessage() == '"GET /x\\nforged" 404'
