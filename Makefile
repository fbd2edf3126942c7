# Two entry points on a fresh machine: `make demo` runs the system, `make test` runs the checks.
# Both create .venv and install the project (pinned in pyproject.toml) on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# pytest workers of `make test` (pytest-xdist): each has its own template database and broker
# (tests/conftest.py); a test module runs whole on one worker (--dist loadscope: its module
# fixtures are made once). 0: one process, no workers.
TEST_WORKERS ?= 2

.PHONY: demo test lint unit bench clean browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wpc up

# The browser tests (tests/browser) drive Debian's chromium through its chromedriver: checked
# on every run, not only when .venv is made (an old .venv does not bring them). Installed with
# apt-get when missing (as root); otherwise one line says what to install, before any test runs.
browser:
	@bash .ci/install-browser

# PostgreSQL on 127.0.0.1:5432 is part of every machine of this project; start it if it is down.
test: $(STAMP) browser
	@pg_isready -q -h 127.0.0.1 -p 5432 || bash .ci/start-postgres
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

bench: $(STAMP)
	$(VENV)/bin/wpc bench ingest

clean:
	rm -rf $(VENV) .wpc .pytest_cache .mypy_cache .ruff_cache
