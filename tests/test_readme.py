"""The README and the documentation say what the code says.

The README keeps a compact configuration table with every ``WSPROXY_*``
key and its default, and the message types and close codes; the
documentation's configuration page is generated from ``config.SETTINGS``
(docs/hooks.py) but needs a details section for every setting, and its
protocol page a row for every message type and close code. A setting, a
message type or a close code added without documentation fails here.
"""

import importlib.util
import re

from wsproxy.config import ENVIRONMENT_ONLY, SETTINGS
from wsproxy.protocol import ClientMessageType, CloseCode, MessageType

from .helpers import ROOT

ROW = re.compile(r"^\| `(WSPROXY_[A-Z_]+)` \| `?([^|`]*)`? \|", re.M)
# Set in the environment by the repository's gunicorn.conf.py, though
# init_app knows it: listed with the environment-only names.
EMBEDDED = "WSPROXY_EMBEDDED"


def _section(text, title):
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _readme_tables():
    section = _section((ROOT / "README.md").read_text(), "Configuration")
    app_table, env_table = section.split("\n| variable |", 1)
    return dict(ROW.findall(app_table)), dict(ROW.findall(env_table))


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs/hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_in_the_readme_with_its_default():
    app_rows, env_rows = _readme_tables()
    assert set(app_rows) == {s.name for s in SETTINGS} - {EMBEDDED}
    for setting in SETTINGS:
        if setting.name != EMBEDDED:
            assert app_rows[setting.name] == setting.shown, setting.name


def test_the_readme_lists_every_environment_only_name():
    # init_app refuses a WSPROXY_* name it does not know: the names it
    # knows from the environment alone are the README's second table.
    _, env_rows = _readme_tables()
    assert set(env_rows) == ENVIRONMENT_ONLY | {EMBEDDED}


def test_the_configuration_page_documents_every_setting():
    hooks = _hooks()
    page = (ROOT / "docs/configuration.md").read_text()
    assert hooks.check_settings_page(page) == []
    rendered = hooks.render_settings_page(page)
    for setting in SETTINGS:
        assert f"[`{setting.name}`](#{setting.name.lower()}) | `{setting.shown}`" in (
            rendered
        ), setting.name


def test_the_configuration_check_fails_without_docs():
    # What the build (and the test above) does when a setting is added
    # to config.py but not to the page.
    hooks = _hooks()
    page = (ROOT / "docs/configuration.md").read_text()
    without = page.replace("### `WSPROXY_TRACKED_DOCS`", "### Tracked documents")
    assert hooks.check_settings_page(without) == [
        "no details heading for WSPROXY_TRACKED_DOCS"
    ]
    renamed = page.replace("| `WSPROXY_CHROMIUM` |", "| `WSPROXY_BROWSER` |")
    assert any("environment-only" in p for p in hooks.check_settings_page(renamed))


def test_the_protocol_is_documented():
    hooks = _hooks()
    page = (ROOT / "docs/protocol.md").read_text()
    assert hooks.check_protocol_page(page) == []
    rendered = hooks.render_protocol_page(page)
    assert "<!-- protocol:" not in rendered
    for code in CloseCode:
        assert f"| {code.value} | `CloseCode.{code.name}` |" in rendered


def test_the_readme_lists_every_message_type_and_close_code():
    readme = (ROOT / "README.md").read_text()
    types = _section(readme, "Message types")
    for kind in (*MessageType, *ClientMessageType):
        assert f"`{kind.value}`" in types, kind
    codes = _section(readme, "Close codes")
    for code in CloseCode:
        if code != CloseCode.ABNORMAL:  # never sent
            assert re.search(rf"^\| [0-9 /]*\b{code.value}\b", codes, re.M), code
