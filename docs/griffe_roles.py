"""A Griffe extension for the API reference: wsproxy's docstrings use
Sphinx roles (``:class:`~wsproxy.access.Principal```), which Markdown
would print as they are; each becomes the code span it names
(``Principal``; the last part after a ``~``), and a paragraph ending in
``::`` (a literal block follows) ends in ``:``."""

import re

import griffe

LITERAL = re.compile(r"(\S)::$", re.M)
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _code(match):
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RolesExtension(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            text = ROLE.sub(_code, obj.docstring.value)
            obj.docstring.value = LITERAL.sub(r"\1:", text)
