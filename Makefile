# The README's commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo verify bench clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m service.demo

verify: setup
	$(PY) -m conversion verify $(MODEL)

clean:
	rm -rf $(VENV) local

bench: setup
	$(PY) -m bench.run
