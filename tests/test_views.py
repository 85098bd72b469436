"""The blueprint's views (wsproxy/http/views.py), in-process: the host
check on every route, the page and its assets. (The WebSocket route and
its refusals against the real gunicorn: test_access.py, test_hostile.py,
test_control.py.)"""

import pytest
from flask import Flask

from wsproxy import WSProxy

from .test_setup import URI


@pytest.mark.parametrize(
    "path",
    ["/wsproxy/", "/wsproxy-static/app.js", "/metrics", "/healthz", "/readyz", "/ws"],
)
def test_allowed_hosts_apply_to_every_route(path):
    # A listed name: wherever the connection arrived (a load balancer's
    # health check must use one of them too).
    from wsproxy import WSProxy

    app = Flask(__name__)
    app.config.update(
        WSPROXY_MONGODB_URI="mongodb://127.0.0.1:9/",
        SECRET_KEY="hosts-test-secret-key",
        WSPROXY_ALLOWED_HOSTS=["shop.example"],
    )
    WSProxy(app)
    client = app.test_client()
    response = client.get(path, headers={"Host": "10.0.0.5:8000"})
    assert response.status_code == 400
    assert response.json == {
        "error": "host 10.0.0.5 is not allowed; see WSPROXY_ALLOWED_HOSTS"
    }
    if path != "/readyz":  # would start the watcher
        response = client.get(path, headers={"Host": "shop.example"})
        assert response.status_code == (426 if path == "/ws" else 200)
        response.close()


def test_the_page_is_a_template_loaded_once_and_its_assets_static_files(
    tmp_path, monkeypatch
):
    # A host app with its own index.html: wsproxy's page is not shadowed.
    (tmp_path / "index.html").write_text("the host's index")
    app = Flask(__name__, template_folder=str(tmp_path))
    app.config.update(
        WSPROXY_MONGODB_URI=URI,
        SECRET_KEY="setup-tests-secret-key",
        WSPROXY_PAGE_PATH="/live",
    )
    WSProxy(app)
    loader = app.jinja_env.loader
    loaded = []
    get_source = loader.get_source
    monkeypatch.setattr(
        loader,
        "get_source",
        lambda env, name: (loaded.append(name), get_source(env, name))[1],
    )
    client = app.test_client()
    for _ in range(3):
        page = client.get("/live", base_url="http://localhost/app")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert 'content="/app/ws"' in html
        assert 'href="/app/wsproxy-static/app.css"' in html
    assert loaded == ["wsproxy/index.html"]  # then Jinja's cache
    for name in ("app.js", "app.css"):
        asset = client.get(f"/wsproxy-static/{name}")
        assert asset.status_code == 200 and asset.data
        assert asset.headers["Cache-Control"] == "public, max-age=60"
        asset.close()
    # The template is not an asset.
    assert client.get("/wsproxy-static/index.html").status_code == 404
