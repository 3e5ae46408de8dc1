"""OpenTelemetry spans and metrics (telemetry.py), from a real worker and a real broker.

The scenario with providers set runs in a process of its own (tests/otel_scenario.py):
OpenTelemetry's providers are process-wide, and this process, which sets none, checks
that without them nothing is traced.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from typing import Any, Dict, Iterator, List

import amqp
import pytest
from celery import states

from celery_amqp_results import telemetry
from tests import broker
from tests.conftest import ROOT, make_app, running_worker
from tests.private_node import free_port

pytest.importorskip("opentelemetry.sdk", reason="the [test] extra installs the SDK")


@pytest.fixture(scope="module")
def scenario(url: str, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("otel") / "scenario.json"
    done = subprocess.run([sys.executable, "-m", "tests.otel_scenario", url, str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def spans_named(report: Dict[str, Any], prefix: str) -> List[Dict[str, Any]]:
    return [span for span in report["spans"] if span["name"].startswith(prefix)]


def by_id(report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {span["span_id"]: span for span in report["spans"]}


def points(report: Dict[str, Any], name: str) -> List[Dict[str, Any]]:
    return [row for row in report["metrics"] if row["name"] == name]


def test_a_delay_get_yields_the_workers_store_span_and_the_clients_wait_span(
        scenario: Dict[str, Any]) -> None:
    ids, spans = scenario["ids"], by_id(scenario)
    task_id = ids["task"]
    assert ids["value"] == 5 and ids["reread"] == 5
    client = spans[ids["client_span"]]
    (store,) = [span for span in spans_named(scenario, "store ")
                if span["attributes"]["celery.task_id"] == task_id]
    waits = [span for span in spans_named(scenario, "wait ")
             if span["attributes"].get("celery.task_id") == task_id]
    assert len(waits) == 1
    wait = waits[0]

    # The store is the worker's: a child of the task's run span, which continues the
    # trace the client's apply_async started; the wait is the client's.
    run = spans[store["parent_id"]]
    assert run["name"] == "run/otel.add"
    assert spans[run["parent_id"]]["name"] == "apply_async/otel.add"
    assert spans[run["parent_id"]]["parent_id"] == client["span_id"]
    assert wait["parent_id"] == client["span_id"]
    assert store["trace_id"] == wait["trace_id"] == client["trace_id"]
    # ... and linked to the span that stored the state it returned.
    assert {"trace_id": store["trace_id"], "span_id": store["span_id"]} in wait["links"]

    queue = f"celery-results.task.{task_id}"
    assert store["name"] == "store celery-results.task.{task_id}"
    assert store["kind"] == "PRODUCER" and wait["kind"] == "CLIENT"
    for key, value in {"messaging.system": "rabbitmq", "messaging.operation.name": "store",
                       "messaging.operation.type": "send", "messaging.destination.name": queue,
                       "messaging.destination.template": "celery-results.task.{task_id}",
                       "messaging.message.conversation_id": task_id,
                       "celery.state": states.SUCCESS, "server.address": broker.HOST,
                       "server.port": broker.PORT}.items():
        assert store["attributes"][key] == value, key
    assert store["attributes"]["messaging.message.body.size"] > 0
    attributes = wait["attributes"]
    assert attributes["messaging.operation.type"] == "receive"
    assert attributes["celery.task_ids"] == [task_id]
    assert attributes["celery_amqp_results.wait.outcome"] == "ready"
    assert 0 < attributes["celery_amqp_results.wait.time_to_first_state"] < 30
    assert attributes["celery_amqp_results.wait.timeout"] == 30


def test_group_wait_timeout_forget_and_chord_dispatch_spans(scenario: Dict[str, Any]) -> None:
    ids, spans = scenario["ids"], by_id(scenario)
    assert ids["group"] == [0, 2, 4] and ids["chord"] == 6 and ids["timed_out"]
    group_waits = [span for span in spans_named(scenario, "wait ")
                   if span["attributes"]["celery.task_count"] == 3]
    assert group_waits, "no wait span for the group"
    assert len(group_waits[0]["links"]) == 3  # one per member's store span
    (timed_out,) = [span for span in spans_named(scenario, "wait ")
                    if span["attributes"]["celery_amqp_results.wait.outcome"] == "timeout"
                    and span["attributes"].get("celery.task_id") != ids["aio_missing"]]
    assert timed_out["status"] == "ERROR"
    assert timed_out["attributes"]["error.type"] == "TimeoutError"
    (forget,) = [span for span in spans_named(scenario, "forget ")
                 if span["attributes"]["celery.task_id"] == ids["task"]]
    assert forget["attributes"]["messaging.operation.type"] == "settle"
    (dispatch,) = spans_named(scenario, "dispatch_chord ")
    assert dispatch["name"] == "dispatch_chord celery-results.chord.{group_id}"
    assert dispatch["attributes"]["celery.chord.size"] == 3
    # The body's apply_async is inside the dispatch, in the worker that ran the last part.
    (body,) = spans_named(scenario, "apply_async/otel.total")
    assert body["parent_id"] == dispatch["span_id"]
    assert spans[dispatch["parent_id"]]["name"] == "run/otel.add"


def test_metrics_count_what_happened(scenario: Dict[str, Any]) -> None:
    def total(name: str, **attributes: Any) -> int:
        return sum(row["value"] for row in points(scenario, name)
                   if attributes.items() <= row["attributes"].items())

    # 1 task, a group of 3, a chord of 3 and its body, the asyncio task, the Celery 4
    # topology's: 10 SUCCESS states.
    assert total(telemetry.STATES_STORED, **{"celery.state": "SUCCESS"}) == 10
    assert total(telemetry.CHORD_DISPATCHES) == 1
    assert total(telemetry.WAIT_TIMEOUTS) == 2  # a synchronous and an asyncio one
    assert total(telemetry.QUEUES_DELETED) == 2  # both forgets
    # Every store declares its queue; the chord's log queues are declared too.
    assert total(telemetry.QUEUES_DECLARED) >= 8
    assert total(telemetry.STORE_RETRIES) == 0
    durations = {row["attributes"]["celery_amqp_results.wait.outcome"]: row
                 for row in points(scenario, telemetry.WAIT_DURATION)}
    assert durations["timeout"]["count"] == 2
    assert 0.25 < durations["timeout"]["sum"] < 30
    assert durations["ready"]["count"] >= 3
    units = {row["name"]: row["unit"] for row in scenario["metrics"]}
    assert units[telemetry.WAIT_DURATION] == "s"
    assert units[telemetry.STATES_STORED] == "{state}"


def test_the_asyncio_api_records_its_reads_and_waits(scenario: Dict[str, Any]) -> None:
    ids, spans = scenario["ids"], by_id(scenario)
    task_id = ids["aio_task"]
    assert ids["aio_value"] == 8 and ids["aio_read"] == 8 and ids["aio_timed_out"]
    (store,) = [span for span in spans_named(scenario, "store ")
                if span["attributes"]["celery.task_id"] == task_id]
    origin = {"trace_id": store["trace_id"], "span_id": store["span_id"]}
    of_task = [span for span in scenario["spans"]
               if span["attributes"].get("celery.task_id") == task_id]
    (wait,) = [span for span in of_task if span["name"].startswith("wait ")]
    (read,) = [span for span in of_task if span["name"].startswith("read ")]
    assert wait["attributes"]["celery_amqp_results.wait.outcome"] == "ready"
    assert wait["attributes"]["celery_amqp_results.wait.timeout"] == 30
    assert origin in wait["links"] and origin in read["links"]
    assert read["kind"] == "CLIENT"
    assert read["attributes"]["messaging.destination.name"] == f"celery-results.task.{task_id}"
    # asyncio.run copied the client span's context: both are its children.
    client = spans[ids["client_span"]]
    assert wait["parent_id"] == read["parent_id"] == client["span_id"]
    (missing,) = [span for span in spans_named(scenario, "wait ")
                  if span["attributes"].get("celery.task_id") == ids["aio_missing"]]
    assert missing["attributes"]["celery_amqp_results.wait.outcome"] == "timeout"
    assert missing["status"] == "ERROR"


def test_the_celery4_topology_records_store_read_and_forget(scenario: Dict[str, Any]) -> None:
    task_id = scenario["ids"]["c4_task"]
    assert scenario["ids"]["c4_read"] == 7
    spans = {span["name"].split()[0]: span for span in scenario["spans"]
             if span["attributes"].get("celery.task_id") == task_id}
    assert set(spans) == {"store", "read", "forget"}
    queue = task_id.replace("-", "")  # Celery 4's queue of a task
    for span in spans.values():
        assert span["attributes"]["messaging.destination.name"] == queue
    assert spans["read"]["kind"] == "CLIENT" and spans["read"]["links"] == []


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    conn = amqp.Connection(f"{broker.HOST}:{broker.PORT}", virtual_host=url.rsplit("/", 1)[1])
    conn.connect()
    yield conn.channel()
    conn.close()


def test_without_a_tracer_provider_nothing_is_traced(backend: Any, raw: Any) -> None:
    """This process sets no provider: no span is started, no trace context is stored."""
    assert telemetry.available() and not telemetry.tracing()
    assert backend.telemetry.span("store", "send") is telemetry._NULL
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, 1, states.SUCCESS)
    message = raw.basic_get(f"celery-results.task.{task_id}", no_ack=True)
    assert "traceparent" not in (message.properties.get("application_headers") or {})
    backend.forget(task_id)


def test_without_the_api_installed_everything_works(url: str) -> None:
    """opentelemetry hidden from the import system: store, wait, read, forget."""
    code = f"""
