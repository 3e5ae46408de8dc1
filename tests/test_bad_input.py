"""Bad input on the store/read path: a clear error naming task and cause, nothing lost."""
from __future__ import annotations

import threading
import time
import uuid

import amqp
import pytest
from celery import states

from celery_amqp_results import InvalidResultError, InvalidTaskIdError
from tests import broker
from tests.broker import RawBroker
from tests.conftest import make_app


def new_id() -> str:
    return str(uuid.uuid4())


def plant(vhost: str, backend, task_id: str, body: bytes, content_type: str,
          encoding: str = "utf-8") -> str:
    """Put a message into a task's result queue behind the backend's back."""
    queue_name = backend.names.task_queue(task_id)
    with RawBroker(vhost) as raw:
        raw.channel.queue_declare(queue_name, durable=True, auto_delete=False,
                                  arguments=backend.topology.queue_arguments)
        raw.channel.basic_publish(
            amqp.Message(body, content_type=content_type, content_encoding=encoding,
                         correlation_id=task_id, delivery_mode=2),
            exchange="", routing_key=queue_name)
    return queue_name


def assert_still_there(vhost: str, queue_name: str, body: bytes) -> None:
    with RawBroker(vhost) as raw:
        assert raw.message_count(queue_name) == 1
        message = raw.peek(queue_name)
        assert bytes(message.body if isinstance(message.body, bytes)
                     else message.body.encode()) == body


def assert_backend_still_works(app) -> None:
    task_id = new_id()
    app.backend.mark_as_done(task_id, "healthy")
    assert app.backend.get_task_meta(task_id, cache=False)["result"] == "healthy"
    assert app.AsyncResult(task_id).get(timeout=5) == "healthy"


@pytest.mark.parametrize("body,content_type,cause", [
    (b"\x00\xff garbage {", "application/json", "cannot be decoded"),
    (b"not json at all", "application/json", "cannot be decoded"),
    (b'{"status": "SUCCESS"}', "application/json", "lacks the field(s) result"),
    (b'{"result": 1}', "application/json", "lacks the field(s) status"),
    (b'{"status": 5, "result": 1}', "application/json", "invalid status"),
    (b"[1, 2, 3]", "application/json", "not a mapping"),
    (b"\x80\x04K\x01.", "application/x-python-serialize", "result_accept_content"),
    (b"<x/>", "application/xml-unknown", "result_accept_content"),
])
def test_unreadable_result_is_reported_and_kept(app, vhost, body, content_type, cause) -> None:
    task_id = new_id()
    queue_name = plant(vhost, app.backend, task_id, body, content_type)
    with pytest.raises(InvalidResultError) as info:
        app.backend.get_task_meta(task_id)
    message = str(info.value)
    assert task_id in message and cause in message and queue_name in message
    assert info.value.task_id == task_id
    with pytest.raises(InvalidResultError):
        app.AsyncResult(task_id).get(timeout=5)
    assert_still_there(vhost, queue_name, body)
    assert_backend_still_works(app)
    # A good state stored afterwards replaces the bad one.
    app.backend.mark_as_done(task_id, "repaired")
    assert app.backend.get_task_meta(task_id)["result"] == "repaired"


def test_pickle_refused_unless_accepted(url, vhost) -> None:
    rogue = make_app(url, result_serializer="pickle",
                     result_accept_content=["pickle", "json"])
    reader = make_app(url)  # accepts json only (Celery's default)
    try:
        task_id = new_id()
        rogue.backend.mark_as_done(task_id, {"set": {1, 2}})
        assert rogue.backend.get_task_meta(task_id)["result"] == {"set": {1, 2}}
        with pytest.raises(InvalidResultError, match="application/x-python-serialize"):
            reader.backend.get_task_meta(task_id)
        with RawBroker(vhost) as raw:
            assert raw.message_count(reader.backend.names.task_queue(task_id)) == 1
    finally:
        rogue.backend.close()
        reader.backend.close()


def test_bad_pushed_state_fails_the_wait_and_cancels(app, vhost) -> None:
    task_id = new_id()

    def push_garbage() -> None:
        time.sleep(0.4)
        with RawBroker(vhost) as raw:
            raw.channel.basic_publish(
                amqp.Message(b"{{{", content_type="application/json",
                             correlation_id=task_id),
                exchange=app.backend.exchange.name, routing_key=task_id)

    threading.Thread(target=push_garbage, daemon=True).start()
    with pytest.raises(InvalidResultError, match=task_id):
        app.AsyncResult(task_id).get(timeout=10)
    from tests.test_wait import waiter_bindings, waiter_consumers

    assert waiter_consumers(vhost) == [] and waiter_bindings(vhost) == []
    assert_backend_still_works(app)


