# The two commands of the README: `make run` (full pipeline on MovieLens-1M) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ML1M_DIR ?= ../shared/data/ml-1m
EPINIONS_DIR ?= ../shared/data/epinions-2012
INSTALLED := $(VENV)/.installed

.PHONY: install run run-epinions test lint clean

$(INSTALLED): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(INSTALLED)

run: $(INSTALLED)
	$(PY) -m llm_hardneg.tfx_pipeline.local_runner --data-dir $(ML1M_DIR) $(ARGS)

# Epinions (296k items with a category and no text): category clusters; add ARGS="--example_gen.split leave_last_out"
run-epinions: $(INSTALLED)
	$(PY) -m llm_hardneg.tfx_pipeline.local_runner --example_gen.source generic \
		--example_gen.interactions $(EPINIONS_DIR)/interactions.csv.gz --example_gen.items $(EPINIONS_DIR)/items.csv.gz \
		--trainer.cluster_source category $(ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check .

test: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist worksteal tests

clean:
	rm -rf runs
