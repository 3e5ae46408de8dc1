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
