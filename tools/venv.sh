#!/bin/sh
# Make .venv hold the toolkit, exactly the versions in the lock: `tools/venv.sh base` (what db-* need) or
# `tools/venv.sh all` (every extra, test and dev tools). The Makefile calls it; so can anyone.
# `tools/venv.sh uv` prints the uv it would use (installing it into .bootstrap/ when needed).
#
# With uv (seconds, even with an empty cache): `uv sync` from uv.lock. uv comes from PATH, else from
# .bootstrap/ (installed there by the system pip, once). When uv cannot be had, pip installs the same
# versions from constraints.txt (a minute or more). TOOLKIT_INSTALLER=uv|pip forces one; PYTHON picks the
# interpreter (default python3). `make lock` refreshes uv.lock and constraints.txt together.
#
# --inexact: what else the user installed into .venv stays (and `base` after `all` removes nothing).
set -eu
export PIP_ROOT_USER_ACTION=ignore  # as an option, older pips (Ubuntu 22.04: 22.0) would refuse it
cd "$(dirname "$0")/.."

what="${1:-base}"
case "$what" in
  base) extras="" ;;
  all) extras="--extra all --extra test --extra dev" ;;
  uv) ;;
  *) echo "usage: tools/venv.sh base|all|uv" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
VENV=.venv
# uv's own setting would send the install elsewhere, and make's stamps and every target read .venv
export UV_PROJECT_ENVIRONMENT="$PWD/$VENV"
BOOTSTRAP="${TOOLKIT_UV_BOOTSTRAP:-.bootstrap/uv}"  # the GitHub Action puts it under RUNNER_TEMP
UV_MIN=0.5  # the oldest uv that reads uv.lock's format

say() { echo "$*" >&2; }

# uv from PATH when new enough, else .bootstrap's, else installed there by pip; prints its path
find_uv() {
  if command -v uv >/dev/null 2>&1 && uv_new_enough uv; then command -v uv; return 0; fi
  if [ -x "$BOOTSTRAP/bin/uv" ] && uv_new_enough "$BOOTSTRAP/bin/uv"; then echo "$BOOTSTRAP/bin/uv"; return 0; fi
  say "no uv $UV_MIN or newer on PATH: installing it into $BOOTSTRAP (pip, once)..."
  # into a temp dir renamed into place (a rename fails when another set-up's is there already: then
  # that one is used), so two set-ups at once never see a half-installed uv
  mkdir -p "$(dirname "$BOOTSTRAP")"
  tmp="$BOOTSTRAP.tmp.$$"
  trap 'rm -rf "$tmp" "$tmp.log" "$tmp.old"; exit 130' INT TERM  # Ctrl-C mid-install leaves nothing behind
  if "$PYTHON" -m pip install -q --disable-pip-version-check --target "$tmp" "uv>=$UV_MIN" >"$tmp.log" 2>&1 \
       && [ -x "$tmp/bin/uv" ]; then
    if ! { [ -x "$BOOTSTRAP/bin/uv" ] && uv_new_enough "$BOOTSTRAP/bin/uv"; }; then
      if [ -e "$BOOTSTRAP" ]; then mv "$BOOTSTRAP" "$tmp.old" 2>/dev/null || true; fi  # a too old one
      "$PYTHON" -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$tmp" "$BOOTSTRAP" 2>/dev/null || true
    fi
    rm -rf "$tmp" "$tmp.log" "$tmp.old"
    if [ -x "$BOOTSTRAP/bin/uv" ]; then echo "$BOOTSTRAP/bin/uv"; return 0; fi
  fi
  say "could not install uv with $PYTHON -m pip: $(grep -E 'ERROR|No module' "$tmp.log" | head -1)"
  rm -rf "$tmp" "$tmp.log"
  rmdir "$(dirname "$BOOTSTRAP")" 2>/dev/null || true
  return 1
}

uv_new_enough() {
  version=$("$1" --version 2>/dev/null | awk '{print $2}') || return 1
  [ -n "$version" ] && [ "$(printf '%s\n%s\n' "$UV_MIN" "$version" | sort -V | head -1)" = "$UV_MIN" ]
}

installer="${TOOLKIT_INSTALLER:-auto}"
case "$installer" in
  auto|uv|pip) ;;
  *) say "TOOLKIT_INSTALLER=$installer: must be auto, uv or pip"; exit 2 ;;
esac

if [ "$what" = uv ]; then find_uv; exit; fi

# a venv whose interpreter no longer runs (its Python removed or upgraded, a half-made venv) cannot be
# repaired in place: it is made again
if { [ -e "$VENV" ] || [ -L "$VENV" ]; } && ! "$VENV/bin/python" -c "" >/dev/null 2>&1; then
  say "$VENV is broken (its python does not run): making it again"
  rm -rf "$VENV"
fi

if [ "$installer" != pip ]; then
  if uv=$(find_uv); then
    # with pip in it, as a venv made by python -m venv has (uv sync alone makes one without): what users
    # and tools expect of .venv/bin/pip; --inexact keeps it
    if [ ! -e "$VENV" ]; then "$uv" venv --quiet --seed --python "$PYTHON" "$VENV" || exit 1; fi
    # --compile-bytecode: uv writes no .pyc (pip does), and where none can be written at run time
    # (PYTHONDONTWRITEBYTECODE, a root-owned venv) every run compiled lancedb anew: 7.5 s an import, 3.9 s with them
    # shellcheck disable=SC2086  # $extras is a list of flags
    if "$uv" sync --quiet --locked --inexact --compile-bytecode --python "$PYTHON" $extras; then exit 0; fi
    say "uv sync failed (uv's error is above); if pyproject.toml changed, refresh the lock: make lock"
    exit 1
  fi
  if [ "$installer" = uv ]; then say "TOOLKIT_INSTALLER=uv, but uv cannot be had"; exit 1; fi
  say "installing with pip instead (slower)"
fi

# a venv uv made has no pip: give it one, else make a venv
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1 && ! "$VENV/bin/python" -m ensurepip -q >/dev/null 2>&1; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || { rm -rf "$VENV"; say "cannot create $VENV with $PYTHON; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
fi
spec="."
[ "$what" = all ] && spec=".[all,test,dev]"
exec "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  --config-settings editable_mode=compat -c constraints.txt -e "$spec"
