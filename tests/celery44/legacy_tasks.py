"""Tasks for a real Celery 4.4 worker with Celery 4's own ``amqp`` result backend.

Run by tests/test_celery4_compat.py under an interpreter that imports Celery 4.4
(CAR_CELERY4_PYTHON), never by this project's Celery 5: it is the other side of
a rolling migration.  CAR_TEST_URL is the broker; results go where Celery 4 put
them (``result_backend = "amqp://"``: the broker's vhost).
"""
import os

from celery import Celery

app = Celery("legacy_tasks", broker=os.environ["CAR_TEST_URL"], backend="amqp://")
app.conf.update(
    task_track_started=True,
    result_extended=True,
    worker_hijack_root_logger=False,
    task_default_queue="celery44-legacy",
)


@app.task(name="legacy.add")
def add(x, y):
    return x + y


@app.task(name="legacy.fail")
def fail(message):
    raise ValueError(message)
