"""Principals and the checks made on the request before any
(wsproxy/access/principal.py): what a principal takes, and the Host and
Origin checks, on their own. (Authorization end to end, on a host app:
test_access.py.)"""

import pytest
from flask import Flask

from wsproxy import ClientError
from wsproxy.access import check_host, check_origin


def _request(app, url, headers):
    return app.test_request_context(url, headers=headers)


@pytest.mark.parametrize(
    "host, allowed, local, ok",
    [
        ("127.0.0.1:8000", None, "127.0.0.1", True),
        ("localhost:8000", None, "127.0.0.1", True),
        ("[::1]:8000", None, "::1", True),
        ("rebound.example:8000", None, "127.0.0.1", False),
        ("rebound.example:8000", None, "::ffff:127.0.0.1", False),
        ("anything.example", None, "10.0.0.5", True),  # not loopback: no check
        ("app.example.com", [".example.com"], "10.0.0.5", True),
        ("example.com", [".example.com"], "10.0.0.5", True),
        ("evil-example.com", [".example.com"], "10.0.0.5", False),
        ("app.example.com", ["app.example.com"], "127.0.0.1", True),
        ("other.example.com", ["app.example.com"], "127.0.0.1", False),
        ("app.example.com", [], "10.0.0.5", False),  # empty allows nothing
        ("x", ["*"], "127.0.0.1", True),
    ],
)
def test_allowed_hosts(host, allowed, local, ok):
    app = Flask(__name__)
    with _request(app, "/ws", {"Host": host}) as ctx:
        if ok:
            check_host(ctx.request, allowed, local)
        else:
            with pytest.raises(ClientError) as info:
                check_host(ctx.request, allowed, local)
            assert info.value.status == 400
            assert "WSPROXY_ALLOWED_HOSTS" in info.value.reason


@pytest.mark.parametrize(
    "url, origin, status",
    [
        ("http://a.example/ws", "http://a.example", None),
        ("http://a.example/ws", "https://a.example", None),  # TLS ends in front
        ("https://a.example/ws", "https://a.example", None),
        ("https://a.example/ws", "http://a.example", 403),  # a downgrade
        ("http://a.example:8000/ws", "http://a.example:8001", 403),
        ("http://a.example/ws", "http://a.example:80", None),
        ("http://a.example/ws", "http://b.example", 403),
        ("http://a.example/ws", "http://a.example:99999", 400),
        ("http://a.example/ws", "null", 403),
        ("http://a.example/ws", "http://a.example/path", None),
    ],
)
def test_same_origin(url, origin, status):
    app = Flask(__name__)
    with _request(app, url, {"Origin": origin}) as ctx:
        if status is None:
            check_origin(ctx.request, None)
        else:
            with pytest.raises(ClientError) as info:
                check_origin(ctx.request, None)
            assert info.value.status == status


def test_a_principal_takes_collections_of_names_not_one_string():
    from wsproxy import Principal

    with pytest.raises(TypeError):
        Principal("ada", namespaces="shop")  # not {"s", "h", "o", "p"}
    with pytest.raises(TypeError):
        Principal("ada", hide="card")
