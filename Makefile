# Everything a fresh machine needs, from nothing: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test test-tools lint typecheck unit proto model_repo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Build the example models (offline, reproducible) when any is missing.
model_repo: $(STAMP)
	$(BIN)/python scripts/build_model_repo.py --repo model_repo

serve: model_repo
	$(BIN)/tensorgate serve --model-repo model_repo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Prometheus, promtool and wrk: installed when this user may, else the exact command is printed.
test-tools:
	scripts/test_tools.sh

# Every skipped test is reported as a failure here (TENSORGATE_NO_SKIPS, tests/conftest.py).
test: test-tools lint typecheck
	TENSORGATE_NO_SKIPS=1 $(BIN)/python -m pytest -q

# Regenerate gateway/grpc/generated from proto/ (a test fails when they drift apart).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
