"""A griffe extension for the documentation site: Sphinx cross-reference roles as code.

The docstrings name other objects the Sphinx way (``:func:`create_model```,
``:class:`~robustbench_iqa.certify.result.RadiusKind```).  mkdocstrings renders Markdown, where
such a role would show as raw text; this extension rewrites each role to a code span of the
name (the last component only when the name starts with ``~``, as Sphinx shows it).
Configured in mkdocs.yml (``extensions``); :func:`rewrite_roles` is the whole transformation.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`<]+?)(?:\s*<([^>]+)>)?`")


def rewrite_roles(text: str) -> str:
    """``:role:`name``` -> ```name```; ``:role:`~a.b.c``` -> ```c```; ``:role:`title <target>``` -> ```title```."""

    def repl(m: re.Match[str]) -> str:
        tilde, name = m.group(1), m.group(2).strip()
        if tilde:
            name = name.rsplit(".", 1)[-1]
        return f"`{name}`"

    return ROLE.sub(repl, text)


try:
    import griffe
except ImportError:  # only the site build imports griffe
    griffe = None  # type: ignore[assignment]

if griffe is not None:

    class SphinxRoles(griffe.Extension):  # type: ignore[misc,name-defined]
        """Rewrite the roles of every docstring griffe loads."""

        def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
            if obj.docstring is not None:
                obj.docstring.value = rewrite_roles(obj.docstring.value)
