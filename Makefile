# Everything a fresh machine needs, from nothing: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# KServe's Python SDK, whose pins clash with ours, in a venv of its own (the KServe client tests run it).
KSERVE_VENV  := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed

.PHONY: serve test lint typecheck unit proto model_repo kserve-sdk clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(KSERVE_STAMP): tests/kserve-sdk-requirements.txt
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet -r tests/kserve-sdk-requirements.txt
	touch $(KSERVE_STAMP)

kserve-sdk: $(KSERVE_STAMP)

# Build the example models (offline, reproducible) when any is missing.
model_repo: $(STAMP)
	$(BIN)/python scripts/build_model_repo.py --repo model_repo

serve: model_repo
	$(BIN)/tensorgate serve --model-repo model_repo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck $(KSERVE_STAMP)
	$(BIN)/python -m pytest -q

# Regenerate gateway/grpc/generated from proto/ (a test fails when they drift apart).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .mypy_cache .ruff_cache .pytest_cache
