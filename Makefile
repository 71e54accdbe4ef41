# Every target sets up .venv first (scripts/install.sh is idempotent and fast once done).
PYTHON := .venv/bin/python

.PHONY: install test demo

install:
	@bash scripts/install.sh

test: install
	$(PYTHON) -m pytest -q

demo: install
	$(PYTHON) tools/demo.py $(DEMO_ARGS)
