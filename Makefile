# Eventgate: `make run` sets up and runs everything with demo data; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# Tests use the machine's PostgreSQL, Redis and RabbitMQ; override to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/eventgate
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: setup run test demo-data clean bench bench-billing

setup: $(VENV)/.installed node_modules/.installed var/.dir

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

var/.dir:
	mkdir -p var/staticfiles && touch $@

# Debian's Chromium for the browser tests (Playwright cannot download its own browser here).
/usr/bin/chromium:
	(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# The processes of `make run` share throttling counters, connection slots and control messages
# through Redis when the machine runs one (its database 3, apart from the tests' 0 and the
# benchmark's 1); without Redis each process keeps its own in memory (docs/throttling.md).
RUN_REDIS_URL ?= redis://127.0.0.1:6379/3
run: export REDIS_URL := $(or $(REDIS_URL),$(shell (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && echo $(RUN_REDIS_URL)))
# honcho sets PORT for each process (5000, 5100, ...), so the portal's port travels as EVENTGATE_PORT.
run: export EVENTGATE_PORT := $(PORT)
run: export EVENTGATE_PUBLIC_URL := http://127.0.0.1:$(PORT)
# Its own Celery queue, so another checkout's worker on this machine's RabbitMQ never takes its
# tasks (an invoice sync by id would push the wrong database's invoice).
run: export CELERY_TASK_DEFAULT_QUEUE := $(or $(CELERY_TASK_DEFAULT_QUEUE),eventgate-run-$(PORT))
# Without STRIPE_API_KEY, a local fake Stripe (localstripe) runs as one of the processes.
ifeq ($(STRIPE_API_KEY),)
run: export STRIPE_API_KEY := sk_test_localstripe
run: export STRIPE_API_BASE := http://127.0.0.1:8420
# localstripe serves a stand-in Stripe.js (its card field talks to localstripe, not to Stripe).
run: export STRIPE_JS_URL := http://127.0.0.1:8420/js.stripe.com/v3/
run: export STRIPE_WEBHOOK_SECRET := $(or $(STRIPE_WEBHOOK_SECRET),whsec_eventgate_dev)
RUN_PROCESSES :=
else
RUN_PROCESSES := web worker beat webhooks demo banner
endif

demo-data: setup
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py load_demo
	$(PY) manage.py load_demo_billing
	$(PY) manage.py load_demo_analytics

run: demo-data
	$(VENV)/bin/honcho start -f Procfile $(RUN_PROCESSES)

test: setup /usr/bin/chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest $(PYTEST_ARGS)

# The gateway benchmark (docs/performance.md) against its baselines, on PostgreSQL and Redis like
# production; BENCH_ARGS=--full for the issue's sizes. Pushpin (baseline b) comes from Debian.
# Its own Redis database (1), apart from the tests' (0).
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/eventgate_bench
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/1
bench: setup /usr/bin/pushpin
	psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'eventgate_bench'" | grep -q 1 \
	  || createdb -h 127.0.0.1 -U postgres eventgate_bench
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) $(PY) manage.py migrate --noinput -v 0
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) $(PY) manage.py bench_gateway $(BENCH_ARGS)

# The billing benchmark (docs/performance.md › Billing): closing a month through the usage ledger
# against direct analytics reads, in the bench database (everything it writes is rolled back).
bench-billing: setup
	psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'eventgate_bench'" | grep -q 1 \
	  || createdb -h 127.0.0.1 -U postgres eventgate_bench
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) $(PY) manage.py migrate --noinput -v 0
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) $(PY) manage.py bench_billing $(BENCH_ARGS)

/usr/bin/pushpin:
	(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pushpin >/dev/null

clean:
	rm -rf var staticfiles
