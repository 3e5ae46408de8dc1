"""A prefork worker whose result broker refuses it, then accepts it again (issue 11, item 1).

The task broker is the shared node; the result backend is a private node
(tests/private_node.py) whose user's password is changed under the worker with
``rabbitmqctl change_password``.  Before the fix the pool could not unpickle the
backend's ResultBrokerError, the worker's main process died ("Unrecoverable error:
TypeError"), and even once it could, each task logged two tracebacks and the main
process tried to store a FAILURE on the broker that had just refused it.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterator

import pytest
from celery import Celery, states

from tests.conftest import running_worker, worker_log
from tests.private_node import HOST, PrivateNode

USER, PASSWORD = "car-worker", "R1ght-pw-for-worker"


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateNode]:
    private = PrivateNode()
    try:
        private.start()
        private.ctl("add_user", USER, PASSWORD)
        private.ctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
        yield private
    finally:
        private.destroy()


def wait_for_log(log: Path, pattern: str, count: int, timeout: float = 60) -> str:
    """The worker log once ``pattern`` occurs ``count`` times (a deadline for a hung worker)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if len(re.findall(pattern, text)) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_worker_survives_a_refusing_result_broker_and_recovers(node, url) -> None:
    backend_url = f"amqp://{USER}:{PASSWORD}@{HOST}:{node.port}//"
    os.environ["CAR_TEST_BACKEND_URL"] = backend_url
    log = worker_log("worker-faults.log")
    node.ctl("change_password", USER, "not-the-password-any-more")
    try:
        with running_worker("tests.fault_tasks_app", url, "worker-faults.log",
                            "--pool=prefork", "--concurrency=2",
                            node_prefix="car-faults") as app:
            add = app.tasks["tests.fault_tasks_app.add"]
            refused = [add.delay(i, i) for i in range(3)]
            text = wait_for_log(log, r"was not stored", len(refused))
            errors = [line for line in text.splitlines() if "was not stored" in line]
            assert len(errors) == len(refused), text[-3000:]
            for line in errors:
                assert "ERROR" in line
                assert f"{HOST}:{node.port}" in line and "vhost '/'" in line
                assert f"user {USER!r}" in line
                assert PASSWORD not in line
            assert {r.id for r in refused} == {
                re.search(r"\[([0-9a-f-]{36})\]", line).group(1) for line in errors}
            assert "Traceback" not in text and "CRITICAL" not in text, text[-3000:]
            assert "Unrecoverable" not in text

            node.ctl("change_password", USER, PASSWORD)
            # The worker keeps consuming and stores again without a restart.
            later = [add.delay(i, 100) for i in range(4)]
            assert [r.get(timeout=60) for r in later] == [100, 101, 102, 103]

            reader = Celery("reader", broker=url, backend=backend_url, set_as_current=False)
            try:
                # Nothing was marked for the tasks whose results could not be stored.
                for result in refused:
                    meta = reader.backend.get_task_meta(result.id, cache=False)
                    assert meta["status"] == states.PENDING, meta
            finally:
                reader.backend.close()
    finally:
        os.environ.pop("CAR_TEST_BACKEND_URL", None)
        node.ctl("change_password", USER, PASSWORD)


