# Two entry points on a fresh machine: `make demo` runs the system, `make test` runs the checks.
# Both create .venv and install the project (pinned in pyproject.toml) on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint unit bench clean

$(STAMP): pyproject.toml
	@# The browser tests (tests/browser) drive Debian's chromium through its chromedriver.
	@if [ ! -x /usr/bin/chromedriver ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wpc up

# PostgreSQL on 127.0.0.1:5432 is part of every machine of this project; start it if it is down.
test: $(STAMP)
	@pg_isready -q -h 127.0.0.1 -p 5432 || bash .ci/start-postgres
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

bench: $(STAMP)
	$(VENV)/bin/wpc bench ingest

clean:
	rm -rf $(VENV) .wpc .pytest_cache .mypy_cache .ruff_cache
