# Smartflow: `make run` starts the gateway on embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := nginx-light wrk chromium prometheus docker-compose

.PHONY: run install install-dev system-deps migrate test test-fast bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev system-deps

# Browsers, promtool, nginx, wrk and docker-compose (checks the compose file) for the tests and the benchmark (Debian packages).
system-deps:
	@missing=""; \
	for bin in /usr/bin/chromium /usr/bin/promtool /usr/sbin/nginx /usr/bin/wrk /usr/bin/docker-compose; do \
	  [ -x $$bin ] || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi; \
	fi

migrate: install
	$(PY) manage.py migrate --noinput -v0

run: migrate
	$(PY) manage.py ensure_master_key
	$(PY) manage.py serve

# The whole suite on the embedded defaults (SQLite, in-process cache), then again on
# PostgreSQL and Redis when DATABASE_URL / REDIS_URL are set (CI sets them).
test: install-dev
	env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL $(PY) -m pytest -q
	@if [ -n "$$DATABASE_URL$$REDIS_URL" ]; then \
	  echo "== again on DATABASE_URL=$$DATABASE_URL REDIS_URL=$$REDIS_URL"; \
	  $(PY) -m pytest -q; fi

test-fast: install-dev
	$(PY) -m pytest -q -x

bench: install-dev
	bash bench/run.sh

clean:
	rm -rf $(VENV) data
