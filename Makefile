# Fresh machine (Python >= 3.10): `make demo` and `make test` create .venv and install everything.
# Torch comes from the CPU wheel pinned in constraints.txt. With your own (e.g. CUDA) torch already installed in
# the interpreter you use, run `make VENV_FLAGS=--system-site-packages CONSTRAINTS=/dev/null ...`.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: install demo test test-all lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/molrecon demo --out $(DEMO_OUT)

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

test-all: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools

clean:
	rm -rf $(VENV) build *.egg-info
