# Quick start: `make demo` (set up + main job on phantom data), `make test` (set up + test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo

.PHONY: demo test serve setup bench clean

setup: $(STAMP)

# constraints.txt pins every package to the versions tested together; editing it (or pyproject) re-installs
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cxrlab demo --out $(DEMO_OUT)

# one worker process per core (pytest-xdist); each worker runs torch single-threaded (tests/conftest.py). Whole
# files per worker (--dist loadfile): a module's trained-model fixture is built once, not once per worker.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

serve: $(STAMP)
	$(BIN)/cxrlab serve --config $(DEMO_OUT)/service.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
