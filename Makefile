# TicketBlitz — `make run` serves the embedded default with a demo event; `make test` runs everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run seed test lint typecheck services services-down services-status bench fuzz chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install TicketBlitz with its dev tools

run: install  ## serve the embedded default (SQLite under ./data) with the demo event on :8000; prints the page URL and the admin token (TICKETBLITZ_ADMIN_TOKEN=dev make run chooses it)
	$(BIN)/ticketblitz serve --demo

seed: install
	$(BIN)/ticketblitz seed

lint: install
	$(BIN)/ruff check ticketblitz tests bench

typecheck: install
	$(BIN)/mypy

test: install  ## ruff, mypy, then the whole pytest suite against real PostgreSQL, Redis and Kafka
	bash scripts/test.sh

bench: install  ## benchmark matrix: bench/results/<UTC date>-<commit>.md/.png/.json/-profile.svg
	$(BIN)/pip install --quiet -e '.[bench]'
	bash scripts/services.sh up
	$(BIN)/python bench/run.py $(BENCH_ARGS)

chaos: install  ## chaos suite, long mode: more requests, each fault 3x, on a private service set (.services/chaos)
	TB_CHAOS_MODE=long $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/chaos $(CHAOS_ARGS)

fuzz: install  ## the HTTP core's property tests, long: hypothesis (FUZZ_EXAMPLES per test), then atheris (FUZZ_SECONDS)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	TICKETBLITZ_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),100000) $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_http_fuzz.py
	$(BIN)/python tests/fuzz/fuzz_http_core.py -dict=tests/fuzz/http.dict -max_total_time=$(or $(FUZZ_SECONDS),120) -rss_limit_mb=4096

services:  ## start PostgreSQL, Redis and Kafka on loopback (data under .services/)
	bash scripts/services.sh up

services-down:
	bash scripts/services.sh down

services-status:
	bash scripts/services.sh status

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
