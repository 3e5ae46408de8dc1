#!/usr/bin/env bash
# Build the release as a user gets it and check it: `python -m build` (sdist + wheel)
# into DIST (default: a temporary folder), `twine check --strict`, the wheel's metadata
# against the package (version, Python and Celery range, classifiers), then on each
# supported end (Python 3.9 and 3.13) a fresh venv with the wheel installed (not the
# checkout) runs the demo from outside the repository against the machine's RabbitMQ,
# in a vhost of its own.  The sdist must build a wheel too.  Run by scripts/test.sh;
# needs .venv with the [test] extra (bootstrap.sh).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

say() { echo "release: $*"; }
work="$(mktemp -d /tmp/car-release.XXXXXX)"
dist="${DIST:-$work/dist}"
vhost="car-release-$(date +%s)-$$"
cleanup() {
    rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say "python -m build --outdir $dist"
"$VENV/bin/python" -m build --outdir "$dist" "$ROOT" >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2; exit 1; }
wheel="$(ls "$dist"/celery_amqp_results-*-py3-none-any.whl)"
sdist="$(ls "$dist"/celery_amqp_results-*.tar.gz)"
say "built $(basename "$wheel") and $(basename "$sdist")"

say "twine check --strict"
"$VENV/bin/python" -m twine --no-color check --strict "$wheel" "$sdist"

say "wheel metadata"
"$VENV/bin/python" "$ROOT/scripts/check_metadata.py" "$wheel"

say "the sdist builds a wheel"
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$work/from-sdist" "$sdist" >"$work/sdist.log" 2>&1 || {
    tail -40 "$work/sdist.log" >&2; exit 1; }

mkdir "$work/run"
cp -r "$ROOT/demo" "$work/run/demo"
for pyver in 3.9 3.13; do
    py="$(python_for "$pyver")"
    venv="$work/venv-$pyver"
    say "Python $pyver: fresh venv, pip install $(basename "$wheel")"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel" >"$work/pip-$pyver.log" 2>&1 || {
        tail -40 "$work/pip-$pyver.log" >&2; exit 1; }
    # From outside the checkout: the package can only come from the installed wheel.
    ( cd "$work/run"
      "$venv/bin/python" -c 'import celery_amqp_results as p, sys; assert "site-packages" in p.__file__, p.__file__; print("release: installed", p.__version__, "at", p.__file__)'
      DEMO_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" "$venv/bin/python" demo/run_demo.py >"$work/demo-$pyver.log" 2>&1 || {
          cat "$work/demo-$pyver.log" >&2; exit 1; }
      say "Python $pyver: demo passed ($(grep -c . "$work/demo-$pyver.log") lines of output)" )
done
say "passed"
