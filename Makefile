# The README's commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast demo serve verify bench clean

# Everything pinned (serving + bridge + dev), then the project itself, editable, without dependencies:
# that puts the `orca` command in $(VENV)/bin and keeps the checkout importable as it is edited.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

test: setup  # the whole suite, then its 15 slowest tests
	$(PY) -m pytest -q --durations=15

test-fast: setup  # for iterating: without the tests marked slow (> ~3 s) or cuda
	$(PY) -m pytest -q -m "not slow and not cuda"

demo: setup
	$(VENV)/bin/orca demo

serve: setup
	$(VENV)/bin/orca serve

verify: setup
	$(VENV)/bin/orca verify $(MODEL)

clean:
	rm -rf $(VENV) local

bench: setup
	$(PY) -m bench.run
