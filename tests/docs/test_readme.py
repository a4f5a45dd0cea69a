"""The README: short, its quickstart the docs' (run on a real uWSGI in
``tests/integration/test_quickstart.py``), its links pointing at pages of the docs site, its extras
and commands what ``pyproject.toml`` and the Makefile have. What the README said before it moved to
the docs site is checked against the pages in ``tests/docs/test_docs.py``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def extras() -> dict[str, list[str]]:
    """The optional dependencies of pyproject.toml: extra -> requirements (tomllib is Python 3.11+)."""
    table = PYPROJECT[PYPROJECT.index("[project.optional-dependencies]"):]
    table = table[:table.index("\n[", 1)]
    return {name: re.findall(r'^    "([^"]+)",$', body, re.M)
            for name, body in re.findall(r"^([a-z]+) = \[\n(.*?)^\]$", table, re.M | re.S)}


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 150
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings[:2] == ["Install", "Quickstart"]


def test_its_links_into_the_docs_are_pages_of_the_site() -> None:
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#[^)]*)?\)", README)
    nav = set(re.findall(r"([\w/.-]+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M))
    assert len(links) >= 15
    for link in links:
        assert (ROOT / link).is_file(), link
        assert link.removeprefix("docs/") in nav, link
    relative = re.findall(r"\]\((?!https?://|docs/)([^)]+)\)", README)
    assert relative == []  # nothing else is linked relatively: PyPI shows the README without the repository


def test_the_extras_it_names_exist() -> None:
    named = re.search(r"^Extras: (.+)$", README, re.M)
    assert named
    assert set(re.findall(r"`\[([a-z]+)\]`", named[1])) == {"django", "rq", "docs"}
    assert {"django", "rq", "docs", "test"} <= set(extras())
    assert "mkdocs-material>=9.5,<10" in extras()["docs"]


def test_make_demo_installs_the_package_and_uwsgi_only() -> None:
    assert "make demo   # installs the package and uWSGI, runs examples/basic" in README
    demo = re.search(r"^demo: (.+)$", MAKEFILE, re.M)
    assert demo and demo[1].split() == ["$(DEMO_STAMP)"]
    recipe = re.search(r"^\$\(DEMO_STAMP\): .*\n\t(.+)\n", MAKEFILE, re.M)
    assert recipe
    assert recipe[1] == "$(BIN)/python -m pip install --quiet -e . '$(UWSGI_REQUIREMENT)' $(EXTRA_REQUIREMENTS)"
    requirement = re.search(r"^UWSGI_REQUIREMENT := (.+)$", MAKEFILE, re.M)
    assert requirement and requirement[1] in extras()["test"]


def test_make_test_installs_the_docs_extra_and_builds_the_site_strictly() -> None:
    assert "make test   # installs .[test,docs], runs ruff, mypy --strict, the docs build (--strict)" in README
    assert "-e '.[test,docs]'" in MAKEFILE
    test = re.search(r"^test: (.+)$", MAKEFILE, re.M)
    assert test and "docs-strict" in test[1].split()
    assert re.search(r"^docs-strict: \$\(STAMP\)\n\t\$\(BIN\)/mkdocs build --strict", MAKEFILE, re.M)
    assert re.search(r"^docs: \$\(STAMP\)\n\t\$\(BIN\)/mkdocs build\n", MAKEFILE, re.M)
