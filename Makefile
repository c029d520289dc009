# make demo / make test / make bench: each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native

.PHONY: demo test lint unit bench native clean

# The editable install itself is pure Python; $(NATIVE) then compiles setup.py's NATIVE
# modules in place with mypyc (again whenever a source changes; AUDITMESH_PURE=1 skips it).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	AUDITMESH_PURE=1 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A module whose C did not change is not rebuilt: touch marks every one current.
$(NATIVE): $(STAMP) setup.py $(shell find src -name '*.py')
	$(BIN)/python setup.py --quiet build_ext --inplace
	find src -name '*.so' -exec touch {} +
	touch $(NATIVE)

native: $(NATIVE)

demo: $(NATIVE)
	$(BIN)/auditmesh demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

unit: $(NATIVE)
	$(BIN)/pytest -q

test: lint unit

bench: $(NATIVE)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build
	find src -name '*.so' -delete
