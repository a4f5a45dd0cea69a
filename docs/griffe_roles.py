"""A griffe extension for the API reference: the docstrings' Sphinx roles as Markdown code.

The package's docstrings use reST roles (``:class:`~uwsgiconf_mules.errors.DeliveryError```), which
mkdocstrings shows as they are typed; here each becomes inline code of the name it shows
(``DeliveryError`` for a ``~`` target, else the whole target), and reST's double backquotes single ones.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

ROLE = re.compile(r":(?:py:)?(?:class|mod|func|meth|exc|attr|data|obj):`(~?)([^`]+)`")


def markdown(text: str) -> str:
    """A docstring with its roles as inline code.

    :param text: The docstring.
    """
    def code(match: re.Match[str]) -> str:
        target = match[2].strip()
        shown = target.rsplit(".", 1)[-1] if match[1] else target
        return f"`{shown}`"

    return ROLE.sub(code, text)


class SphinxRoles(Extension):  # type: ignore[misc]
    """Rewrites the roles of every docstring griffe loads."""

    def on_object(self, *, obj: Any, **_: Any) -> None:
        """Griffe event, for each object loaded.

        :param obj: The object.
        :param _: The other arguments of the event.
        """
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
