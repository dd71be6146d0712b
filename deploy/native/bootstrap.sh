#!/usr/bin/env bash
# Creates or refreshes genwire's virtualenv (<GENWIRE_HOME>/venv): the one step before Python
# takes over (`genwire up` installs and starts everything else). Fast when nothing changed: the
# venv remembers a hash of pyproject.toml and of the constraints, the extras and the clone it was
# installed from.
# Versions come from deploy/native/constraints.txt (pip -c: the set the suite last passed on,
# written by deploy/compose/lock.py), so a fresh clone installs what was tested, not today's
# releases. GENWIRE_UNLOCKED=1 installs without them, upgrading everything to the newest
# releases pyproject.toml allows (to try them: relock, then `make test`); a distribution the
# constraints do not name (the gpu extra's) resolves freely.
# The native stack runs every service, the model toolchain and the tools from this one venv, and
# the tests need the dev tools: extras `all,dev` (GENWIRE_EXTRAS overrides; see docs/install.md
# for one service's own install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GENWIRE_HOME="${GENWIRE_HOME:-$HOME/.cache/genwire}"
VENV="$GENWIRE_HOME/venv"
STAMP="$VENV/.genwire-install"
LOG="$GENWIRE_HOME/logs/bootstrap.log"
EXTRAS="${GENWIRE_EXTRAS:-all,dev}"
CONSTRAINTS="$ROOT/deploy/native/constraints.txt"
# Free space (GB: 10^9 bytes) a new venv needs on GENWIRE_HOME's filesystem: genwire[all] installs
# 6.0 GB (docs/install.md, measured), plus 1 GB to spare. GENWIRE_MIN_FREE_GB replaces it (0: no
# check), as it does genwire up's check before building Jaeger.
VENV_NEED_GB=7
# Held while this script runs (flock): a second run waits, so that one never clears or installs
# into the venv while another is installing. Beside the venv: --clear would remove it from inside.
LOCK="$GENWIRE_HOME/venv.lock"

fail() { echo "bootstrap: error: $*" >&2; exit 1; }

if [ "${GENWIRE_UNLOCKED:-}" = 1 ]; then
  # Every dependency to its newest allowed release (pip keeps what already satisfies a range
  # otherwise), resolved again once a day.
  pins=(--upgrade --upgrade-strategy eager) lock="unlocked-$(date -u +%F)"
else
  [ -f "$CONSTRAINTS" ] || fail "$CONSTRAINTS is missing (GENWIRE_UNLOCKED=1 installs without it)"
  pins=(-c "$CONSTRAINTS") lock="$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
fi
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $lock $ROOT [$EXTRAS]"

mkdir -p "$GENWIRE_HOME/logs"
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    echo "bootstrap: waiting for another bootstrap run, which holds $LOCK" >&2
    flock 9
  fi
fi
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ]; then
  exit 0
fi

PY="${GENWIRE_PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      PY="$candidate"
      break
    fi
  done
fi
[ -n "$PY" ] || fail "Python 3.11 not found: install it (Debian: apt-get install python3.11 python3.11-venv) or set GENWIRE_PYTHON"

# The log grows run after run: this run's failure is quoted from after its own marker only, never
# an older run's ERROR line.
MARKER="=== genwire bootstrap: $(date -u +%FT%TZ) pid $$ ==="
echo "$MARKER" >>"$LOG"
this_run() { awk -v m="$MARKER" 'seen; $0 == m { seen = 1 }' "$LOG"; }
# What this run's log says went wrong: its last ERROR line, else its last line.
reason() {
  local found
  found="$(this_run | grep -E '^(ERROR|error)' | tail -n 1 || true)"
  [ -n "$found" ] || found="$(this_run | grep -v '^[[:space:]]*$' | tail -n 1 || true)"
  echo "${found:-no output}"
}
# A venv is usable when its pip runs: Debian's python3.11 without python3.11-venv leaves a
# bin/python and no pip behind, which every later run would otherwise take for a venv.
venv_usable() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >>"$LOG" 2>&1; }
# A venv an install once finished in: the stamp is written only then (genwire's own distribution
# in it tells the same of a venv whose stamp went missing). The running stack restarts its
# processes from it: never cleared by this script, whatever its pip says now.
venv_completed() {
  [ -e "$STAMP" ] || compgen -G "$VENV/lib/python3*/site-packages/genwire-*.dist-info" >/dev/null
}
# Fail before a multi-GB install when GENWIRE_HOME's filesystem has less than $1 GB free.
require_free_gb() {
  local need="${GENWIRE_MIN_FREE_GB:-$1}" free_kb
  case "$need" in
    '' | *[!0-9]*) fail "GENWIRE_MIN_FREE_GB=$need: a whole number of GB is expected (0 turns the free-space checks off)" ;;
  esac
  need=$((10#$need)) # decimal: a leading zero is no octal (08 read as 8, as Python reads it)
  [ "$need" -gt 0 ] || return 0
  free_kb="$(df -Pk "$GENWIRE_HOME" 2>/dev/null | awk 'NR == 2 { print $4 }' || true)"
  case "$free_kb" in '' | *[!0-9]*) return 0 ;; esac # df said nothing usable: no check
  if [ $((free_kb * 1024)) -lt $((need * 1000000000)) ]; then
    fail "the virtualenv needs about $need GB free on the filesystem of $GENWIRE_HOME, which has $(awk -v kb="$free_kb" 'BEGIN { printf "%.1f", kb * 1024 / 1e9 }') GB: free some space (or set GENWIRE_HOME to a larger disk; GENWIRE_MIN_FREE_GB=0 skips this check)"
  fi
}

if ! venv_usable; then
  if [ -e "$VENV" ] && venv_completed; then
    fail "$VENV was installed completely but its pip does not run now: $(reason). It is not made again by itself (the running stack restarts its processes from it); to make it again: \`make down\`, \`rm -rf $VENV\`, then \`make venv\` (full log: $LOG)"
  fi
  # A new venv is where the multi-GB install goes: say so before it, not later with ENOSPC.
  require_free_gb "$VENV_NEED_GB"
  echo "bootstrap: creating the virtualenv $VENV with $PY"
  # --clear: what a failed creation left (a bin/python without pip, no install) goes first.
  "$PY" -m venv --clear "$VENV" >>"$LOG" 2>&1 \
    || fail "could not create $VENV: $(reason) (Debian: apt-get install python3.11-venv; full log: $LOG)"
  venv_usable \
    || fail "$VENV has no working pip: $(reason) (Debian: apt-get install python3.11-venv; full log: $LOG)"
fi

echo "bootstrap: installing genwire and its dependencies into $VENV (first time: large downloads; log: $LOG)"
if ! "$VENV/bin/python" -m pip install --progress-bar off "${pins[@]}" -e "${ROOT}[$EXTRAS]" >>"$LOG" 2>&1; then
  fail "pip install failed: $(reason) (full log: $LOG)"
fi
echo "$want" >"$STAMP"
echo "bootstrap: virtualenv ready"
