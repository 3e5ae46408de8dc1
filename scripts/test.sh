#!/usr/bin/env bash
# Bootstrap (RabbitMQ + venv), then lint (ruff), type-check (mypy) and test (pytest)
# from the repo root.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k waiter -x
# Test files run in CAR_TEST_JOBS (default 2) pytest-xdist processes, a whole file in
# one process (--dist loadfile: a file's fixtures and its order stay together), each
# process with its own vhost and session worker.  CAR_TEST_JOBS=1 runs them in one.
# Every step always runs; the exit status is non-zero if any failed.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

bash "$ROOT/scripts/bootstrap.sh"

status=0
echo "test: ruff check src tests"
"$VENV/bin/ruff" check src tests || status=$?

echo "test: mypy src/celery_amqp_results"
"$VENV/bin/mypy" src/celery_amqp_results || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }

jobs="${CAR_TEST_JOBS:-2}"
parallel=()
if [ "$jobs" -gt 1 ]; then
    parallel=(-n "$jobs" --dist loadfile)
fi
echo "test: pytest -q ${parallel[*]} $*"
"$VENV/bin/python" -m pytest -q "${parallel[@]}" "$@" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }

if [ "$status" -ne 0 ]; then
    echo "test: FAILED (exit $status)" >&2
fi
exit "$status"
