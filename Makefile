# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean browser mutants

$(BIN)/python:
	$(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/raydino run --preset demo

# The suite's files of over ~15 s first, longest first (docs/benchmarks.md#the-test-suite), so neither worker starts one last while the
# other sits idle; then the rest of tests/ (pytest keeps the order of the files it is given).
LONGEST_FIRST := tests/test_jobs.py tests/test_text_and_eval.py tests/test_tune.py tests/test_train_ray.py tests/test_serve.py \
	tests/test_own_folder.py tests/test_prior.py tests/test_shipped_models.py tests/test_failing_well.py tests/test_pyramids.py \
	tests/test_distributional.py tests/test_data_parallel.py

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(LONGEST_FIRST) $(filter-out $(LONGEST_FIRST),$(wildcard tests/test_*.py))

# Headless Chromium for the serve page's test (tests/test_serve.py skips it, saying why, when this cannot install it).
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (timeout 200 apt-get install -y -q chromium >/dev/null 2>&1 || \
		(timeout 120 apt-get update -q >/dev/null 2>&1 && timeout 200 apt-get install -y -q chromium >/dev/null 2>&1)) || \
		echo "chromium could not be installed: the page test will be skipped"

# Each hand-made break of what the suite guards must fail a test (tests/mutants.py; its output: docs/mutants.md)
mutants: $(STAMP)
	$(BIN)/python tests/mutants.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf data/demo
