# Two commands on a fresh machine: `make run` (the platform on the embedded default) and
# `make test` (the whole suite). Everything else here serves those two.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint format migrate seed superuser worker beat web clean chromium fuzz

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The `sparkops` CLI (pyproject.toml), editable: .venv/bin/sparkops runs this checkout.
CLI := $(PIP) install -q --no-deps -e .

$(VENV)/.run-installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -r requirements.txt
	$(CLI)
	touch $@

$(VENV)/.test-installed: requirements.txt requirements-dev.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -r requirements-dev.txt
	$(CLI)
	touch $@ $(VENV)/.run-installed

# A local .env with a fresh SECRET_KEY and /metrics token, so nothing secret is ever committed
# or defaulted. `run` adds the token to a .env written before /metrics needed one.
TOKEN := $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))'
.env:
	@echo "DEBUG=1" > .env
	@echo "SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" >> .env
	@echo "SPARKOPS_METRICS_TOKEN=$$($(TOKEN))" >> .env
	@echo "Wrote .env (DEBUG=1, a generated SECRET_KEY and /metrics token); edit it or use real environment variables."

run: $(VENV)/.run-installed .env
	@grep -q '^SPARKOPS_METRICS_TOKEN=' .env || echo "SPARKOPS_METRICS_TOKEN=$$($(TOKEN))" >> .env
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py metrics_reset
	$(VENV)/bin/honcho start -f Procfile

# The browser tests (tests/browser/) drive Debian's Chromium through Playwright; Playwright's
# own browser download is never used. Installed once, only when missing.
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
	elif command -v sudo >/dev/null; then sudo apt-get update && sudo apt-get install -y chromium; \
	else echo "Install Chromium as root: apt-get install -y chromium" >&2; exit 1; fi

chromium: $(CHROMIUM)

# Types (mypy.ini): the django-stubs plugin imports the settings (no database, no Redis is
# opened), which want a SECRET_KEY when DEBUG is off; .mypy_cache makes a re-run quick.
MYPY := SECRET_KEY=mypy-only DJANGO_SETTINGS_MODULE=sparkops.settings $(VENV)/bin/mypy

test: $(VENV)/.test-installed $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	SECRET_KEY=migrations-check $(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/lint-imports
	$(MYPY)
	$(VENV)/bin/pytest

# Schemathesis over the whole API schema against a real server (see .ci/fuzz); CI runs a
# reduced pass (FUZZ_EXAMPLES=5). FUZZ_DATABASE_URL=postgres://.../name fuzzes on PostgreSQL.
fuzz: $(VENV)/.test-installed
	.ci/fuzz

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(MYPY)

format: $(VENV)/.test-installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrate: $(VENV)/.run-installed .env
	$(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo

# An operator account for the admin (asks for email, name and password).
superuser: migrate
	$(PY) manage.py createsuperuser

web: $(VENV)/.run-installed .env
	$(PY) manage.py runserver 0.0.0.0:8000

worker: $(VENV)/.run-installed .env
	$(VENV)/bin/celery -A sparkops worker -Q orchestration,steps -P threads -c 8 -l INFO

beat: $(VENV)/.run-installed .env
	$(VENV)/bin/celery -A sparkops beat -l INFO --pidfile=

clean:
	rm -rf .var db.sqlite3 db.sqlite3-* staticfiles .pytest_cache
