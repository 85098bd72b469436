"""The README's configuration table says what the settings table says."""

import re

from wsproxy.config import ENVIRONMENT_ONLY, SETTINGS

from .helpers import ROOT

ROW = re.compile(r"^\| `(WSPROXY_[A-Z_]+)` \| `?([^|`]*)`? \|", re.M)


def _tables():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    app_table, env_table = section.split("\nRead by ", 1)
    return dict(ROW.findall(app_table)), dict(ROW.findall(env_table))


def test_every_setting_is_in_the_readme_with_its_default():
    app_rows, env_rows = _tables()
    env_only = {"WSPROXY_EMBEDDED"}
    assert set(app_rows) == {s.name for s in SETTINGS} - env_only
    assert env_only <= set(env_rows)
    for setting in SETTINGS:
        if setting.name not in env_only:
            assert app_rows[setting.name] == setting.shown, setting.name


def test_the_environment_table_lists_every_environment_only_name():
    # init_app refuses a WSPROXY_* name it does not know: the names it
    # knows from the environment alone are the README's second table.
    _, env_rows = _tables()
    assert set(env_rows) == ENVIRONMENT_ONLY | {"WSPROXY_EMBEDDED"}
