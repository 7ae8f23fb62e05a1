# softiou: the two quick-start commands are `make demo` (set up, build, train) and `make test`
# (set up, build, compile-check the CUDA kernels, run the tests). Each builds its environment
# from scratch: a virtual environment in .venv, torch==$(TORCH_VERSION), the extension.
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
JOBS          ?= $(shell nproc 2>/dev/null || echo 2)
PY            := $(VENV)/bin/python
NVCC          ?= nvcc
CUDA_ARCHS    ?= 80 90

DEPS_STAMP  := $(VENV)/.deps-torch-$(TORCH_VERSION)
BUILD_STAMP := $(VENV)/.built
CSRC        := $(shell find csrc -path csrc/generated -prune -o \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print)

.PHONY: setup build test test-fast demo demo-1d bench bench-quick cuda-compile-check device-check device-check-quick clean

setup: $(DEPS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEPS_STAMP): $(PY) requirements/test.txt requirements/demo.txt requirements/peers-test.txt
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements/test.txt -r requirements/demo.txt
	$(PY) -m pip install -q --no-deps -r requirements/peers-test.txt
	rm -f $(VENV)/.deps-torch-* && touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(DEPS_STAMP) $(CSRC) setup.py softiou_cuda/options.py tools/codegen.py
	MAX_JOBS=$(JOBS) $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import softiou_cuda as s; print('softiou built: cpu isa', s.operators.cpu_isa(), '| cuda kernels', s.operators.has_cuda_kernels())"
	touch $@

# The torch-free CUDA kernels compile with this machine's nvcc for sm_80 and sm_90, and the torch
# glue passes a syntax check against torch's CUDA headers.
cuda-compile-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  PY=$(PY) bash tools/check_cuda_compile.sh "$(NVCC)" "$(CUDA_ARCHS)" $(JOBS); \
	else echo "cuda-compile-check: $(NVCC) not found; the CUDA kernels were not compiled"; exit 1; fi

test: build cuda-compile-check
	$(PY) -m pytest -q tests

test-fast: build
	$(PY) -m pytest -q -x tests --ignore=tests/test_ops.py

demo: build
	$(PY) -m demo

demo-1d: build
	$(PY) -m demo.signal1d

bench: build
	@if [ "$(PEERS)" = "1" ]; then $(PY) -m pip install -q -r requirements/peers.txt; fi
	$(PY) -m bench --device cpu

bench-quick: build
	$(PY) -m bench --device cpu --sweep quick --reps 3

# On a machine with a GPU and torch preinstalled (see DEVELOPERS.md and tools/device_check.sh).
device-check:
	bash tools/device_check.sh

# The same, sized for a 15-minute lease (about 8 minutes, build included): tools/device_check.sh
device-check-quick:
	bash tools/device_check.sh quick

clean:
	rm -rf build $(VENV) softiou_cuda/*.so *.egg-info .pytest_cache
