# tickstream — the commands a user needs. Settings come from the environment or from .env (see .env.example).
SHELL := /bin/bash
ifneq (,$(wildcard .env))
include .env
export
endif

# Python 3.12 (the Lambda runtime) for the project; 3.13 for LocalStack (it needs ≥ 3.13). Real binaries first:
# pyenv shims fail in a clean environment.
find_python = $(shell for p in $$HOME/.pyenv/versions/$(1).*/bin/python$(1) /usr/local/bin/python$(1) \
	/usr/bin/python$(1) python$(1); do if $$p -c 'import sys' >/dev/null 2>&1; then command -v $$p; break; fi; done)
PYTHON312 ?= $(call find_python,3.12)
PYTHON313 ?= $(call find_python,3.13)
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL = pip install --quiet --disable-pip-version-check

.PHONY: help venv venvs db-ready browser test lint migrate up down demo bench bench-scale events clean

help:
	@echo "make test     run the whole test suite (MariaDB, host LocalStack, simulator, API)"
	@echo "make up       the whole pipeline locally, in the foreground (Ctrl-C stops it)"
	@echo "make demo     the pipeline against the exchange simulator, with a live per-symbol count"
	@echo "make migrate  create the database if missing and apply migrations"
	@echo "make bench    benchmarks; results under bench/results/"
	@echo "make bench-scale  the scale benchmark (1M/10M/100M-row tables, ~12 GB of disk; BENCH_ARGS=--scale-sizes=...)"
	@echo "make lint     ruff"
	@echo "make events   regenerate events/ (sample events for sam local invoke) from tickstream.codec"

$(VENV)/.installed: requirements-dev.txt
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found (set PYTHON312=/path/to/python3.12)"; exit 1; }
	$(PYTHON312) -m venv $(VENV)
	$(VENV)/bin/$(PIP_INSTALL) -r requirements-dev.txt
	touch $@

.venv-localstack/.installed: infra/requirements-localstack.txt $(wildcard infra/localstack_executor/*.py infra/localstack_executor/*/*.py infra/localstack_executor/pyproject.toml)
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found (LocalStack needs it; set PYTHON313=...)"; exit 1; }
	$(PYTHON313) -m venv .venv-localstack
	.venv-localstack/bin/$(PIP_INSTALL) -r infra/requirements-localstack.txt
	.venv-localstack/bin/$(PIP_INSTALL) --no-deps --force-reinstall ./infra/localstack_executor
	touch $@

.venv-sam/.installed: infra/requirements-sam.txt
	$(PYTHON312) -m venv .venv-sam
	.venv-sam/bin/$(PIP_INSTALL) -r infra/requirements-sam.txt
	touch $@

venv: $(VENV)/.installed
venvs: $(VENV)/.installed .venv-localstack/.installed .venv-sam/.installed

db-ready:
	@infra/ensure_mariadb.sh

# The console's browser tests drive Debian's chromium through Playwright (never `playwright install`: nothing is
# downloaded at run time); installed here with apt-get when missing.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

migrate: venv db-ready
	$(PY) -m tickstream.migrate

# Two pytest-xdist workers side by side, a test file at a time, the longest files first (tests/conftest.py): much
# of the suite waits (drills, deploys, the simulator's trading), so two processes fit it into about half the time.
# Each worker has its own LocalStack and MariaDB for what it restarts. PYTEST_ARGS="-n 0" runs in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile --no-loadscope-reorder
test: venvs db-ready browser
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

up: venvs db-ready
	$(PY) -m infra.up

demo: venvs db-ready
	$(PY) -m infra.up --demo

bench: venvs db-ready
	$(PY) -m bench $(BENCH_ARGS)

# Sample events for `sam local invoke`, written by tickstream's own codec (tests fail if the committed ones drift).
events: venv
	$(PY) -m events.generate

# Stage 9 only: builds (once, then reuses) ticks tables of 1M, 10M and 100M rows; not part of `make bench`.
bench-scale: venvs db-ready
	$(PY) -m bench --stages 9 $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .venv-localstack .venv-sam .aws-sam .localstack
