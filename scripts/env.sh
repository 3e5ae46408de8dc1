# Sourced by the other scripts: the repo root, the virtualenv path, and a PATH
# that reaches rabbitmq-server and rabbitmqctl (they live in /usr/sbin).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
export VENV
for dir in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$dir:"*) ;; *) PATH="$PATH:$dir" ;; esac
done
export PATH

# A pyenv interpreter of version $1 (e.g. 3.9), else one on PATH.
python_for() {
    local found
    found="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1)"
    [ -n "$found" ] || found="$(command -v "python$1" || true)"
    [ -n "$found" ] || { echo "ERROR: no Python $1 found (pyenv or PATH)" >&2; return 1; }
    echo "$found"
}
