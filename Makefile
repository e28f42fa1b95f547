# Two commands set up a fresh machine: `make demo` (the main job) and `make test` (the test suite: everything,
# the `slow` science checks and the `heavy` end-to-end machinery checks included; CI runs it). `make test-fast`
# is the quick loop while developing: all but `slow` and `heavy` (~1.5 min on 2 cores).
# Both create .venv and install what they need. torch is pinned to the CPU build on this machine's disk;
# pyproject.toml keeps a version range for other machines.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast mutate bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ticketlab lottery --out runs

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not heavy"

# Mutation check of the core modules against their fast tests (tools/mutate.py; ~20 min, not part of CI).
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs
