# The only commands a newcomer needs. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint fmt bench bench-quality bench-models loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,replay,spark]'
	touch $(STAMP)

serve: $(STAMP) ## run the service on 127.0.0.1:8080, embedded SQLite store
	$(BIN)/pacer serve --host 127.0.0.1 --port 8080

test: $(STAMP) ## lint (ruff, ruff format, mypy strict) + the whole test suite (2 workers; real-time flights one at a time, their xdist group)
	@command -v redis-server >/dev/null || echo "note: redis-server not found; tests that need it are skipped. Install it: apt-get install -y redis-server"
	$(BIN)/ruff check pacer tests loadtest
	$(BIN)/ruff format --check pacer tests loadtest
	$(BIN)/mypy pacer
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP) ## /v1/bid throughput and latency vs a bare ASGI app and a naive FastAPI+Redis peer, fleet-scale figures, /v1/events throughput on Redis vs embedded, 100,000 bidders on one instance (~10 min quiet, at most ~16; 2 cores)
	@missing=""; for tool in wrk redis-server; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "bench: installing$$missing with apt-get"; sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; } || { echo "bench: needs$$missing: apt-get install -y$$missing"; exit 1; }; \
	fi
	$(BIN)/python loadtest/bench.py --out bench-out

bench-quality: $(STAMP) ## pacing quality: pacer vs the published baselines on fixed seeds (~5 min)
	$(BIN)/python -m pacer.replay.bench --out bench-quality

bench-models: $(STAMP) ## pacing with fitted spend curves vs the prior: a week of log, refit, two days judged (~5 min)
	$(BIN)/python -m pacer.replay.bench_models --out bench-models

loadtest: $(STAMP) ## locust against a 2-instance Redis fleet for 60 s, then spend == exchange ledger, no overspend
	@command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server"; exit 2; }
	$(BIN)/pip install -q -e '.[load]'
	$(BIN)/python loadtest/run_loadtest.py --out loadtest-out

lint: $(STAMP) ## ruff check, ruff format --check and mypy strict (make test runs them first)
	$(BIN)/ruff check pacer tests loadtest
	$(BIN)/ruff format --check pacer tests loadtest
	$(BIN)/mypy pacer

fmt: $(STAMP)
	$(BIN)/ruff format pacer tests loadtest
	$(BIN)/ruff check --fix pacer tests loadtest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
