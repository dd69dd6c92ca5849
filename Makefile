# Two commands on a fresh machine: `make run` serves on port 3000, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The PostgreSQL tests use the local server when one answers (CI always has one).
TEST_DATABASE_URL ?= $(shell pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && \
	echo postgresql://postgres@127.0.0.1:5432/test)
export TEST_DATABASE_URL

.PHONY: install db-upgrade run test lint format integration bench clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/.installed

# Quiet recipes: with LOG_FORMAT=json every line `make run` prints is the service's JSON.
db-upgrade: install
	@$(BIN)/flask db upgrade

run: db-upgrade
	@$(if $(PORT),PORT=$(PORT) )$(if $(HOST),HOST=$(HOST) )exec $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Test processes (pytest-xdist): the suite waits on servers, browsers and fsyncs as much as
# it computes, so two share two cores well. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

integration: install
	$(if $(PORT),PORT=$(PORT) )$(if $(HOST),HOST=$(HOST) )$(BIN)/python scripts/integration_test.py --from-settings

# The benchmark suite (bench/run.py): prints the table, writes bench/results/latest.json.
# BENCH_ARGS=--quick for a one-minute smoke run; `.venv/bin/python -m bench --help` for sizes.
$(BIN)/.bench-installed: bench/requirements.txt $(BIN)/.installed
	$(BIN)/pip install --quiet -r bench/requirements.txt
	touch $@

bench: $(BIN)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache build *.egg-info
