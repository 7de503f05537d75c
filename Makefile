# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# The offline environment (no model hub, no analytics) is set by ravlm itself: ravlm_core.config.apply_environment,
# which the CLI and the tests run before Prefect or transformers is imported.

.PHONY: install demo test test-fast test-slow clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/ravlm demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow and not gpu and not server'

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf data reports
