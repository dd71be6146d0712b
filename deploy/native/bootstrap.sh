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
# Free space a new venv needs on GENWIRE_HOME's filesystem: genwire[all] installs 6 GB
# (docs/install.md) and pip's downloads of it (about 3 GB) usually sit on the same disk.
VENV_NEED_GB=10

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

mkdir -p "$GENWIRE_HOME/logs"
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

if ! venv_usable; then
  # A new venv is where the multi-GB install goes: say so before it, not later with ENOSPC.
  need_kb=$((VENV_NEED_GB * 1024 * 1024))
  free_kb="$(df -Pk "$GENWIRE_HOME" 2>/dev/null | awk 'NR == 2 { print $4 }' || true)"
  if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
    fail "the virtualenv needs about $VENV_NEED_GB GB free on the filesystem of $GENWIRE_HOME, which has $((free_kb / 1024 / 1024)) GB: free some space (or set GENWIRE_HOME to a larger disk)"
  fi
  echo "bootstrap: creating the virtualenv $VENV with $PY"
  # --clear: what a failed creation left (a bin/python without pip) goes first.
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
