# Two commands for a fresh clone: `make demo` (whole pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dfa-installed

.PHONY: demo test edge-check venv clean

venv: $(STAMP)

# Reinstall when the dependency list changes; editable, so code edits need nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

# The whole pipeline on a corpus made from code: corpus, train, export, detect, eval.
demo: $(STAMP)
	$(BIN)/python -m trainer.demo --out demo-out

# Lint first: a style or import error fails CI as surely as a test.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo-out
