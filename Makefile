# Versus — every target does its own set-up (`make setup` is idempotent and cheap when done).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast protos bench-vit clean help

help:
	@echo "make demo      build models, start the services, run the demo"
	@echo "make test      the full test suite"
	@echo "make test-fast unit + in-process tests only (-m 'not slow')"
	@echo "make protos    regenerate versus/**/*_pb2*.py(i) from protos/"
	@echo "make bench-vit ViT benchmark -> docs/BENCHMARKS.md"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/versus demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

protos: setup
	$(PY) scripts/gen_protos.py

bench-vit: setup
	$(PY) bench/vit.py

clean:
	rm -rf $(VENV) .models .pytest_cache
