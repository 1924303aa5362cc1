# Two entry points, each doing all set-up on a fresh machine (Python >= 3.11, no GPU needed):
#   make demo   create .venv, install hyperst, run `hyperst demo`
#   make test   create .venv, install hyperst with its test extra, run ruff and the test suite
#   make docs   the same venv plus the doc extra; build the documentation with warnings as errors
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hyperst-installed
DOCSTAMP := $(VENV)/.hyperst-doc-installed

.PHONY: demo test test-all docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(DOCSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,doc]"
	touch $(DOCSTAMP)

demo: $(STAMP)
	$(BIN)/hyperst demo --out hyperst_demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs notebooks
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest --run-slow

# offline (no intersphinx inventories); Read the Docs builds the same pages with them, also with -W
docs: $(DOCSTAMP)
	HYPERST_DOCS_OFFLINE=1 $(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) hyperst_demo .pytest_cache docs/_build docs/generated
