# Everything a fresh machine needs, from nothing: `make serve` and `make test`.
# The interpreter for the venvs: empty lets scripts/venv.sh pick the fastest Python 3.11 here.
PYTHON ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# TF Serving's client stubs, for the tests of TF Serving's API. Installed without their dependencies:
# they ask for the `tensorflow` distribution, whose modules tensorflow-cpu (in [test]) already provides.
TFSERVING_API := tensorflow-serving-api==2.21.0
# KServe's Python SDK, whose pins clash with ours, in a venv of its own (the KServe client tests run it).
KSERVE_VENV  := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed

.PHONY: serve test test-tools lint typecheck unit proto model_repo kserve-sdk image gpu-kit clean

$(STAMP): pyproject.toml Makefile
	PYTHON='$(PYTHON)' scripts/venv.sh $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps '$(TFSERVING_API)'
	touch $(STAMP)

$(KSERVE_STAMP): tests/kserve-sdk-requirements.txt
	PYTHON='$(PYTHON)' scripts/venv.sh $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet -r tests/kserve-sdk-requirements.txt
	touch $(KSERVE_STAMP)

kserve-sdk: $(KSERVE_STAMP)

# Build the example models (offline, reproducible) when any is missing.
model_repo: $(STAMP)
	$(BIN)/python scripts/build_model_repo.py --repo model_repo

serve: model_repo
	$(BIN)/tensorgate serve --model-repo model_repo

# What benchmarks/gpu_session.sh needs on the GPU machine (no network there): README, "Checking a GPU".
gpu-kit: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/gpu_kit.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Prometheus, promtool and wrk: installed when this user may, else the exact command is printed.
test-tools:
	scripts/test_tools.sh

# Every skipped test is reported as a failure here (TENSORGATE_NO_SKIPS: tests/no_skips.py).
test: test-tools lint typecheck $(KSERVE_STAMP)
	TENSORGATE_NO_SKIPS=1 $(BIN)/python -m pytest -q

# The container image for RUNTIMES (onnx, torch, tensorflow, jax, tflite, all or a comma list), built with
# buildah on a debootstrapped Debian base unless BASE_IMAGE names one: scripts/build_image.sh.
RUNTIMES ?= onnx
image:
	scripts/build_image.sh '$(RUNTIMES)'

# Regenerate gateway/grpc/generated from proto/ (a test fails when they drift apart).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .mypy_cache .ruff_cache .pytest_cache
