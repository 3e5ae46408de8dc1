#!/usr/bin/env bash
# Make this machine ready to run the demo and the tests, idempotently:
#   1. RabbitMQ installed (apt-get, as root or through sudo),
#   2. RabbitMQ running and booted (started with `rabbitmq-server -detached` if not),
#      with its management API (plugin rabbitmq_management) answering on port 15672,
#   2c. Redis answering on 127.0.0.1:6379 (installed and started if not; the parity tests),
#   3. a virtualenv with this package installed editable, plus its [test] extras.
# Prints one line per step; re-running it when everything is in place takes ~1 s.
#
# Environment:
#   VENV    virtualenv path (default: .venv in the repo root; relative paths are
#           taken from the repo root)
#   PYTHON  interpreter to create the virtualenv with (default: first python3 >= 3.9)
#   CELERY  a pip requirement for Celery in that venv, e.g. "celery==5.3.*" (default: the
#           newest release pyproject.toml allows); scripts/test.sh's matrix sets it
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly if we are root, else through sudo if there is one.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# -- 1. RabbitMQ installed ------------------------------------------------------------------
if command -v rabbitmq-server >/dev/null 2>&1; then
    say "rabbitmq-server: installed"
else
    say "rabbitmq-server: not installed, installing with apt-get ..."
    apt_install rabbitmq-server
    command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server still not on PATH after apt-get install"
fi

# -- 2. RabbitMQ running ---------------------------------------------------------------------
rabbit_up() { timeout 30 rabbitmqctl -q status >/dev/null 2>&1; }

if rabbit_up; then
    say "rabbitmq: running"
else
    say "rabbitmq: not answering, starting it (rabbitmq-server -detached) ..."
    # A failure here (e.g. a node already half-way up) is judged by the wait below.
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    deadline=$((SECONDS + 60))
    until rabbit_up && timeout 30 rabbitmqctl -q await_startup >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "RabbitMQ did not come up within 60 s (see /var/log/rabbitmq/)"
        fi
        sleep 1
    done
    say "rabbitmq: started"
fi

# -- 2b. RabbitMQ management API (`celery amqp-results purge` and `doctor` list queues) -----
MGMT_URL="http://127.0.0.1:15672/api/overview"

# True once the API answers at all (a 401 without credentials is an answer).
mgmt_up() {
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$MGMT_URL" 2>/dev/null)" != "000" ]
    else
        python3 - "$MGMT_URL" <<'PY' >/dev/null 2>&1
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5)
except urllib.error.HTTPError:
    pass  # it answered
PY
    fi
}

if mgmt_up; then
    say "rabbitmq management API: answering"
else
    if ! timeout 30 rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
        say "rabbitmq management API: enabling the rabbitmq_management plugin ..."
        # Enabling a plugin starts it on the running node; the node is not restarted.
        as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null \
            || die "rabbitmq-plugins enable rabbitmq_management failed"
    fi
    deadline=$((SECONDS + 60))
    until mgmt_up; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "the management API did not answer at $MGMT_URL within 60 s"
        fi
        sleep 1
    done
    say "rabbitmq management API: answering at ${MGMT_URL%api/overview}"
fi

# -- 2c. Redis (tests/test_parity.py runs each canvas against redis:// too) -----------------
redis_up() {
    python3 - <<'PY' >/dev/null 2>&1
import socket
with socket.create_connection(("127.0.0.1", 6379), timeout=3) as sock:
    sock.sendall(b"PING\r\n")
    assert sock.recv(16).startswith(b"+PONG")
PY
}

if redis_up; then
    say "redis: running"
else
    if ! command -v redis-server >/dev/null 2>&1; then
        say "redis-server: not installed, installing with apt-get ..."
        apt_install redis-server
    fi
    say "redis: not answering on 127.0.0.1:6379, starting it (redis-server --daemonize yes) ..."
    as_root redis-server --bind 127.0.0.1 --port 6379 --daemonize yes >/dev/null 2>&1 || true
    deadline=$((SECONDS + 30))
    until redis_up; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "Redis did not answer on 127.0.0.1:6379 within 30 s"
        fi
        sleep 1
    done
    say "redis: started"
