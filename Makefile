# The two commands of the README: `make run` (full pipeline on MovieLens-1M) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ML1M_DIR ?= ../shared/data/ml-1m
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint clean

$(INSTALLED): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(INSTALLED)

run: $(INSTALLED)
	$(PY) -m tfx_pipeline.local_runner --data-dir $(ML1M_DIR) $(ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check .

test: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

clean:
	rm -rf runs
