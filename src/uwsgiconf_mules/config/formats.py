"""Rendering uwsgiconf sections as uWSGI ini or YAML, through the jinja2 templates in ``templates/``.

The YAML is uWSGI's own dialect: a top-level key per section, a repeated key per repeated option,
no lists and no flow style. uWSGI reads it with one of two parsers, chosen when uWSGI is built,
and no one text serves both, so YAML is written for one of them (its *dialect*):

- ``embedded``, uWSGI's own parser (``pip install uwsgi``): values are written as they are,
  since it keeps quotes as part of the value. It silently ends a section at a construct it does
  not understand, so values it would mangle (empty, with ``#``, starting with a quote, ``[``,
  ``{`` or ``-``) are refused.
- ``libyaml`` (Debian's and Ubuntu's ``uwsgi-core``): every value is double-quoted, escaped as
  YAML requires, since libyaml is a real YAML parser (``%k`` or ``>  text`` unquoted are YAML
  syntax). It keeps ``#``, quotes and empty values; what it cannot carry is refused.

In both, uWSGI expands ``%`` variables (``%k``, ``%d``, ``%%``) in the file's text before it
parses it, as it does for ini: a value reads back as the ini's does. Refused everywhere: line
breaks and NUL characters (no uWSGI config line carries them), a value ending in a lone ``%``
(uWSGI would swallow the line break after it), and option and section names other than
letters, digits, ``_``, ``-`` and ``.``. A refusal names the option, and nothing is written.

Importing :mod:`uwsgiconf_mules.config` registers the ``yaml`` (embedded) and ``yaml-libyaml``
formatters with uwsgiconf, so ``Configuration.format(formatter='yaml')`` works too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from uwsgiconf.formatters import FORMATTERS, FormatterBase

from ..errors import MulesConfigurationError

__all__ = [
    "FORMATS", "YAML_DIALECTS", "LibyamlFormatter", "SectionOptions", "YamlFormatter", "check_yaml", "collect",
    "double_quoted", "register", "render", "templates_dir",
]

FORMATS = ("ini", "yaml")
"""Formats :func:`render` knows."""

YAML_DIALECTS = ("embedded", "libyaml")
"""YAML dialects: the parser of the uWSGI that reads the file (see the module docstring)."""

_YAML_BAD_START = {"'": "a quote", '"': "a quote", "[": "'['", "{": "'{'", "-": "'-'"}
_YAML_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\t": "\\t"}


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
    here = Path(__file__).resolve().parent.parent  # the package: config/ is one folder down
    for candidate in (here / "templates", here.parent.parent / "templates"):
        if (candidate / "yaml.j2").is_file():
            return candidate
    raise MulesConfigurationError(f"uwsgiconf-mules templates are missing (looked in {here / 'templates'})")


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    environment.filters["double_quoted"] = double_quoted
    return environment


def check_yaml(sections: Sequence[SectionOptions], dialect: str = "embedded") -> None:
    """Refuse what the YAML parser of ``dialect`` cannot read back as the ini would give it.

    :param sections: What is about to be rendered.
    :param dialect: ``embedded`` or ``libyaml``.
    :raises MulesConfigurationError: naming the section and option of the first bad name or value.
    """
    parser = "the embedded parser" if dialect == "embedded" else "libyaml"
    for section in sections:
        if not _YAML_NAME.fullmatch(section.name):
            raise MulesConfigurationError(
                f"section name {section.name!r} cannot be a uWSGI YAML key: use letters, digits, '_', '-' and '.'",
                culprit=section.name)
        for key, value in section.options:
            if not _YAML_NAME.fullmatch(key):
                raise MulesConfigurationError(
                    f"option name {key!r} of section '{section.name}' cannot be a uWSGI YAML key: use letters, "
                    "digits, '_', '-' and '.'", culprit=key)
            problem = _value_problem(value, dialect)
            if problem:
                raise MulesConfigurationError(
                    f"option '{key}' of section '{section.name}' cannot be written as uWSGI YAML for {parser}: "
                    f"its value {value!r} {problem}", culprit=key)


def _value_problem(value: str, dialect: str) -> str | None:
    if "\n" in value or "\r" in value:
        return "contains a line break (no uWSGI config line carries one: the ini would split the option too)"
    if "\0" in value:
        return "contains a NUL character (uWSGI would cut the value there)"
    percent = _percent_problem(value, dialect)
    if percent or dialect == "libyaml":
        return percent
    return _embedded_problem(value)


def _embedded_problem(value: str) -> str | None:
    if not value:
        return "is empty (the parser ends the section at a key without a value)"
    if "#" in value:
        return "contains '#' (the parser cuts the line there)"
    if value[0] in _YAML_BAD_START:
        return (f"starts with {_YAML_BAD_START[value[0]]} (the parser keeps quotes literally and ends the section "
                "at a list or flow item)")
    return None


def _percent_problem(value: str, dialect: str) -> str | None:
    """uWSGI replaces ``%`` and the character after it in the file's text before parsing it."""
    at = value.find("%")
    while at != -1:
        if at == len(value) - 1:
            return ("ends with a lone '%' (uWSGI would read it with the line break after it as a %-variable; "
                    "write '%%' for a '%')")
        following = value[at + 1]
        if dialect == "libyaml" and (following in '"\\' or not " " <= following <= "~"):
            return (f"has '%' before {following!r} (uWSGI expands %-variables in the file's text before libyaml "
                    "reads it, so that character's YAML escape would be cut)")
        at = value.find("%", at + 2)
    return None


