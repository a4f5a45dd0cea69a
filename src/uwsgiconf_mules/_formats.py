"""Rendering uwsgiconf sections as uWSGI ini or YAML, through the jinja2 templates in ``templates/``.

The YAML is uWSGI's own dialect, as its embedded parser (the default of the PyPI build) reads
it: a top-level key per section, a repeated key per repeated option, ``true`` for flags, no
lists and no flow style. That parser silently ends a section at a construct it does not
understand, so values it would mangle are refused here with an error naming the option, and
nothing is written.

Importing :mod:`uwsgiconf_mules.config` registers the ``yaml`` formatter with uwsgiconf, so
``Configuration.format(formatter='yaml')`` works too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from uwsgiconf.formatters import FORMATTERS, FormatterBase

from .errors import MulesConfigurationError

__all__ = [
    "FORMATS", "SectionOptions", "YamlFormatter", "check_yaml", "collect", "register", "render", "templates_dir",
]

FORMATS = ("ini", "yaml")
"""Formats :func:`render` knows."""

_YAML_BAD_START = {"'": "a quote", '"': "a quote", "[": "'['", "{": "'{'", "-": "'-'"}


@dataclass(frozen=True)
class SectionOptions:
    """A section's name and its options as text, in emission order.

    :param name: Section name (``uwsgi`` unless named).
    :param options: (option, value) pairs; a repeated option appears once per value.
    """

    name: str
    options: tuple[tuple[str, str], ...]


def collect(sections: Iterable[Any]) -> list[SectionOptions]:
    """Read the options of uwsgiconf sections, as uwsgiconf's own ini formatter does.

    :param sections: uwsgiconf ``Section`` objects.
    """
    return [
        SectionOptions(str(section.name), tuple((str(key), str(value).strip()) for key, value in
                                                section._get_options()))
        for section in sections
    ]


def templates_dir() -> Path:
    """The folder of the templates: inside the installed package, or ``templates/`` of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent.parent / "templates"):
        if (candidate / "yaml.j2").is_file():
            return candidate
    raise MulesConfigurationError(f"uwsgiconf-mules templates are missing (looked in {here / 'templates'})")


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def check_yaml(sections: Sequence[SectionOptions]) -> None:
    """Refuse values uWSGI's embedded YAML parser would mangle.

    :param sections: What is about to be rendered.
    :raises MulesConfigurationError: naming the section and option of the first bad value.
    """
    for section in sections:
        for key, value in section.options:
            problem = None
            if not value:
                problem = "is empty (the parser ends the section at a key without a value)"
            elif "#" in value:
                problem = "contains '#' (the parser cuts the line there)"
            elif "\n" in value or "\r" in value:
                problem = "contains a newline"
            elif value[0] in _YAML_BAD_START:
                problem = (f"starts with {_YAML_BAD_START[value[0]]} (the parser keeps quotes literally and "
                           "ends the section at a list or flow item)")
            if problem:
                raise MulesConfigurationError(
                    f"option '{key}' of section '{section.name}' cannot be written as uWSGI YAML: its value "
                    f"{value!r} {problem}", culprit=key)


def render(sections: Sequence[SectionOptions], fmt: str) -> str:
    """Render sections as ``ini`` or ``yaml`` (no trailing newline, as uwsgiconf's formatters).

    :param sections: From :func:`collect`.
    :param fmt: ``ini`` or ``yaml``.
    :raises MulesConfigurationError: for an unknown format, or a value YAML cannot carry.
    """
    if fmt not in FORMATS:
        raise MulesConfigurationError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", culprit=fmt)
    if fmt == "yaml":
        check_yaml(sections)
    return _environment().get_template(f"{fmt}.j2").render(sections=sections)


class YamlFormatter(FormatterBase):  # type: ignore[misc]
    """uwsgiconf formatter alias ``yaml``: ``Configuration.format(formatter='yaml')``."""

    alias = "yaml"

    def format(self) -> str:
        """The sections of this formatter as uWSGI YAML."""
        return render(collect(self.sections), "yaml")


def register() -> None:
    """Make ``yaml`` a uwsgiconf formatter alias (idempotent)."""
    FORMATTERS.setdefault(YamlFormatter.alias, YamlFormatter)