@pytest.mark.parametrize("bad,cause", [
    ("", "must not be empty"),
    ("x" * 300, "too long"),
    (12345, "must be a string"),
    (b"bytes-id", "must be a string"),
])
def test_bad_task_ids_are_refused_everywhere(app, bad, cause) -> None:
    backend = app.backend
    calls = [
        lambda: backend.store_result(bad, 1, states.SUCCESS),
        lambda: backend.get_task_meta(bad),
        lambda: backend.forget(bad),
        lambda: backend.wait_for(bad, timeout=1),
        lambda: list(backend.get_many([bad], timeout=1)),
    ]
    for call in calls:
        with pytest.raises(InvalidTaskIdError, match=cause):
            call()
    assert_backend_still_works(app)


def test_unserializable_result_names_the_task(app) -> None:
    from kombu.exceptions import EncodeError

    task_id = new_id()
    with pytest.raises(EncodeError, match=f"SUCCESS state of task '{task_id}'.*'json'"):
        app.backend.mark_as_done(task_id, object())
    assert app.backend.get_state(task_id) == states.PENDING  # nothing half-stored
    assert_backend_still_works(app)


def test_oversized_result_is_refused_before_publishing(url, vhost) -> None:
    from celery.exceptions import BackendStoreError
    from kombu.exceptions import EncodeError

    from celery_amqp_results import ResultTooLargeError

    app = make_app(url, amqp_results_max_result_size=1000)
    try:
        task_id = new_id()
        with pytest.raises(ResultTooLargeError) as info:
            app.backend.mark_as_done(task_id, "y" * 5000)
        assert isinstance(info.value, EncodeError)  # what Celery's tracer catches
        assert isinstance(info.value, BackendStoreError)
        assert task_id in str(info.value) and "1000 bytes" in str(info.value)
        with RawBroker(vhost) as raw:
            assert not raw.exists(app.backend.names.task_queue(task_id))
        app.backend.mark_as_done(task_id, "y" * 100)
        assert app.backend.get_task_meta(task_id)["result"] == "y" * 100
    finally:
        app.backend.close()


def test_broker_nack_is_an_error_not_silence(app, vhost, caplog) -> None:
    """A queue that rejects publishes (created behind the backend's back) makes the
    broker nack the state: store_result must raise, never return as if stored."""
    import logging

    from celery_amqp_results import ResultStoreError

    task_id = new_id()
    queue_name = app.backend.names.task_queue(task_id)
    with RawBroker(vhost) as raw:
        raw.channel.queue_declare(queue_name, durable=True, auto_delete=False,
                                  arguments={"x-max-length": 0,
                                             "x-overflow": "reject-publish"})
    with caplog.at_level(logging.ERROR, logger="celery_amqp_results.store"):
        with pytest.raises(ResultStoreError, match=f"refused \\(nack\\).*'{task_id}'"):
            app.backend.mark_as_done(task_id, "refused")
    assert any(queue_name in r.getMessage() for r in caplog.records)  # the clash, logged
    with RawBroker(vhost) as raw:
        raw.channel.queue_delete(queue_name)
    assert_backend_still_works(app)


def test_result_exchange_declared_otherwise_is_a_clear_error() -> None:
    """An exchange of the same name but another type (an older backend, another app):
    stores and waits fail with an error naming result_exchange, not a raw 406."""
    from celery_amqp_results import ResultBrokerError

    vhost = broker.new_vhost()
    try:
        raw = amqp.Connection(f"{broker.HOST}:{broker.PORT}", virtual_host=vhost)
        raw.connect()
        raw.channel().exchange_declare("celeryresults", "topic", durable=False,
                                       auto_delete=False)
        raw.close()
        app = make_app(broker.url_for(vhost))
        try:
            task_id = str(uuid.uuid4())
            with pytest.raises(ResultBrokerError, match="result_exchange") as info:
                app.backend.mark_as_done(task_id, 1)
            assert "'celeryresults'" in str(info.value) and "topic" in str(info.value)
            assert info.value.retryable is False
            with pytest.raises(ResultBrokerError, match="result_exchange_type"):
                app.AsyncResult(str(uuid.uuid4())).get(timeout=2)
            # The state itself was stored before the announcement failed: readable.
            assert app.backend.get_task_meta(task_id, cache=False)["result"] == 1
        finally:
            app.backend.close()
    finally:
        broker.delete_vhost(vhost)
