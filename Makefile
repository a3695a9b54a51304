# The README's two commands: `make demo` and `make test`. Each creates its own
# virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint install install-test bench clean-venv

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e '.[dev,torch,dask,quantize]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/tvclean demo -o tvclean-demo

test: install-test lint
	$(PY) -m pytest -q

lint: install-test
	$(VENV)/bin/ruff check tvcore cli tests benchmarks models scripts
	$(VENV)/bin/mypy

bench: install-test
	$(PIP) install -q -e '.[bench]'
	$(PY) -m benchmarks all

clean-venv:
	rm -rf $(VENV)
