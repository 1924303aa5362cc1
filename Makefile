# Two entry points, each doing all set-up on a fresh machine (Python >= 3.11, no GPU needed):
#   make demo   create .venv, install hyperst, run `hyperst demo`
#   make test   create .venv, install hyperst with its test extra, run ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hyperst-installed

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hyperst demo --out hyperst_demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest --run-slow

clean:
	rm -rf $(VENV) hyperst_demo .pytest_cache
