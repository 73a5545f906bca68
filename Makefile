# Two commands: `make demo` (the main job on the bundled real data, local S3)
# and `make test` (the whole suite). Both create .venv from uv.lock first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
# Byte-compile at install: `elt` starts without compiling its dependencies,
# even where Python may not write .pyc files (read-only venv, PYTHONDONTWRITEBYTECODE).
export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install spark browser demo test test-fast lint docs serve bench down clean

$(UV):
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --inexact: a sync never removes another group's packages (spark, bench).
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --python $(BIN)/python
	touch $@

install: $(VENV)/.synced

# The Spark target's packages (dbt-spark, pyspark: built once from its source
# archive into uv's cache). Java 17 must be on the machine.
$(VENV)/.synced-spark: pyproject.toml uv.lock | $(VENV)/.synced
	$(UV) sync --frozen --inexact --python $(BIN)/python --group spark
	touch $@

spark: $(VENV)/.synced-spark

# The browser test of `elt serve` drives Debian's chromium (no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for tests/test_serve.py"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || { \
			$(SUDO) apt-get update -qq && \
			$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }; }

demo: install
	$(BIN)/elt up
	$(BIN)/elt upload data/turnstile/*.csv.gz --dataset turnstile
	$(BIN)/elt run
	@url=$$($(BIN)/elt url turnstile_daily | head -n 1) && \
		echo "presigned URL of marts/turnstile_daily.csv (valid 1 hour):" && echo "$$url" && \
		curl -fsS -o "$${ELT_HOME:-.elt}/turnstile_daily.csv" "$$url" && \
		echo "first rows, fetched over plain HTTP:" && \
		head -n 8 "$${ELT_HOME:-.elt}/turnstile_daily.csv"

# A pytest worker per core (pytest-xdist); each test module runs whole on one
# worker, with its own local S3 server, ELT_HOME and ports.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: install spark browser lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The inner loop: unit tests only (no S3 server, no dbt), in seconds.
test-fast: install
	$(BIN)/pytest -m unit

lint: install
	$(BIN)/ruff check loaders tests bench
	$(BIN)/ruff format --check loaders tests bench
	$(BIN)/mypy loaders
	$(BIN)/sqlfluff lint models tests/dbt

# Generate and serve the dbt docs site on http://127.0.0.1:8080 (offline).
docs: install
	$(BIN)/dbt docs generate --profiles-dir .
	$(BIN)/dbt docs serve --profiles-dir . --host 127.0.0.1 --port 8080 --no-browser

# Benchmarks (not part of `make test`): 2, 32 and 256 weeks, about an hour on
# 2 cores. Rewrites bench/README.md and bench/results/latest.json.
BENCH_ARGS ?= --scales 2,32,256 --repeat 3
bench: install spark
	$(UV) sync --frozen --inexact --python $(BIN)/python --group bench
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The read-only page of published marts, rejects and a station chart.
serve: install
	$(BIN)/elt serve --port 8000

down: install
	$(BIN)/elt down

clean: down
	rm -rf .elt target logs
