"""End-to-end demo: a real worker, three tasks, and results re-read by other processes.

    python demo/run_demo.py          (scripts/demo.sh bootstraps first, then runs this)

1. makes sure the demo vhost exists (rabbitmqctl), with permissions for the URL's user;
2. starts ``celery worker`` (prefork, 2 processes) and waits until it answers ping;
3. sends add(2, 3), crunch(5) and explode("boom"), printing crunch's PROGRESS states
   as they arrive;
4. for each task, runs two separate reader processes that print its state and result;
5. stops the worker.  Exits 0 only if every state and result was the expected one.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo_tasks import URL, add, app, crunch, explode  # noqa: E402

PING_TIMEOUT = 60.0
GET_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def say(line: str) -> None:
    print(line, flush=True)


def rabbitmqctl_path() -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("rabbitmqctl", path=search)


def ensure_vhost(url: str) -> None:
    """Create the URL's vhost and give its user all permissions there (both idempotent)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    user = unquote(parts.username or "guest")
    ctl = rabbitmqctl_path()
    if ctl is None:
        say(f"demo: rabbitmqctl not found; assuming vhost {vhost!r} exists")
        return
    added = subprocess.run([ctl, "-q", "add_vhost", vhost], capture_output=True, text=True,
                           timeout=60)
    if added.returncode != 0 and "already" not in (added.stdout + added.stderr).lower():
        raise SystemExit(f"rabbitmqctl add_vhost {vhost} failed:\n{added.stdout}{added.stderr}")
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
                   check=True, capture_output=True, text=True, timeout=60)
    say(f"demo: vhost {vhost!r} ready (user {user!r})")


def start_worker(log) -> tuple[subprocess.Popen, str]:
    name = f"demo-{os.getpid()}@{socket.gethostname()}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "celery", "-A", "demo_tasks", "worker",
           "--pool=prefork", "--concurrency=2", "--loglevel=WARNING", "-n", name]
    # Own session: Ctrl-C reaches only us, and the whole worker group can be killed.
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, name


def wait_for_ping(proc: subprocess.Popen, name: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < PING_TIMEOUT:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early with status {proc.returncode}")
        replies = app.control.ping(destination=[name], timeout=1.0)
        if any(name in reply for reply in replies):
            return time.monotonic() - started
    raise RuntimeError(f"worker {name} did not answer ping within {PING_TIMEOUT:.0f} s")


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # warm shutdown
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        say(f"demo: worker still running after {STOP_TIMEOUT:.0f} s, killing it")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def show_progress(meta: dict) -> None:
    status, result = meta.get("status"), meta.get("result")
    if status == "PROGRESS" and isinstance(result, dict):
        say(f"crunch(5) .. PROGRESS step {result.get('step')}/{result.get('of')}")
    elif status not in ("SUCCESS", "FAILURE"):
        say(f"crunch(5) .. {status}")


def run_readers(task_id: str, expect: str) -> bool:
    ok = True
    for reader in (1, 2):
        done = subprocess.run(
            [sys.executable, str(HERE / "read_result.py"), task_id,
             "--reader", str(reader), "--expect", expect],
            cwd=HERE, capture_output=True, text=True, timeout=60)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            sys.stdout.write(done.stderr)
            ok = False
    return ok


def main() -> int:
    say(f"demo: broker and result backend {app.backend.as_uri()} "
        f"({type(app.backend).__module__}.{type(app.backend).__name__})")
    ensure_vhost(URL)
    log = tempfile.NamedTemporaryFile("w+", prefix="demo-worker-", suffix=".log", delete=False)
    worker, name = start_worker(log)
    ok = False
    try:
        took = wait_for_ping(worker, name)
        say(f"demo: worker {name} answers ping ({took:.1f} s)")

        r_crunch = crunch.delay(5)
        r_add = add.delay(2, 3)
        r_explode = explode.delay("boom")

        summary = r_crunch.get(on_message=show_progress, propagate=False, timeout=GET_TIMEOUT)
        say(f"crunch(5) -> {r_crunch.state} {summary}")
        total = r_add.get(timeout=GET_TIMEOUT)
        say(f"add(2, 3) -> {r_add.state} {total}")
        error = r_explode.get(propagate=False, timeout=GET_TIMEOUT)
        say(f"explode('boom') -> {r_explode.state} {type(error).__name__}: {error}")

        ok = (summary == {"steps": 5, "sum_of_squares": 55} and total == 5
              and isinstance(error, ValueError) and str(error) == "boom")

        say("demo: re-reading every result from two separate processes each")
        for result, expect in ((r_add, "SUCCESS"), (r_crunch, "SUCCESS"),
                               (r_explode, "FAILURE")):
            ok = run_readers(result.id, expect) and ok
    finally:
        stop_worker(worker)
        app.backend.close()
        log.seek(0)
        worker_output = log.read()
        log.close()
        if not ok and worker_output.strip():
            say(f"demo: worker log ({log.name}):\n{worker_output.rstrip()}")
        os.unlink(log.name)
    say(f"demo: worker stopped; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
