#!/usr/bin/env bash
# CI room: make a Docker engine answer for the Docker tests, and stop only what we started.
#   bash .ci/docker.sh start   install Debian's docker.io + docker-compose if needed, start dockerd
#                              (overlay2, else vfs), wait for `docker info`, build the offline image
#   bash .ci/docker.sh stop    stop the dockerd this script started (nothing else)
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${TOOLKIT_CI_STATE:-/tmp/toolkit-ci-docker}
LOG=$STATE/dockerd.log
PIDFILE=$STATE/dockerd.pid
mkdir -p "$STATE"

answers() { timeout 10 docker info >/dev/null 2>&1; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  # a static busybox gives the offline image its shell and a few debugging tools
  command -v busybox >/dev/null || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "docker.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

start_dockerd() {
  local driver=$1
  echo "docker.sh: starting dockerd (storage driver $driver), log in $LOG"
  dockerd --storage-driver "$driver" >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 60); do
    if answers; then return 0; fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  stop_dockerd
  return 1
}

stop_dockerd() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  # a pid file left by an earlier run may name a reused pid: only ever signal our dockerd
  if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    kill -TERM "$pid"
    # dockerd stops its containers and its containerd child itself; wait for it
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start)
    if answers; then
      echo "docker.sh: a Docker engine already answers; using it"
    else
      install_packages
      start_dockerd overlay2 || start_dockerd vfs || {
        echo "docker.sh: dockerd did not start; last lines of $LOG:" >&2; tail -n 30 "$LOG" >&2; exit 1; }
    fi
    docker info --format 'docker.sh: engine {{.ServerVersion}}, storage driver {{.Driver}}'
    if [ -x .venv/bin/toolkit ] || make -s venv >/dev/null; then
      .venv/bin/toolkit image build
    fi
    ;;
  stop)
    stop_dockerd
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
