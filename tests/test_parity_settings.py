"""Celery 5.7's result_compression and result_failure_expires, beside redis://.

Each behaviour is asserted for this backend and for Celery's Redis backend in the
same test: a state stored by one app is read by another app (and, for this
backend, another process, the command line and the asyncio API).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Iterator

import pytest
from celery import Celery, states
from celery.exceptions import ImproperlyConfigured

from tests import broker
from tests.conftest import ROOT
from tests.test_cli import cli
from tests.test_parity import REDIS_URL

#: Celery 5.7's marker in front of a compressed payload (celery/backends/base.py), written
#: out here so the test checks the format itself, not this package's constant.
COMPRESSED_MAGIC = b"\x00celery-compressed\x00"


def make_app(backend: str, broker_url: str, **conf: Any) -> Celery:
    app = Celery("parity-settings", broker=broker_url, backend=backend, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    return app


@pytest.fixture(params=["amqp", "redis"])
def backend_url(request: Any, url: str) -> Iterator[str]:
    yield url if request.param == "amqp" else REDIS_URL


def redis_has(backend_url: str, feature: str) -> None:
    """Skip the Redis side where its Celery (before 5.7) lacks ``feature``; this backend
    honours both settings on every supported Celery."""
    if backend_url == REDIS_URL:
        from celery.backends.redis import RedisBackend
        if not getattr(RedisBackend, feature, False):
            pytest.skip(f"Celery < 5.7: its Redis backend has no {feature}")


@pytest.fixture
def apps() -> Iterator[list]:
    """Apps a test made, their backends closed after it."""
    made: list = []
    yield made
    for app in made:
        close = getattr(app.backend, "close", None)  # Celery's RedisBackend has none
        if close is not None:
            close()


def raw_stored(app: Celery, task_id: str, vhost: str) -> bytes:
    """The bytes the backend stored for ``task_id`` (the message body, or the Redis value)."""
    backend = app.backend
    if hasattr(backend, "names"):
        with broker.RawBroker(vhost) as raw:
            return bytes(raw.peek(backend.names.task_queue(task_id)).body)
    return bytes(backend.client.get(backend.get_key_for_task(task_id)))


def read_in_another_process(broker_url: str, backend: str, task_id: str) -> dict:
    """The state of ``task_id`` as a fresh process without result_compression reads it."""
    code = ("import json, sys; from celery import Celery; "
            "app = Celery('reader', broker=sys.argv[1], backend=sys.argv[2]); "
            "meta = app.backend.get_task_meta(sys.argv[3]); "
            "print(json.dumps({'status': meta['status'], 'result': meta['result']}))")
    out = subprocess.run([sys.executable, "-c", code, broker_url, backend, task_id],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- result_compression -------------------------------------------------------------------

def test_compressed_results_are_stored_compressed_and_read_everywhere(
        backend_url: str, url: str, vhost: str, apps: list) -> None:
    redis_has(backend_url, "supports_result_compression")
    writer = make_app(backend_url, url, result_compression="gzip")
    plain = make_app(backend_url, url)  # a reader that never had result_compression set
    apps += [writer, plain]
    assert writer.backend.supports_result_compression
    value = {"text": "x" * 5000, "n": 1}
    task_id = str(uuid.uuid4())
    writer.backend.store_result(task_id, value, states.SUCCESS)

    stored = raw_stored(writer, task_id, vhost)
    assert stored.startswith(COMPRESSED_MAGIC + b"application/x-gzip\x00"), stored[:40]
    assert len(stored) < 500  # 5000 x's, compressed
    for reader in (writer, plain):
        meta = reader.backend.get_task_meta(task_id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, value)
    assert read_in_another_process(url, backend_url, task_id) == {
        "status": "SUCCESS", "result": value}


def test_compressed_results_read_by_the_cli_and_asyncio(url: str, vhost: str,
                                                        apps: list) -> None:
    from celery_amqp_results.aio import AsyncResults

    writer = make_app(url, url, result_compression="bzip2")
    apps.append(writer)
    task_id, failed_id = str(uuid.uuid4()), str(uuid.uuid4())
    writer.backend.store_result(task_id, ["compressed", 42], states.SUCCESS)
    writer.backend.mark_as_failure(failed_id, ValueError("boom"))
    assert raw_stored(writer, task_id, vhost).startswith(COMPRESSED_MAGIC + b"application/x-bz2")

    out = cli(writer, "peek", task_id, "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["result"] == ["compressed", 42], out.output

    async def read() -> tuple:
        async with AsyncResults(writer) as results:
            return (await results.get(task_id, timeout=10),
                    (await results.get_meta(failed_id))["status"])

    value, state = asyncio.run(read())
    assert (value, state) == (["compressed", 42], states.FAILURE)
    with pytest.raises(ValueError, match="boom"):
        writer.AsyncResult(failed_id).get(timeout=10)


def test_unknown_compression_is_refused_by_name(backend_url: str, url: str) -> None:
    redis_has(backend_url, "supports_result_compression")
    with pytest.raises((ImproperlyConfigured, ValueError), match="nonesuch"):
        _ = make_app(backend_url, url, result_compression="nonesuch").backend


def test_celery4_topology_refuses_compression_and_failure_expires(url: str) -> None:
    for setting, value in (("result_compression", "gzip"), ("result_failure_expires", 60)):
        app = make_app(url, url, amqp_results_topology="celery4", **{setting: value})
        with pytest.raises(ValueError, match=f"{setting} .*needs the default topology"):
            _ = app.backend


# -- result_failure_expires ------------------------------------------------------------------

def test_failures_expire_after_result_failure_expires(backend_url: str, url: str,
                                                      vhost: str, apps: list) -> None:
    """A failure goes after result_failure_expires (1 s), a success after result_expires
    (60 s); the result queues live 60 s, the longer of the two."""
    redis_has(backend_url, "supports_failure_expires")
    app = make_app(backend_url, url, result_expires=60, result_failure_expires=1)
    apps.append(app)
    assert app.backend.supports_failure_expires
    failed, done = str(uuid.uuid4()), str(uuid.uuid4())
    app.backend.mark_as_failure(failed, ValueError("short-lived"))
    app.backend.mark_as_done(done, "kept")
    time.sleep(1.5)
    assert app.backend.get_task_meta(failed, cache=False)["status"] == states.PENDING
    meta = app.backend.get_task_meta(done, cache=False)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, "kept")
    if backend_url == url:
        names = app.backend.names
        for task_id in (failed, done):
            queue = broker.queue(vhost, names.task_queue(task_id))
            assert queue["arguments"]["x-expires"] == 60_000


def test_a_longer_failure_expiry_is_not_cut_short(backend_url: str, url: str,
                                                  apps: list) -> None:
    """result_expires 1 s, result_failure_expires 60 s: the failure is still there once
    the success has gone (a queue expiring by result_expires would have taken it)."""
    redis_has(backend_url, "supports_failure_expires")
    app = make_app(backend_url, url, result_expires=1, result_failure_expires=60)
    apps.append(app)
    failed, done = str(uuid.uuid4()), str(uuid.uuid4())
    app.backend.mark_as_failure(failed, ValueError("long-lived"))
    app.backend.mark_as_done(done, "short")
    time.sleep(2.5)  # past result_expires, and past a 1 s queue x-expires with no use
    meta = app.backend.get_task_meta(failed, cache=False)
    assert meta["status"] == states.FAILURE and "long-lived" in str(meta["result"])
    assert app.backend.get_task_meta(done, cache=False)["status"] == states.PENDING


def test_without_result_failure_expires_a_failure_lives_like_a_success(
        backend_url: str, url: str, apps: list) -> None:
    app = make_app(backend_url, url, result_expires=1)
    apps.append(app)
    failed = str(uuid.uuid4())
    app.backend.mark_as_failure(failed, ValueError("ordinary"))
    time.sleep(1.5)
    assert app.backend.get_task_meta(failed, cache=False)["status"] == states.PENDING


@pytest.mark.parametrize("bad", ["abc", True, [1]])
def test_bad_result_failure_expires_is_named(url: str, bad: Any) -> None:
    with pytest.raises(ValueError, match="result_failure_expires must be seconds"):
        _ = make_app(url, url, result_failure_expires=bad).backend
