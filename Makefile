# HematoVision: `make run` serves the portal, `make test` runs the whole suite.
# Both create .venv and install what they need; the second run is quick.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MANAGE := $(BIN)/python manage.py

.PHONY: run test test-fast test-postgres setup setup-dev migrate lint fuzz bench loadtest clean help

help:
	@echo "make run    - install, migrate and serve the portal on http://$(HOST):$(PORT)/"
	@echo "make test   - install test tools and run the whole suite"
	@echo "make test-fast - the suite without a browser, servers (Redis, Celery, PostgreSQL) or the real model"
	@echo "make lint   - ruff, the import contracts (.importlinter: ml is plain Python, one bridge to it) and mypy"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record that the pinned requirements are installed; they change when the files do.
$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime-installed
setup-dev: $(VENV)/.dev-installed

migrate: setup
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0

run: migrate
	@case "$(HOST)" in 127.0.0.1|localhost|::1) ;; *) if [ "$${DJANGO_DEBUG:-1}" != "0" ]; then \
	  echo "make run: HOST=$(HOST) would show Django's debug pages (every URL, tracebacks) to the network."; \
	  echo "  Serve other machines with DJANGO_DEBUG=0 DJANGO_SECRET_KEY=... DJANGO_ALLOWED_HOSTS=<name>, or compose.yaml."; \
	  exit 2; fi ;; esac
	$(BIN)/python -m ml.export
	$(MANAGE) resume_jobs
	@echo "HematoVision on http://$(HOST):$(PORT)/  (first time: $(MANAGE) createsuperuser)"
	$(MANAGE) serve $(HOST):$(PORT)

test: setup-dev
	$(BIN)/python scripts/test_prereqs.py
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while editing: no Chromium, no Redis/Celery/PostgreSQL, no real model (the fake predictor);
# nothing installed beyond requirements-dev.txt. `make test` stays what CI runs (everything, one process).
# TEST_FAST_WORKERS pytest-xdist processes (0: one process). xdist's default --dist load keeps each
# worker's tests in collection order, where pytest-django puts the transactional tests (which flush the
# database) last; --dist loadscope would run them before others in the same worker and break those.
TEST_FAST_WORKERS ?= 2
test-fast: setup-dev
	$(BIN)/python -m pytest -q -n $(TEST_FAST_WORKERS) -m "not browser and not services and not realmodel" $(PYTEST_ARGS)

# The web suite again on a real PostgreSQL server that the script starts and removes.
test-postgres: setup-dev
	$(BIN)/python scripts/with_postgres.py -- $(BIN)/python -m pytest accounts classifier tests \
		-m "not browser and not services and not realmodel" $(PYTEST_ARGS)

# Benchmarks: figures for the README's performance section (not pass/fail tests).
bench: setup-dev
	$(BIN)/python -m ml.bench

loadtest: setup-dev
	$(BIN)/python bench/loadtest.py --users 20 --seconds 60 --backends auto,naive

# 20 clients mixing normal and hostile uploads (issue 18) for 60 s: 0 5xx, no lost or doubled result,
# the workers' peak RSS reported.
.PHONY: loadtest-hostile
loadtest-hostile: setup-dev
	$(BIN)/python bench/loadtest.py --users 20 --seconds 60 --hostile --json var/loadtest-hostile.json

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var/staticfiles .pytest_cache
