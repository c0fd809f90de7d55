# make test / make demo / make bench: each creates .venv if missing, installs the pinned stack,
# builds torchtl._C and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed

.PHONY: build test demo bench clean

$(DEPS): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# --no-build-isolation: build against the venv's torch instead of downloading another copy.
build: $(DEPS)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) examples/demo.py

bench: build
	$(PY) benchmarks/models.py

clean:
	rm -rf build torchtl/*.so *.egg-info
