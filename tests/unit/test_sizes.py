"""No module of the package over :data:`MODULE_LINES` lines, no function over :data:`FUNCTION_LINES`
(its docstring aside, its nested functions in), but those listed in :data:`LONGER`, each with why."""

from __future__ import annotations

import ast
from pathlib import Path

import uwsgiconf_mules

PACKAGE = Path(uwsgiconf_mules.__file__).parent
MODULE_LINES = 450
FUNCTION_LINES = 60
LONGER = {
    "mule/loop.py:mule_loop": "the dispatch loop with its two fast paths inlined, for throughput "
                              "(benchmarks/README.md)",
    "runtime/offload.py:build": "the offloaded function's closures share their cells (route, send, count): the hot "
                                "path reads them as closure cells, not attributes (benchmarks/sender_body.py)",
}
"""``module:function`` -> why it is longer than :data:`FUNCTION_LINES`."""


def lengths() -> tuple[dict[str, int], dict[str, int]]:
    """(lines of each module, lines of each function but its docstring), by path in the package."""
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                doc = node.body[0] if isinstance(node.body[0], ast.Expr) and isinstance(
                    getattr(node.body[0], "value", None), ast.Constant) else None
                docstring = doc.end_lineno - doc.lineno + 1 if doc is not None and doc.end_lineno else 0
                functions[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1 - docstring
    return modules, functions


def test_no_module_is_longer_than_the_limit() -> None:
    modules, _ = lengths()
    assert len(modules) > 40
    assert {name: count for name, count in modules.items() if count > MODULE_LINES} == {}


def test_no_function_is_longer_than_the_limit_but_those_said_why() -> None:
    _, functions = lengths()
    longer = {name: count for name, count in functions.items() if count > FUNCTION_LINES}
    assert set(longer) == set(LONGER), longer
