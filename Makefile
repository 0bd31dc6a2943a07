# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-cluster lint clean

$(BIN)/python:
	$(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/raydino run --preset demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

# Ray jobs on a real local head + second node (about 10 minutes): see tests/test_jobs.py
test-cluster: $(STAMP)
	RAYDINO_CLUSTER_TESTS=1 $(BIN)/python -m pytest -q tests/test_jobs.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf data/demo
