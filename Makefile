# The only commands a newcomer needs. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint fmt bench bench-quality clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,replay]'
	touch $(STAMP)

serve: $(STAMP) ## run the service on 127.0.0.1:8080, embedded SQLite store
	$(BIN)/pacer serve --host 127.0.0.1 --port 8080

test: $(STAMP) ## lint + the whole test suite
	@command -v redis-server >/dev/null || echo "note: redis-server not found; tests that need it are skipped. Install it: apt-get install -y redis-server"
	$(BIN)/ruff check pacer tests loadtest
	$(BIN)/python -m pytest -q

bench-quality: $(STAMP) ## pacing quality: pacer vs the published baselines on fixed seeds (~5 min)
	$(BIN)/python -m pacer.replay.bench --out bench-quality

lint: $(STAMP)
	$(BIN)/ruff check pacer tests loadtest
	$(BIN)/ruff format --check pacer tests loadtest

fmt: $(STAMP)
	$(BIN)/ruff format pacer tests loadtest
	$(BIN)/ruff check --fix pacer tests loadtest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
