# Two commands do everything on a fresh clone: `make demo` and `make test`.
# `make test-matrix` runs `make test` on every supported Python and uWSGI (see .ci/matrix).
PYTHON ?= python3
VENV := .venv
# More requirements installed with '.[test]', e.g. uwsgi==2.0.28 (.ci/matrix uses it for the oldest uWSGI).
EXTRA_REQUIREMENTS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-matrix lint typecheck unit bench clean redis-server

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
	$(BIN)/python -m pip install --quiet -e '.[test]' $(EXTRA_REQUIREMENTS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck redis-server
	$(BIN)/python -m pytest -p xdist -n 2

test-matrix:
	.ci/matrix

unit: $(STAMP) redis-server
	$(BIN)/python -m pytest -m "not integration"

bench: $(STAMP) redis-server
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/reload.py

clean:
	rm -rf $(VENV) .venv-matrix dist build .pytest_cache .mypy_cache .ruff_cache
