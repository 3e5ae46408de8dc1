"""Record docs/transcripts/watch-200-tasks.txt: `celery amqp-results watch` on a 200-task group.

Starts a real worker (tests/tasks_app.py, prefork, 2 processes) on a fresh vhost
of the local RabbitMQ, sends a saved group of 200 tasks (197 that report a few
PROGRESS states, 3 that fail), and runs `watch` on it twice: once with stdout a
pipe (plain progress lines), once inside tmux (the rich bar), captured as text
every second.  Run from the repo root:  .venv/bin/python docs/transcripts/record_watch.py
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import broker  # noqa: E402

OUT = ROOT / "docs" / "transcripts" / "watch-200-tasks.txt"
SIZE, FAILING = 200, 3


def send_group(tasks: Any) -> str:
    """A saved group of SIZE tasks, FAILING of them (spread out) failing."""
    from celery import group

    members = [tasks.progress.s(4, 0.02) for _ in range(SIZE - FAILING)]
    for n in range(FAILING):
        members.insert((n + 1) * SIZE // (FAILING + 1), tasks.fail.s(f"bad input #{n}"))
    result = group(members).apply_async()
    result.save()
    return result.id


def command(group_id: str) -> List[str]:
    return [".venv/bin/python", "-m", "celery", "-A", "tests.tasks_app", "amqp-results",
            "watch", "--interval", "1", group_id]


def in_tmux(env: dict, group_id: str) -> List[str]:
    """Run watch in a 110x12 tmux window; the distinct screens seen, one per second."""
    session = f"watch-{os.getpid()}"
    line = " ".join(shlex.quote(part) for part in command(group_id))
    shell = (f"cd {shlex.quote(str(ROOT))} && {line}; echo \"[exit status $?]\"; "
             f"sleep 60")
    exports = [f"{key}={shlex.quote(env[key])}" for key in ("CAR_TEST_URL", "PYTHONPATH")]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "12",
                    "env " + " ".join(exports) + " TERM=xterm-256color sh -c "
                    + shlex.quote(shell)], check=True)
    screens: List[str] = []
    try:
        for _ in range(120):
            time.sleep(1)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True, check=True).stdout
            screen = "\n".join(row.rstrip() for row in screen.rstrip().splitlines())
            if screen.strip() and (not screens or screen != screens[-1]):
                screens.append(screen)
            if "[exit status" in screen:
                break
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    return screens


def main() -> None:
    vhost = broker.new_vhost()
    url = broker.url_for(vhost)
    env = dict(os.environ, CAR_TEST_URL=url, PYTHONPATH=str(ROOT))
    os.environ["CAR_TEST_URL"] = url
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.tasks_app", "worker", "--pool=prefork",
         "--concurrency=2", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        from tests import tasks_app as tasks

        while not tasks.app.control.ping(timeout=0.5):
            if worker.poll() is not None:
                raise SystemExit("the worker exited")
        shown = " ".join(command("<group id>")).replace(".venv/bin/python -m ", "")
        text = [f"# `{shown}` on a saved group of {SIZE} tasks ({SIZE - FAILING} succeed, "
                f"{FAILING} fail),", "# run by a real prefork worker (2 processes) on RabbitMQ "
                "3.10.8, 2-core machine.", "# Recorded by docs/transcripts/record_watch.py.", ""]

        group_id = send_group(tasks)
        piped = subprocess.run(command(group_id), cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
        text += ["## 1. stdout is a pipe (as in a log or CI): plain progress lines", "",
                 f"$ celery -A tests.tasks_app amqp-results watch --interval 1 {group_id} "
                 f"| cat", piped.stdout.rstrip(), f"[exit status {piped.returncode}]", ""]

        group_id = send_group(tasks)
        screens = in_tmux(env, group_id)
        text += ["## 2. on a terminal (tmux, 110 columns): the rich bar, the screen captured "
                 "as text about", "##    once a second (identical screens left out)", ""]
        for number, screen in enumerate(screens, 1):
            text += [f"--- screen {number} ---", screen, ""]
        OUT.write_text("\n".join(text).rstrip() + "\n")
        print(f"wrote {OUT}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        broker.delete_vhost(vhost)


if __name__ == "__main__":
    main()
