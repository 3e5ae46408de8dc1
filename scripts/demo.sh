#!/usr/bin/env bash
# Bootstrap (RabbitMQ + venv), then run the end-to-end demo against a real worker.
# Extra arguments go to demo/run_demo.py.  VENV as in bootstrap.sh; DEMO_URL picks the broker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
export VENV
case ":$PATH:" in *":/usr/sbin:"*) ;; *) export PATH="$PATH:/usr/sbin:/sbin" ;; esac

bash "$ROOT/scripts/bootstrap.sh"
exec "$VENV/bin/python" "$ROOT/demo/run_demo.py" "$@"
