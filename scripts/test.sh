#!/usr/bin/env bash
# Bootstrap (RabbitMQ + venv), then lint (ruff), type-check (mypy) and run the whole test
# suite on both supported ends, from the repo root:
#
#   rabbitmq-3.10  the machine's RabbitMQ 3.10, Python 3.9,  Celery 5.3  (.venv-py39-celery53)
#   rabbitmq-4.0   RabbitMQ 4.0.5 from scripts/rabbitmq4, Python 3.13, Celery 5.7
#                  (.venv-py313-celery57); afterwards its log must hold no deprecation
#                  warning that the suite caused
#
# Before them, the release check (scripts/release_check.sh): the package built with
# `python -m build`, `twine check`, its metadata, and the wheel installed in fresh Python
# 3.9 and 3.13 venvs running the demo.
# Every result is printed at the end.  Extra arguments go to pytest in every run, e.g.
#   scripts/test.sh -k waiter -x
# CAR_TEST_MATRIX picks runs: "rabbitmq-3.10", "rabbitmq-4.0", both (the default), or
# "local": one run with .venv (the machine's default Python and newest Celery) against the
# machine's RabbitMQ, the quickest check while developing.
# Test files run in CAR_TEST_JOBS (default 2) pytest-xdist processes, a whole file in
# one process (--dist loadfile: a file's fixtures and its order stay together), each
# process with its own vhost and session worker.  CAR_TEST_JOBS=1 runs them in one.
# Every step always runs; the exit status is non-zero if any failed.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

bash "$ROOT/scripts/bootstrap.sh"

status=0
fail() { [ "$status" -ne 0 ] || status=$1; }

echo "test: ruff check src tests"
"$VENV/bin/ruff" check src tests || fail $?

echo "test: mypy src/celery_amqp_results"
"$VENV/bin/mypy" src/celery_amqp_results || fail $?

# The release as a user installs it: sdist and wheel built and checked, the wheel in
# fresh Python 3.9 and 3.13 venvs running the demo (scripts/release_check.sh).
# CAR_TEST_MATRIX=local leaves it out.
release_check() {
    local began=$SECONDS
    if bash "$ROOT/scripts/release_check.sh"; then
        summary release "sdist + wheel, 3.9, 3.13" "passed in $((SECONDS - began)) s"
    else
        local rc=$?
        summary release "sdist + wheel, 3.9, 3.13" "FAILED (exit $rc) in $((SECONDS - began)) s"
        fail "$rc"
    fi
}

jobs="${CAR_TEST_JOBS:-2}"
parallel=()
if [ "$jobs" -gt 1 ]; then
    parallel=(-n "$jobs" --dist loadfile)
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

results=()
summary() { results+=("$(printf '%-14s %-24s %s' "$1" "$2" "$3")"); }

# run_suite NAME PYTHON_VERSION CELERY_REQUIREMENT BROKER(shared|rabbitmq4) PYTEST_ARGS...
run_suite() {
    local name="$1" pyver="$2" celery="$3" which="$4" py venv rc=0 began log_from=0
    shift 4
    began=$SECONDS
    echo "test: ===== $name: Python $pyver, $celery, $which broker ====="
    if ! py="$(python_for "$pyver")"; then
        summary "$name" "Python $pyver" "FAILED (no interpreter)"; fail 1; return
    fi
    venv="$ROOT/.venv-py${pyver/./}-${celery//[^a-z0-9]/}"
    if ! VENV="$venv" PYTHON="$py" CELERY="$celery" bash "$ROOT/scripts/bootstrap.sh" >"$venv.bootstrap.log" 2>&1; then
        cat "$venv.bootstrap.log" >&2
        summary "$name" "Python $pyver" "FAILED (bootstrap)"; fail 1; return
    fi
    grep -E 'venv|deps' "$venv.bootstrap.log" | sed 's/^/  /'
    local versions
    versions="$("$venv/bin/python" -c 'import sys, celery, kombu; print(f"Python {sys.version.split()[0]}, Celery {celery.__version__}, kombu {kombu.__version__}")')"
    (
        if [ "$which" = rabbitmq4 ]; then
            # Afresh: the log check must see this run's log only.
            # Checked by hand: set -e does not apply in a subshell whose status is tested.
            if ! as_root "$ROOT/scripts/rabbitmq4" restart; then
                echo "test: FAILED: the RabbitMQ 4.0 node did not start" >&2
                exit 1
            fi
            eval "$(as_root "$ROOT/scripts/rabbitmq4" env)"
        fi
        echo "test: $versions, RabbitMQ $(${CAR_TEST_RABBITMQCTL:-rabbitmqctl} version 2>/dev/null)"
        if [ -n "${CAR_TEST_BROKER_LOG:-}" ]; then
            log_from=$(( $(wc -l <"$CAR_TEST_BROKER_LOG") + 1 ))
        fi
        echo "test: pytest -q ${parallel[*]} $*"
        suite_rc=0
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@" || suite_rc=$?
        if [ -n "${CAR_TEST_BROKER_LOG:-}" ]; then
            # A deprecation RabbitMQ logged while the suite ran is one this project caused
            # (those logged at boot, by the node's own plugins, came before log_from).
            deprecated="$(tail -n "+$log_from" "$CAR_TEST_BROKER_LOG" | grep -A1 'Deprecated features' || true)"
            if [ -n "$deprecated" ]; then
                echo "test: FAILED: the RabbitMQ 4.0 log has deprecation warnings from this run:" >&2
                echo "$deprecated" >&2
                [ "$suite_rc" -ne 0 ] || suite_rc=3
            else
                echo "test: RabbitMQ 4.0 log: no deprecation warning from this run ($CAR_TEST_BROKER_LOG)"
            fi
        fi
        exit "$suite_rc"
    ) || rc=$?
    if [ "$which" = rabbitmq4 ]; then as_root "$ROOT/scripts/rabbitmq4" stop || true; fi
    if [ "$rc" -eq 0 ]; then
        summary "$name" "$versions" "passed in $((SECONDS - began)) s"
    else
        summary "$name" "$versions" "FAILED (exit $rc) in $((SECONDS - began)) s"
        fail "$rc"
    fi
}

matrix="${CAR_TEST_MATRIX:-rabbitmq-3.10 rabbitmq-4.0}"
case " $matrix " in *" local "*) ;; *) echo "test: ===== release ====="; release_check ;; esac
for run in $matrix; do
    case "$run" in
        rabbitmq-3.10) run_suite rabbitmq-3.10 3.9 "celery==5.3.*" shared "$@" ;;
        rabbitmq-4.0) run_suite rabbitmq-4.0 3.13 "celery==5.7.*" rabbitmq4 "$@" ;;
        local)
            echo "test: pytest -q ${parallel[*]} $*"
            if "$VENV/bin/python" -m pytest -q "${parallel[@]}" "$@"; then
                summary local "$VENV" passed
            else
                rc=$?; summary local "$VENV" "FAILED (exit $rc)"; fail "$rc"
            fi
            ;;
        *) echo "test: ERROR: unknown CAR_TEST_MATRIX entry '$run'" >&2; fail 2 ;;
    esac
done

echo "test: ===== results ====="
for line in "${results[@]}"; do echo "test: $line"; done
if [ "$status" -ne 0 ]; then
    echo "test: FAILED (exit $status)" >&2
fi
exit "$status"
