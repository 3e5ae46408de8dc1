"""Security: no password anywhere it could leak; only real exception classes rebuilt."""
from __future__ import annotations

import json
import logging
import os
import uuid

import amqp
import pytest
from celery import Celery, states

from celery_amqp_results import ResultBrokerError, UnsafeResultError
from tests import broker
from tests.broker import RawBroker


@pytest.fixture(scope="module")
def secret_user(vhost):
    """A RabbitMQ user of its own, with a password that cannot occur by chance."""
    user, password = f"car-sec-{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    broker.rabbitmqctl("add_user", user, password)
    broker.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    yield user, password
    broker.rabbitmqctl("delete_user", user)


def test_password_never_logged_or_shown(vhost, secret_user, caplog) -> None:
    user, password = secret_user
    url = broker.url_for(vhost, user, password)
    app = Celery("sec", broker=url, backend=url, set_as_current=False)
    bad = Celery("sec-bad", broker=url, backend=f"amqp://{user}:{password}@{broker.HOST}:"
                 f"{broker.PORT}/no-such-vhost", set_as_current=False)
    seen = []
    with caplog.at_level(logging.DEBUG):
        task_id = str(uuid.uuid4())
        app.backend.store_result(task_id, {"p": 1}, "PROGRESS")
        app.backend.mark_as_failure(task_id, ValueError("failed"))
        with pytest.raises(ValueError):
            app.AsyncResult(task_id).get(timeout=5)
        with pytest.raises(Exception) as timeout:
            app.AsyncResult(str(uuid.uuid4())).get(timeout=0.2)
        seen.append(timeout.value)
        app.AsyncResult(task_id).forget()
        with pytest.raises(ResultBrokerError) as refused:
            bad.backend.get_task_meta(task_id)
        seen.append(refused.value)
    texts = [r.getMessage() for r in caplog.records]
    texts += [logging.Formatter().formatException(r.exc_info) for r in caplog.records
              if r.exc_info]
    texts += [str(e) for e in seen] + [repr(e) for e in seen]
    texts += [app.backend.as_uri(), bad.backend.as_uri(), repr(app.backend),
              str(app.conf.humanize(with_defaults=False, censored=True))]
    assert user in " ".join(texts), "the check saw none of the output it is meant to scan"
    leaks = [text for text in texts if password in text]
    assert not leaks, leaks
    app.backend.close()
    bad.backend.close()


def test_only_exception_classes_are_rebuilt(app, vhost, tmp_path) -> None:
    """A stored failure naming os.system must not run it (Celery's SecurityError)."""
    task_id = str(uuid.uuid4())
    marker = tmp_path / "pwned"
    body = json.dumps({"status": "FAILURE", "task_id": task_id, "traceback": None,
                       "result": {"exc_type": "system", "exc_module": "os",
                                  "exc_message": [f"touch {marker}"]}})
    queue_name = app.backend.names.task_queue(task_id)
    with RawBroker(vhost) as raw:
        raw.channel.queue_declare(queue_name, durable=True, auto_delete=False,
                                  arguments=app.backend.topology.queue_arguments)
        raw.channel.basic_publish(
            amqp.Message(body, content_type="application/json", content_encoding="utf-8"),
            exchange="", routing_key=queue_name)
    from celery.exceptions import SecurityError

    for read in (lambda: app.backend.get_task_meta(task_id),
                 lambda: app.AsyncResult(task_id).get(timeout=5)):
        with pytest.raises(UnsafeResultError) as info:
            read()
        assert isinstance(info.value, SecurityError)
        assert task_id in str(info.value) and "os.system" in str(info.value)
    assert not os.path.exists(marker)
    with RawBroker(vhost) as raw:
        assert raw.message_count(queue_name) == 1
    ok = str(uuid.uuid4())
    app.backend.mark_as_done(ok, "still fine")
    assert app.AsyncResult(ok).get(timeout=5) == "still fine"
    assert app.backend.get_state(ok) == states.SUCCESS
