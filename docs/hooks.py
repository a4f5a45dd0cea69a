"""MkDocs hooks of the docs site: the pages' generated parts, read from the package itself.

A page names a generated part with a marker line, replaced when the site is built:

- ``<!-- generated: options -->``: every option of ``set_mules_params``, ``mule_farm`` and
  ``set_offload_backends`` in one table, from their docstrings' ``:param:`` lines (the default is
  the one the text states);
- ``<!-- generated: cli -->``: the synopsis of every ``uwsgiconf-mules`` command, from the click
  commands themselves.

Tests use the same functions (``tests/docs/test_docs.py``), so what they check is what the site shows.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)

_FIELD = re.compile(r"^:(param [a-z_]+|raises [A-Za-z_]+|returns?):", re.M)
_DEFAULTS = (
    re.compile(r"\(uWSGI default:? ([^)]+)\)"),  # (uWSGI default 60): nothing is emitted, uWSGI's applies
    re.compile(r"\(default:? ([^)]+)\)"),  # (default 5)
    re.compile(r"^(``[^`]+``) \(default\)"),  # ``'reload'`` (default): ...
    re.compile(r"Default: (.+?)\.(?:\s|$)"),  # Default: a directory under ...
)


def params(func: Callable[..., Any]) -> dict[str, str]:
    """The ``:param name: text`` fields of a docstring, each text on one line.

    :param func: The documented function or class.
    """
    doc = inspect.cleandoc(func.__doc__ or "")
    fields = {}
    matches = list(_FIELD.finditer(doc))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        kind, _, name = match[1].partition(" ")
        end = following.start() if following else len(doc)
        if kind == "param":
            fields[name] = " ".join(doc[match.end():end].split())
    return fields


def default(text: str) -> str:
    """The default an option's text states, or ``-`` (nothing is emitted then).

    :param text: The option's ``:param:`` text.
    """
    for number, pattern in enumerate(_DEFAULTS):
        found = pattern.search(text)
        if found:
            return f"{found[1].strip()} (uWSGI's)" if number == 0 else found[1].strip()
    return "-"


def _markdown(text: str) -> str:
    """reST inline code as Markdown, and pipes escaped for a table cell."""
    return text.replace("``", "`").replace("|", "\\|")


def rows_of(call: str, func: Callable[..., Any]) -> list[tuple[str, str, str, str]]:
    """(call, option, default, what) for every parameter of ``func``, in signature order.

    :param call: How the page names the call (``set_mules_params``).
    :param func: The function or class whose parameters are the options.
    :raises ValueError: naming a parameter that has no ``:param:`` line.
    """
    documented = params(func)
    rows = []
    for name, parameter in inspect.signature(func).parameters.items():
        if name == "self":
            continue
        if name not in documented:
            raise ValueError(f"{call}: parameter {name!r} has no :param: line in its docstring")
        text = documented[name]
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            value = "-"
        elif parameter.default is inspect.Parameter.empty:
            value = "required"
        else:
            value = default(text)
        rows.append((call, name, value, text))
    return rows


def option_rows() -> list[tuple[str, str, str, str]]:
    """(call, option, default, what) for every option a declaration takes."""
    from uwsgiconf_mules.config import Workers
    from uwsgiconf_mules.declarations import MuleFarm

    return [*rows_of("set_mules_params", Workers.set_mules_params), *rows_of("mule_farm", MuleFarm),
            *rows_of("set_offload_backends", Workers.set_offload_backends), *rows_of("schedule", Workers.schedule)]


def options_table() -> str:
    """The reference table of every option, one table per call, as Markdown."""
    lines: list[str] = []
    for call, name, value, text in option_rows():
        heading = f"### `{call}`"
        if heading not in lines:
            lines += ["", heading, "", "| option | default | what it does |", "|---|---|---|"]
        lines.append(f"| `{name}` | {_markdown(value)} | {_markdown(text)} |")
    return "\n".join(lines[1:])


def _synopsis_of(name: str, command: Any) -> str:
    import click

    words = [f"uwsgiconf-mules {name}"]
    for param in command.params:
        if isinstance(param, click.Argument):
            shown = "|".join(param.type.choices) if isinstance(param.type, click.Choice) else param.name.upper()
            words.append(shown if param.required else f"[{shown}]")
        elif isinstance(param, click.Option) and not param.hidden:
            flag = max(param.opts, key=len)
            if param.is_flag:
                words.append(f"[{flag}]")
                continue
            if isinstance(param.type, click.Choice):
                value = "|".join(param.type.choices)
            else:
                value = param.metavar or param.name.upper()
            words.append(f"[{flag} {value}]" + ("..." if param.multiple else ""))
    return " ".join(words)


def cli_synopses() -> list[tuple[str, str, str]]:
    """(command, synopsis, first line of its help) for every ``uwsgiconf-mules`` command."""
    from uwsgiconf_mules.cli import cli

    rows = []
    for name, command in sorted(cli.commands.items()):
        summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
        rows.append((name, _synopsis_of(name, command), " ".join(summary.split())))
    return rows


def cli_block() -> str:
    """The synopsis of every command, as a Markdown code block and a table of what each does."""
    rows = cli_synopses()
    lines = ["```sh", *(synopsis for _, synopsis, _ in rows), "```", "",
             "| command | what it does |", "|---|---|"]
    lines += [f"| `{name}` | {_markdown(summary)} |" for name, _, summary in rows]
    return "\n".join(lines)


GENERATED: dict[str, Callable[[], str]] = {"options": options_table, "cli": cli_block}


def render(markdown: str) -> str:
    """A page's Markdown with its markers replaced by what they name.

    :param markdown: The page's source.
    """
    def replace(match: re.Match[str]) -> str:
        if match[1] not in GENERATED:
            raise ValueError(f"unknown generated part {match[1]!r}; known: {', '.join(GENERATED)}")
        return GENERATED[match[1]]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs event: fill the page's generated parts.

    :param markdown: The page's source.
    :param _: The other arguments of the event (page, config, files).
    """
    return render(markdown)
