# make test / make demo / make bench: each creates .venv if missing, installs the pinned stack,
# builds torchtl._C and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed

.PHONY: build test cpp-build cpp-test demo bench clean gpu-check

$(DEPS): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# --no-build-isolation: build against the venv's torch instead of downloading another copy.
build: $(DEPS)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

# pytest for the Python package, then ctest for the C++ library, programs and the weights that
# cross between Python and C++.
test: build cpp-build
	$(PY) -m pytest -q --durations=15 tests
	ctest --test-dir $(CPP_BUILD) --output-on-failure -j2

# The C++ core as a plain CMake project against the venv's libtorch; the venv's python only
# writes and checks the weights that cross between Python and C++ (tests/cpp/python_weights.py).
CPP_BUILD := build/cpp
cpp-build: $(DEPS)
	cmake -S . -B $(CPP_BUILD) -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		-DTORCHTL_TEST_PYTHON="$(abspath $(PY))"
	cmake --build $(CPP_BUILD) -j2

cpp-test: cpp-build
	ctest --test-dir $(CPP_BUILD) --output-on-failure -j2

demo: build
	$(PY) examples/demo.py

bench: build
	$(PY) benchmarks/build.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/data_loader.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/time_shares.py

# For a lent GPU machine, which has torch but no package registry: no venv, no installs from the
# network; tools/gpu_check.py installs torchtl against that machine's torch (docs/deployment.md).
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py

clean:
	rm -rf build torchtl/*.so *.egg-info
