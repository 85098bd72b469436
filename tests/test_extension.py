"""The extension (wsproxy/http/extension.py), in-process: the routes
init_app adds, each of which can be moved or left out but never
shadow one of the host app's, and one registration per app. (Other
wrong setups: test_setup.py.)"""

import pytest

from wsproxy import ConfigError, WSProxy

from .test_setup import make_app


@pytest.mark.parametrize(
    "path_key, path",
    [
        ("WSPROXY_PATH", "/ws"),
        ("WSPROXY_PAGE_PATH", "/wsproxy/"),
        ("WSPROXY_METRICS_PATH", "/metrics"),
        ("WSPROXY_HEALTH_PATH", "/healthz"),
        ("WSPROXY_READY_PATH", "/readyz"),
    ],
)
def test_a_path_the_app_already_has_is_refused(path_key, path):
    app = make_app()
    app.add_url_rule(path, "host_view", lambda: "the host's")
    with pytest.raises(ConfigError) as info:
        WSProxy(app)
    message = str(info.value)
    assert repr(path) in message and "'host_view'" in message
    assert f"set {path_key} to another path" in message
    assert [
        r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("wsproxy.")
    ] == []
    # Moving wsproxy's route (or leaving it out) resolves it.
    app2 = make_app(**{path_key: "/elsewhere" if path_key == "WSPROXY_PATH" else None})
    app2.add_url_rule(path, "host_view", lambda: "the host's")
    WSProxy(app2)
    assert app2.url_map.bind("x").match(path)[0] == "host_view"


def test_a_clash_with_the_pages_assets_names_the_page_setting():
    app = make_app()
    app.add_url_rule(
        "/wsproxy-static/<path:filename>", "assets", lambda filename: filename
    )
    with pytest.raises(
        ConfigError,
        match="set WSPROXY_PAGE_PATH to another path, or None to leave it out",
    ):
        WSProxy(app)


def test_a_route_added_after_init_app_is_found_before_starting():
    app = make_app(WSPROXY_PAGE_PATH="/")
    ext = WSProxy(app)
    app.add_url_rule("/", "home", lambda: "the host's home")
    with pytest.raises(ConfigError) as info:
        ext.start(app)  # what gunicorn's post_worker_init does
    assert "'/'" in str(info.value) and "'home'" in str(info.value)


def test_each_route_can_be_left_out():
    app = make_app(
        WSPROXY_PAGE_PATH=None,
        WSPROXY_METRICS_PATH=None,
        WSPROXY_HEALTH_PATH=None,
        WSPROXY_READY_PATH=None,
    )
    WSProxy(app)
    rules = sorted(
        {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("wsproxy.")}
    )
    assert rules == ["/ws"]


def test_the_websocket_path_cannot_be_left_out():
    with pytest.raises(ConfigError, match="WSPROXY_PATH=None"):
        WSProxy(make_app(WSPROXY_PATH=None))


def test_a_second_init_app_raises():
    app = make_app()
    WSProxy(app)
    with pytest.raises(RuntimeError, match="already registered"):
        WSProxy(app)
