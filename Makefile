# Two commands for a fresh machine (see README):
#   make demo   set up, compile the default cascade for this CPU, classify the samples
#   make test   set up, run the test suite (the same command CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench setup clean-engines gpu-wheelhouse latency

# EXTRAS / VENV_FLAGS: the Dockerfile's build stages reuse this target (GPU: the TensorRT image's
# own tensorrt through --system-site-packages).
EXTRAS ?= cpu,compile,miner,ocr,openvino,ray,dev,ship
VENV_FLAGS ?=
$(STAMP): pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints-cpu.txt pins the CPU build of torch (other versions pull multi-GB CUDA wheels).
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/streetcascade compile --config configs/default.toml
	$(BIN)/streetcascade info --config configs/default.toml
	$(BIN)/streetcascade classify --config configs/default.toml samples/

# pytest exits 5 when it collects no test: that is not a failure of the code under test.
test: $(STAMP)
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

# The latency-regression suite alone (part of `make test` too): ratios against references timed side by side.
latency: $(STAMP)
	$(BIN)/python -m pytest -m latency tests/latency

bench: $(STAMP)
	$(BIN)/python -m bench.stage1 --models vits16,vitb16 --batch 1,8 --markdown

clean-engines:
	find engines -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

# Wheels the GPU check needs that the lent GPU machine lacks (it has torch, transformers,
# onnxruntime, pytest, numpy: measured there), for a machine without a package index: carry
# .gpu-wheelhouse/ along (~300 kB) and bench/gpu_check.sh installs from it what is missing
# (bench/checkout_env.py). PYVER: that machine's Python; GPU_WHEELS_EXTRA: more wheels
# (e.g. "pytest rich") for another machine that lacks them.
PYVER ?= 3.12
GPU_WHEELS ?= msgspec tomlkit tomli-w
GPU_WHEELS_EXTRA ?=
gpu-wheelhouse: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --dest .gpu-wheelhouse --only-binary=:all: --python-version $(PYVER) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any \
		$(GPU_WHEELS) $(GPU_WHEELS_EXTRA)
	du -sh .gpu-wheelhouse
