# Every target sets up .venv first (scripts/install.sh is idempotent and fast once done).
# PYTHON (default python3.11) is the interpreter that creates .venv; the targets then run .venv's own.
VENV_PYTHON := .venv/bin/python

.PHONY: install lint test demo

install:
	@bash scripts/install.sh

lint: install
	$(VENV_PYTHON) -m ruff check .

test: lint
	$(VENV_PYTHON) -m pytest -q

demo: install
	$(VENV_PYTHON) tools/demo.py $(DEMO_ARGS)