def _printable(char: str) -> bool:
    """Whether libyaml takes ``char`` as it is inside a double-quoted scalar (YAML 1.1 printable, no line breaks)."""
    code = ord(char)
    return (0x20 <= code <= 0x7E or (0xA0 <= code <= 0xD7FF and code not in (0x2028, 0x2029))
            or (0xE000 <= code <= 0xFFFD and code != 0xFEFF) or 0x10000 <= code <= 0x10FFFF)


def double_quoted(value: str) -> str:
    """``value`` as a YAML double-quoted scalar: ``"`` and ``\\`` escaped, and characters YAML does not take
    as they are (tabs, control characters, Unicode line separators) as escapes.

    uWSGI's ``%[`` (it expands to ESC, for colours, as in uwsgiconf's styled prints) is written ``\\e``:
    libyaml refuses a raw control character, and reads ``\\e`` as ESC. Other ``%`` pairs are kept for
    uWSGI to expand (:func:`check_yaml` refuses the ones that would cut an escape).
    """
    out = []
    at = 0
    while at < len(value):
        char = value[at]
        if char == "%" and at + 1 < len(value):
            pair = value[at:at + 2]
            out.append("\\e" if pair == "%[" else pair)
            at += 2
            continue
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif _printable(char):
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        at += 1
    return '"' + "".join(out) + '"'


def render(sections: Sequence[SectionOptions], fmt: str, yaml_dialect: str = "embedded") -> str:
    """Render sections as ``ini`` or ``yaml`` (no trailing newline, as uwsgiconf's formatters).

    :param sections: From :func:`collect`.
    :param fmt: ``ini`` or ``yaml``.
    :param yaml_dialect: For ``yaml``, the parser of the uWSGI that reads it: ``embedded`` or ``libyaml``.
    :raises MulesConfigurationError: for an unknown format or dialect, or what the YAML dialect cannot carry.
    """
    if fmt not in FORMATS:
        raise MulesConfigurationError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", culprit=fmt)
    template = f"{fmt}.j2"
    if fmt == "yaml":
        if yaml_dialect not in YAML_DIALECTS:
            raise MulesConfigurationError(
                f"unknown YAML dialect {yaml_dialect!r}; use one of {', '.join(YAML_DIALECTS)}", culprit=yaml_dialect)
        check_yaml(sections, yaml_dialect)
        template = "yaml.j2" if yaml_dialect == "embedded" else "yaml_libyaml.j2"
    return _environment().get_template(template).render(sections=sections)


class YamlFormatter(FormatterBase):  # type: ignore[misc]
    """uwsgiconf formatter alias ``yaml``: ``Configuration.format(formatter='yaml')``, for uWSGI's embedded
    YAML parser (``pip install uwsgi``)."""

    alias = "yaml"
    dialect = "embedded"

    def format(self) -> str:
        """The sections of this formatter as uWSGI YAML."""
        return render(collect(self.sections), "yaml", self.dialect)


class LibyamlFormatter(YamlFormatter):
    """uwsgiconf formatter alias ``yaml-libyaml``: uWSGI YAML for uWSGI built with libyaml (Debian's, Ubuntu's)."""

    alias = "yaml-libyaml"
    dialect = "libyaml"


def register() -> None:
    """Make ``yaml`` and ``yaml-libyaml`` uwsgiconf formatter aliases (idempotent)."""
    for formatter in (YamlFormatter, LibyamlFormatter):
        FORMATTERS.setdefault(formatter.alias, formatter)
