# Shared by scripts/serve, scripts/test, scripts/bench and scripts/ledger: ONE virtual environment (.venv) with
# the project and every extra declared in setup.cfg (test, bench, ...), installed once. It is reinstalled only
# when the dependency declarations change: a stamp file remembers their hash (scripts/_deps.py says what the
# hash covers), so switching between the scripts never reinstalls anything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LEDGER_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
STAMP="$VENV/.ledger-installed"

# ensure_venv: create .venv if needed and (re)install the project with all its extras if the stamp is stale.
# Arguments (an extras name, as older callers pass) are accepted and ignored: every extra is always installed.
ensure_venv() {
  local want extras lock_fd=""
  read -r want extras < <("$PYTHON_BIN" "$ROOT/scripts/_deps.py" "$ROOT")
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  mkdir -p "$VENV"
  # Two scripts started at once (scripts/serve in one terminal, scripts/test in another) install once.
  if command -v flock >/dev/null 2>&1; then
    exec {lock_fd}>"$VENV/.ledger-install.lock"
    flock "$lock_fd"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment in $VENV" >&2
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "==> installing banking-ledger${extras:+[$extras]} into $VENV (once; again only when setup.cfg's dependencies change)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" >&2
    rm -f "$VENV"/.ledger-installed-*  # the per-extras stamps of older versions of this script
    echo "$want" > "$STAMP"
  fi
  if [ -n "$lock_fd" ]; then
    exec {lock_fd}>&-
  fi
}
