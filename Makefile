# The README's commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast demo serve verify bench clean lock labelstudio

# Everything pinned (serving + bridge + dev), then the project itself, editable, without dependencies:
# that puts the `orca` command in $(VENV)/bin and keeps the checkout importable as it is edited.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# A real Label Studio for the end-to-end tests of the ML backend (tests/test_labelstudio_e2e.py), in a venv of
# its own: its pins (numpy, pyarrow, boto3) conflict with ours. ≈ 1 GB, ≈ 40 s from the package index.
LABELSTUDIO_VENV ?= .venv-labelstudio

$(LABELSTUDIO_VENV)/.installed: tests/labelstudio-requirements.txt
	python3 -m venv $(LABELSTUDIO_VENV)
	$(LABELSTUDIO_VENV)/bin/pip install --quiet --upgrade pip
	$(LABELSTUDIO_VENV)/bin/pip install --quiet -r tests/labelstudio-requirements.txt
	touch $@

labelstudio: $(LABELSTUDIO_VENV)/.installed

test: setup labelstudio  # the whole suite, then its 15 slowest tests
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
	rm -rf $(VENV) $(LOCK_TOOL) $(LABELSTUDIO_VENV) local

bench: setup
	$(PY) -m bench.run

# requirements-image.lock, what Dockerfile.gpu installs (`pip install --require-hashes`): every package of
# the serving install, direct and transitive, with the hashes of all its files on the package index, for
# the image's platform (Linux x86_64, glibc >= 2.36, Python 3.11). Inputs: pyproject.toml's [project]
# dependencies and its build requirements (the image builds the project without build isolation), at
# requirements.txt's versions wherever it pins them. uv, pinned, in a venv of its own; the default index
# only, as the image's pip has it (no uv.toml, no UV_* index settings).
LOCK_TOOL ?= .venv-lock
UV_VERSION := 0.13.9

$(LOCK_TOOL)/bin/uv:
	python3 -m venv $(LOCK_TOOL)
	$(LOCK_TOOL)/bin/pip install --quiet uv==$(UV_VERSION)

lock: $(LOCK_TOOL)/bin/uv
	$(LOCK_TOOL)/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
	    print(*p['project']['dependencies'], *p['build-system']['requires'], sep='\n')" > $(LOCK_TOOL)/serving.in
	env -u UV_INDEX_URL -u UV_DEFAULT_INDEX -u UV_EXTRA_INDEX_URL -u UV_INDEX -u UV_FIND_LINKS \
	    $(LOCK_TOOL)/bin/uv pip compile --quiet --no-config --upgrade --generate-hashes \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_36 --custom-compile-command "make lock" \
	    -c requirements.txt $(LOCK_TOOL)/serving.in -o requirements-image.lock
