# dv4d developer entry points. `make demo` and `make test` each set up .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dv4d-installed
OUT ?= out/demo

.PHONY: setup demo test lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/setup.sh
	bash .ci/setup.sh $(VENV)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/dv4d annotate data/ -o $(OUT) --preset classical

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(PY) .ci/typecheck.py

test: lint typecheck
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache out
