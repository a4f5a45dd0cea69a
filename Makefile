# Two commands do everything on a fresh clone: `make demo` and `make test`.
# `make docs` builds the docs site into site/ (`make test` builds it with --strict).
# `make test-matrix` runs `make test` on every supported Python and uWSGI (see .ci/matrix).
PYTHON ?= python3
VENV := .venv
# More requirements installed with '.[test]', e.g. uwsgi==2.0.28 (.ci/matrix uses it for the oldest uWSGI).
EXTRA_REQUIREMENTS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make demo` needs the package and uWSGI only (the same requirement as in the test extra).
DEMO_STAMP := $(VENV)/.installed-demo
UWSGI_REQUIREMENT := uwsgi>=2.0.21,<2.1
# Material for MkDocs prints a banner about MkDocs 2 at every build; the build is what matters here.
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo docs docs-strict uwsgi-asyncio test test-matrix lint lint-imports typecheck unit bench clean redis-server

# The tests and benchmarks of farms routed to RQ start a real redis-server (Debian's package),
# installed here when it is missing (as root, as on CI; DEBIAN_FRONTEND keeps apt quiet).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "redis-server is missing: installing Debian's package"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,docs]' $(EXTRA_REQUIREMENTS)
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e . '$(UWSGI_REQUIREMENT)' $(EXTRA_REQUIREMENTS)
	touch $(DEMO_STAMP)

# A uWSGI with the asyncio and greenlet plugins (pip builds it with neither), for the tests of
# `--asyncio --greenlet`: built from the sdist of the venv's uWSGI into the venv, once (about a minute).
UWSGI_ASYNCIO := $(VENV)/uwsgi-asyncio/bin/uwsgi
export UWSGICONF_MULES_TEST_UWSGI_ASYNCIO := $(abspath $(UWSGI_ASYNCIO))

$(UWSGI_ASYNCIO): $(STAMP)
	UWSGI_EMBED_PLUGINS=asyncio,greenlet \
	APPEND_CFLAGS="-I$$($(BIN)/python -c 'import sys; print(f"{sys.prefix}/include/site/python{sys.version_info[0]}.{sys.version_info[1]}")')" \
	$(BIN)/python -m pip install --quiet --no-cache-dir --no-binary uwsgi --no-deps --target $(VENV)/uwsgi-asyncio \
		"uwsgi==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("uwsgi"))')"

uwsgi-asyncio: $(UWSGI_ASYNCIO)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

docs: $(STAMP)
	$(BIN)/mkdocs build

docs-strict: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks docs

# The import rule between the layers (docs/architecture.md), contracts in pyproject.toml.
lint-imports: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint lint-imports typecheck docs-strict redis-server $(UWSGI_ASYNCIO)
	$(BIN)/python -m pytest -p xdist -n 2

test-matrix:
	.ci/matrix

unit: $(STAMP) redis-server
	$(BIN)/python -m pytest -m "not integration"

bench: $(STAMP) redis-server
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/reload.py
	$(BIN)/python benchmarks/lifecycle.py

clean:
	rm -rf $(VENV) .venv-matrix dist build site .pytest_cache .mypy_cache .ruff_cache
