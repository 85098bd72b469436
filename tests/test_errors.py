"""The package's exception types (wsproxy/errors.py): one base class, and a
client's error carrying the HTTP status that reports it."""

import pytest

from wsproxy import ClientError, ConfigError
from wsproxy.errors import FilterError, WSProxyError


def test_every_error_is_a_wsproxy_error():
    for kind in (ConfigError, ClientError, FilterError):
        assert issubclass(kind, WSProxyError)
    # A client's error is also a ValueError (what it sent is a bad value);
    # a bad filter is one of a client's errors.
    assert issubclass(ClientError, ValueError)
    assert issubclass(FilterError, ClientError)
    assert not issubclass(ConfigError, ClientError)


def test_a_clients_error_carries_its_reason_and_status():
    error = ClientError("ns: not granted", status=403)
    assert (error.reason, error.status, str(error)) == (
        "ns: not granted",
        403,
        "ns: not granted",
    )
    assert ClientError("bad").status == 400  # the default
    assert FilterError("filter: too deep").status == 400
    assert ClientError.status == 400  # not changed by an instance's status
    with pytest.raises(TypeError):
        ClientError("bad", 403)  # the status is given by name