fi

# -- 3. virtualenv ---------------------------------------------------------------------------
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; }

make_venv() {
    local candidates=() py
    if [ -n "${PYTHON:-}" ]; then
        candidates=("$PYTHON")
    else
        candidates=(python3 python3.13 python3.12 python3.11 python3.10 python3.9 /usr/bin/python3)
    fi
    for py in "${candidates[@]}"; do
        command -v "$py" >/dev/null 2>&1 && py_ok "$py" || continue
        if "$py" -m venv "$VENV" >/dev/null 2>&1; then
            say "venv: created $VENV with $("$VENV/bin/python" -V 2>&1)"
            return 0
        fi
        rm -rf "$VENV"   # a half-made venv (e.g. no ensurepip): try the next interpreter
    done
    if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] && py_ok /usr/bin/python3 \
        && command -v apt-get >/dev/null 2>&1; then
        say "venv: no interpreter could make one, installing python3-venv with apt-get ..."
        apt_install python3-venv
        /usr/bin/python3 -m venv "$VENV" && { say "venv: created $VENV with $("$VENV/bin/python" -V 2>&1)"; return 0; }
    fi
    die "could not create a virtualenv at $VENV: need python3 >= 3.9 with the venv module (set PYTHON=...)"
}

if [ -x "$VENV/bin/python" ] && py_ok "$VENV/bin/python"; then
    say "venv: $VENV ($("$VENV/bin/python" -V 2>&1))"
elif [ -d "$VENV" ] && [ -z "$(ls -A "$VENV")" ]; then
    make_venv   # an empty directory: fill it
elif [ -e "$VENV" ]; then
    # Only ever delete something that is recognisably a virtualenv.
    [ -f "$VENV/pyvenv.cfg" ] || die "$VENV exists but is not a virtualenv; move it away or set VENV=..."
    say "venv: $VENV is broken (its python does not run), recreating ..."
    rm -rf "$VENV"
    make_venv
else
    make_venv
fi

# -- 4. this package and its test tools ------------------------------------------------------
STAMP="$VENV/.installed"

CELERY_SPEC="${CELERY:-}"

# True when the venv has this very checkout installed editable, and pytest, ruff and mypy,
# and the Celery that CELERY asks for.
installed_here() {
    [ -x "$VENV/bin/pytest" ] && [ -x "$VENV/bin/ruff" ] && [ -x "$VENV/bin/mypy" ] || return 1
    [ "$(cat "$STAMP" 2>/dev/null)" = "celery: $CELERY_SPEC" ] || return 1
    "$VENV/bin/python" - "$ROOT" <<'PY' >/dev/null 2>&1
import json, sys
from importlib import metadata
from pathlib import Path
dist = metadata.distribution("celery-amqp-results")
url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
sys.exit(url.rstrip("/") != Path(sys.argv[1]).resolve().as_uri())
PY
}

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$ROOT/scripts/bootstrap.sh" ] \
    && installed_here; then
    say "deps: up to date"
else
    say "deps: installing (pip install -e .[test]) ..."
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    # pip's own warnings (and setuptools') are kept in a log shown only on failure.
    log="$(mktemp "${TMPDIR:-/tmp}/bootstrap-pip.XXXXXX")"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
           && "$VENV/bin/python" -m pip install -q -e ".[test]" ${CELERY_SPEC:+"$CELERY_SPEC"}; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install failed (output above)"
    fi
    rm -f "$log"
    echo "celery: $CELERY_SPEC" >"$STAMP"
    installed_here || die "pip install finished but the package, pytest, ruff or mypy is missing from $VENV"
    say "deps: installed (celery $("$VENV/bin/python" -c 'import celery; print(celery.__version__)'))"
fi
