#!/usr/bin/env bash
# Start Postgres+pgvector for MemGPT's tests and print the export line, as the seed's script did, but
# through the toolkit: Docker when an engine answers, else the embedded server; waits until usable;
# publishes on 127.0.0.1 only. Run from anywhere:  eval "$(bash db/run_postgres.sh)"
# Options go to `toolkit up` (e.g. --port 5433); those that say which database go to `toolkit env` too,
# so the export line names the server that was started.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/.installed-base >&2  # the base install (uv.lock's versions), made or brought up to date
env_args=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --engine=*|--port=*|--user=*|--password=*|--database=*|--url=*|--state-dir=*) env_args+=("${args[i]}") ;;
    --engine|--port|--user|--password|--database|--url|--state-dir)
      env_args+=("${args[i]}" "${args[i + 1]:-}")
      i=$((i + 1)) ;;
  esac
done
.venv/bin/toolkit up "$@" >&2
.venv/bin/toolkit env "${env_args[@]}"
