# Two commands for a newcomer: `make train` (the built-in quickstart) and `make test`.
# Both create .venv/ in the project root when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format train bench mutation mutation-again mutation-values clean-venv

install: $(STAMP)

# The exact versions live in constraints.txt; torch and torchvision are pinned there too, so an
# install does not depend on the machine's pip settings.
$(STAMP): pyproject.toml requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps -e .
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

# Includes the tests marked slow (real-data, longer end-to-end runs).
test-all: install
	$(BIN)/python -m pytest -m ""

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train: install
	$(BIN)/python -m sdd_lightning.cli.quickstart

bench: install
	$(BIN)/python benchmarks/bench_loss.py

# Mutation testing (mutmut) of the losses, the head, the modules, the transforms, the device loader and its batched
# augmentation, and the config code; not part of `make test` or CI (time and scores: docs/testing.md). A fresh run
# each time (mutants/ is its work folder); MUTANTS='sdd_lightning.method.heads.*' runs one file's mutants.
# `make mutation-again` reruns only the mutants that still count against the score, with the tests as they are now.
# mutmut mutates Python only: `make mutation-values` plants changed recipe YAML values and constructor defaults one at
# a time and scores them separately (tools/mutate_values.py; VALUES_ARGS='--kind default' or '--only <part of name>').
# One thread per test process: MUTATION_JOBS processes share the cores without oversubscribing them.
MUTATION_JOBS ?= 2
MUTMUT := PYTHONPATH=$(CURDIR)/tests OMP_NUM_THREADS=1 $(BIN)/mutmut
mutation: install
	rm -rf mutants
	$(MUTMUT) run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(BIN)/python tools/mutation_score.py

mutation-again: install
	$(MUTMUT) run --max-children $(MUTATION_JOBS) \
		$$($(BIN)/python tools/mutation_score.py --names)
	$(BIN)/python tools/mutation_score.py

mutation-values: install
	PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tests OMP_NUM_THREADS=1 $(BIN)/python tools/mutate_values.py $(VALUES_ARGS)

clean-venv:
	rm -rf $(VENV)