import sys, uuid
sys.modules["opentelemetry"] = None  # import opentelemetry now raises ImportError
from celery import Celery, states
from celery_amqp_results import telemetry
assert not telemetry.available() and not telemetry.tracing()
app = Celery("t", broker={url!r}, backend={url!r}, set_as_current=False)
backend = app.backend
task_id = str(uuid.uuid4())
backend.store_result(task_id, {{"n": 1}}, states.SUCCESS)
assert app.AsyncResult(task_id).get(timeout=10) == {{"n": 1}}
assert backend.get_task_meta(task_id, cache=False)["result"] == {{"n": 1}}
backend.forget(task_id)
assert backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING
backend.close()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_the_prometheus_example_exposes_the_metrics(url: str) -> None:
    """examples/prometheus_metrics.py in a real worker; its /metrics read over HTTP."""
    pytest.importorskip("opentelemetry.exporter.prometheus")
    port = free_port()
    client = make_app(url)
    # A queue of its own: the session's worker consumes the default one in this vhost
    # and does not know the example's task.
    queue = f"prometheus-{uuid.uuid4().hex[:8]}"
    try:
        with running_worker("examples.prometheus_metrics", url, "prometheus.log",
                            "--pool=solo", "-Q", queue, client=client,
                            # Not the session worker's node name: RabbitMQ 4.0 refuses
                            # a second consumer of its exclusive pidbox queue.
                            node_prefix="car-prometheus",
                            env={"CAR_EXAMPLE_URL": url,
                                 "CAR_EXAMPLE_METRICS_PORT": str(port)}):
            results = [client.send_task("examples.prometheus_metrics.add", (i, i),
                                        queue=queue) for i in range(3)]
            assert [result.get(timeout=30) for result in results] == [0, 2, 4]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=10) as answer:
                text = answer.read().decode()
    finally:
        client.backend.close()
    stored = [line for line in text.splitlines()
              if line.startswith("celery_amqp_results_states_stored_total{")]
    assert any('celery_state="SUCCESS"' in line and line.endswith(" 3.0") for line in stored), \
        text[-2000:]
    declared = [line for line in text.splitlines()
                if line.startswith("celery_amqp_results_queues_declared_total")]
    assert declared and float(declared[0].rsplit(" ", 1)[1]) >= 3
