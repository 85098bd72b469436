"""MkDocs hooks: the parts of the documentation that are generated from the
code, so that they cannot drift from it.

- ``configuration.md``: ``<!-- settings -->`` becomes the table of every
  setting in ``wsproxy.config.SETTINGS`` (key, default, meaning), and each
  ``### `WSPROXY_...``` heading of its details gets the setting's default
  under it. The build fails if a setting has no heading there, a heading
  names no setting, or the environment-only table does not list exactly
  ``wsproxy.config.ENVIRONMENT_ONLY`` (and ``WSPROXY_EMBEDDED``).
- ``protocol.md``: ``<!-- protocol:NAME -->`` becomes the table of one enum
  of ``wsproxy/protocol.py``, each value with the comment beside it in the
  source; the build fails if the page's hand-written tables leave out a
  message type or a close code, or name one the server does not have.

tests/test_readme.py runs the same checks.
"""

import ast
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wsproxy import config as wsconfig  # noqa: E402
from wsproxy import protocol  # noqa: E402

SETTINGS_MARKER = "<!-- settings -->"
HEADING = re.compile(r"^### `(WSPROXY_[A-Z0-9_]+)`[ \t]*$", re.M)
ENV_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \|", re.M)
PROTOCOL_MARKER = re.compile(r"^<!-- protocol:([a-z-]+) -->$", re.M)
TYPE_ROW = re.compile(r"^\| `([a-z_]+)` \|", re.M)
CODE_ROW = re.compile(r"^\| (\d{3,4}) \|", re.M)

# Set in the environment by the repository's gunicorn.conf.py, though it is
# a Setting (init_app knows its name): listed with the environment-only ones.
EMBEDDED = "WSPROXY_EMBEDDED"
ENUMS = {
    "server-messages": protocol.MessageType,
    "client-messages": protocol.ClientMessageType,
    "watcher-states": protocol.WatcherState,
    "resume-modes": protocol.ResumeMode,
    "close-codes": protocol.CloseCode,
}


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_table():
    """The table of every setting, each key linking to its details."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for s in wsconfig.SETTINGS:
        rows.append(
            f"| [`{s.name}`](#{s.name.lower()}) | `{_cell(s.shown)}` "
            f"| {_cell(s.meaning)} |"
        )
    return "\n".join(rows)


def check_settings_page(markdown):
    """What is wrong with the configuration page's hand-written parts:
    a list of problems, empty when none."""
    problems = []
    headings = HEADING.findall(markdown)
    names = [s.name for s in wsconfig.SETTINGS]
    missing = [n for n in names if n not in headings]
    unknown = sorted(set(headings) - set(names))
    twice = sorted({h for h in headings if headings.count(h) > 1})
    if missing:
        problems.append("no details heading for " + ", ".join(missing))
    if unknown:
        problems.append("details for settings that do not exist: " + ", ".join(unknown))
    if twice:
        problems.append("details given twice for " + ", ".join(twice))
    if SETTINGS_MARKER not in markdown:
        problems.append(f"no {SETTINGS_MARKER} marker for the table")
    env_section = markdown.split("\n## Environment only\n", 1)
    if len(env_section) != 2:
        problems.append("no '## Environment only' section")
    else:
        listed = {n for n in ENV_ROW.findall(env_section[1].split("\n## ", 1)[0])}
        wanted = set(wsconfig.ENVIRONMENT_ONLY) | {EMBEDDED}
        listed_ours = {n for n in listed if n.startswith("WSPROXY_")}
        if listed_ours != wanted:
            problems.append(
                "the environment-only table should list exactly "
                + ", ".join(sorted(wanted))
                + f" (it lists {', '.join(sorted(listed_ours))})"
            )
    return problems


def render_settings_page(markdown):
    markdown = markdown.replace(SETTINGS_MARKER, settings_table())

    def default(match):
        s = wsconfig.BY_NAME[match.group(1)]
        return f"{match.group(0)}\n\nDefault: `{s.shown}`. {s.meaning}\n"

    return HEADING.sub(default, markdown)


def enum_comments(enum):
    """The comment beside each member in wsproxy/protocol.py's source."""
    source = Path(protocol.__file__).read_text()
    lines = source.splitlines()
    comments = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == enum.__name__:
            for item in node.body:
                if isinstance(item, ast.Assign):
                    line = lines[item.lineno - 1]
                    _, _, comment = line.partition("#")
                    comments[item.targets[0].id] = comment.strip()
    return comments


def enum_table(name):
    enum = ENUMS[name]
    comments = enum_comments(enum)
    code = name == "close-codes"
    head = "code" if code else "value"
    rows = [
        f"| {head} | name in `wsproxy.protocol` | what it is |",
        "| --- | --- | --- |",
    ]
    for member in enum:
        value = member.value if code else f"`{member.value}`"
        rows.append(
            f"| {value} | `{enum.__name__}.{member.name}` "
            f"| {_cell(comments.get(member.name, ''))} |"
        )
    return "\n".join(rows)


def check_protocol_page(markdown):
    """The hand-written tables (written before the markers are replaced)
    against wsproxy/protocol.py."""
    problems = []
    types = set(TYPE_ROW.findall(markdown))
    for enum in (protocol.MessageType, protocol.ClientMessageType):
        missing = {m.value for m in enum} - types
        if missing:
            problems.append(f"{enum.__name__} not described: {sorted(missing)}")
    codes = {int(c) for c in CODE_ROW.findall(markdown) if len(c) == 4}
    sent = {int(c) for c in protocol.CloseCode} - {protocol.CloseCode.ABNORMAL}
    if sent - codes:
        problems.append(f"close codes not described: {sorted(sent - codes)}")
    unknown = codes - set(protocol.CloseCode)
    if unknown:
        problems.append(f"close codes the server does not have: {sorted(unknown)}")
    for name in PROTOCOL_MARKER.findall(markdown):
        if name not in ENUMS:
            problems.append(f"no enum for <!-- protocol:{name} -->")
    return problems


def render_protocol_page(markdown):
    return PROTOCOL_MARKER.sub(lambda m: enum_table(m.group(1)), markdown)


PAGES = {
    "configuration.md": (check_settings_page, render_settings_page),
    "protocol.md": (check_protocol_page, render_protocol_page),
}


def on_page_markdown(markdown, page, config, files):
    handlers = PAGES.get(page.file.src_uri)
    if handlers is None:
        return markdown
    check, render = handlers
    problems = check(markdown)
    if problems:
        raise PluginError(f"docs/{page.file.src_uri}: " + "; ".join(problems))
    return render(markdown)
