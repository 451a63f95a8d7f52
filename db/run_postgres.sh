#!/usr/bin/env bash
# Start Postgres+pgvector for MemGPT's tests and print the export line, as the seed's script did, but
# through the toolkit: Docker when an engine answers, else the embedded server; waits until usable;
# publishes on 127.0.0.1 only. Run from anywhere:  eval "$(bash db/run_postgres.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/toolkit ]; then
  make -s venv >&2
fi
.venv/bin/toolkit up "$@" >&2
.venv/bin/toolkit env
