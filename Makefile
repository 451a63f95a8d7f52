# Every target bootstraps .venv itself; `make db-up` and `make test` are all a fresh clone needs.
# Two installs, both exactly the versions in uv.lock (tools/venv.sh: uv, else pip with constraints.txt):
# the base (Postgres: what db-* need, a small first run) and everything else on top of it (every
# backend's and server's extra, test and dev tools: what test, smoke and lint need).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TK     := $(BIN)/toolkit
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
LOCKED := pyproject.toml uv.lock constraints.txt tools/venv.sh

.DEFAULT_GOAL := help
.PHONY: help venv lock db-up db-down db-status db-logs db-psql db-reset env test smoke \
        chroma-up chroma-down s3-up s3-down compose-up compose-down image bench lint

help: ## list targets
	@# names with digits too (s3-up); a description's $$$$ (make's escape) shown as the $$ it runs as
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{gsub(/\$$\$$/, "$$", $$2); printf "  %-14s %s\n", $$1, $$2}'

$(BASE): $(LOCKED)
	@PYTHON=$(PYTHON) sh tools/venv.sh base
	@touch $@

$(STAMP): $(BASE)
	@echo "installing every backend, the test and dev tools into $(VENV)..."
	@PYTHON=$(PYTHON) sh tools/venv.sh all
	@touch $@

venv: $(STAMP) ## create .venv and install the toolkit with every extra (make db-up needs only the base)

lock: ## refresh uv.lock and constraints.txt (pip's copy of it) after editing pyproject.toml's dependencies
	@uv=$$(PYTHON=$(PYTHON) sh tools/venv.sh uv) && "$$uv" lock --python $(PYTHON) && \
	  "$$uv" export --quiet --locked --all-extras --no-emit-project --no-hashes --output-file constraints.txt

db-up: $(BASE) ## start Postgres+pgvector (Docker, else embedded), wait, write .env
	@$(TK) up

db-down: $(BASE) ## stop it (data kept)
	@$(TK) down

db-status: $(BASE) ## is it running? (toolkit status --json for machines)
	@$(TK) status

db-logs: $(BASE) ## the server log's tail
	@$(TK) logs

db-psql: $(BASE) ## open psql on the database
	@$(TK) psql

db-reset: $(BASE) ## stop, delete the data (asks first; YES=1 does not), start fresh
	@# off a terminal (CI, an editor's task) nobody can answer the question: say how instead of failing on it
	@if [ "$(YES)" != 1 ] && [ ! -t 0 ]; then \
	  echo "make db-reset: no terminal to confirm deleting the data on; run \`make db-reset YES=1\`" >&2; exit 1; fi
	@$(TK) down --purge $(if $(filter 1,$(YES)),--yes,)
	@$(TK) up

env: $(BASE) ## print the export line: eval "$(make -s env)"
	@$(TK) env

test: $(STAMP) ## run the test suite against real servers
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

smoke: $(STAMP) chroma-up s3-up ## prove every archival backend works (starts the Chroma and S3 test servers)
	@$(TK) smoke --backend all

chroma-up: $(STAMP) ## start a Chroma server on 127.0.0.1:8000 (a free port when 8000 is not this checkout's)
	@$(TK) chroma up

chroma-down: $(BASE) ## stop it
	@$(TK) chroma down

s3-up: $(STAMP) ## start the S3 test server (moto) on 127.0.0.1:9000 (or a free port), bucket toolkit, settings into .env
	@$(TK) s3 up

s3-down: $(BASE) ## stop it
	@$(TK) s3 down

# Compose v2 plugin when present, else Debian's docker-compose 1.29 (which has no --wait)
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

compose-up: ## docker compose: Postgres+pgvector and Chroma (TOOLKIT_PG_IMAGE=toolkit/pgvector-offline:pg18 offline)
	$(COMPOSE) -f compose/compose.yaml up -d $(if $(findstring docker compose,$(COMPOSE)),--wait,)

compose-down: ## stop the compose services (volumes kept)
	$(COMPOSE) -f compose/compose.yaml down

image: $(BASE) ## build the offline pgvector image (no registry needed)
	@$(TK) image build

bench: $(STAMP) ## benchmarks: ratios against the raw tools
	@$(BIN)/python bench/up.py

lint: $(STAMP) ## ruff and mypy
	@$(BIN)/ruff check toolkit tests bench
	@$(BIN)/mypy toolkit
