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
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating the virtualenv $VENV with $PY"
  "$PY" -m venv "$VENV" >>"$LOG" 2>&1 \
    || fail "could not create $VENV (Debian: apt-get install python3.11-venv); see $LOG"
fi

echo "bootstrap: installing genwire and its dependencies into $VENV (first time: large downloads; log: $LOG)"
if ! "$VENV/bin/python" -m pip install --progress-bar off "${pins[@]}" -e "$ROOT[$EXTRAS]" >>"$LOG" 2>&1; then
  fail "pip install failed: $(grep -E '^(ERROR|error)' "$LOG" | tail -n 1) (full log: $LOG)"
fi
echo "$want" >"$STAMP"
echo "bootstrap: virtualenv ready"
