#!/usr/bin/env bash
# Bootstrap (RabbitMQ + venv), then run the end-to-end demo against a real worker.
# Extra arguments go to demo/run_demo.py.  VENV as in bootstrap.sh; DEMO_URL picks the broker.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

bash "$ROOT/scripts/bootstrap.sh"
exec "$VENV/bin/python" "$ROOT/demo/run_demo.py" "$@"
