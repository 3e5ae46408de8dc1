"""What tests/test_telemetry.py runs in a process of its own: OpenTelemetry's providers
are process-wide and set once, so the rest of the suite must not see them.

``python -m tests.otel_scenario URL OUT`` sets the SDK's tracer provider (in-memory
span exporter) and meter provider (in-memory reader), instruments Celery with
``opentelemetry-instrumentation-celery``, starts a real worker in this process
(Celery's test worker: a WorkController consuming from the broker at URL, solo pool),
runs tasks, a group, a chord, a timed-out wait, the asyncio API's read and waits and a
forget under one client span (and a store, read and forget of the Celery 4 topology),
and writes every span and metric point to OUT as JSON.
"""
from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any, Dict, List

from celery import Celery, chord, group
from celery.contrib.testing.worker import start_worker
from celery.exceptions import TimeoutError as CeleryTimeoutError
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celery_amqp_results.aio import AsyncResults


def span_row(span: Any) -> Dict[str, Any]:
    context = span.get_span_context()
    return {
        "name": span.name, "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": {key: (list(value) if isinstance(value, tuple) else value)
                       for key, value in (span.attributes or {}).items()},
        "links": [{"trace_id": f"{link.context.trace_id:032x}",
                   "span_id": f"{link.context.span_id:016x}"} for link in span.links],
        "status": span.status.status_code.name,
    }


def metric_rows(reader: InMemoryMetricReader) -> List[Dict[str, Any]]:
    rows = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    rows.append({
                        "name": metric.name, "unit": metric.unit,
                        "attributes": dict(point.attributes or {}),
                        "value": getattr(point, "value", None),
                        "count": getattr(point, "count", None),
                        "sum": getattr(point, "sum", None)})
    return rows


async def asyncio_calls(app: Celery, add: Any) -> Dict[str, Any]:
    """The asyncio API's read, wait and timed-out wait (asyncio.run keeps the client span)."""
    ids: Dict[str, Any] = {"aio_task": add.delay(4, 4).id, "aio_missing": str(uuid.uuid4())}
    async with AsyncResults(app) as results:
        ids["aio_value"] = await results.get(ids["aio_task"], timeout=30)
        ids["aio_read"] = (await results.get_meta(ids["aio_task"]))["result"]
        try:
            await results.wait(ids["aio_missing"], timeout=0.3)
        except CeleryTimeoutError:
            ids["aio_timed_out"] = True
    return ids


def celery4_calls(url: str) -> Dict[str, Any]:
    """A store, a read and a forget with amqp_results_topology = "celery4" (no worker)."""
    app = Celery("otel_celery4", broker=url, backend=url, set_as_current=False)
    app.conf.amqp_results_topology = "celery4"
    task_id = str(uuid.uuid4())
    try:
        app.backend.store_result(task_id, 7, "SUCCESS")
        read = app.backend.get_task_meta(task_id)["result"]
        app.AsyncResult(task_id).forget()
    finally:
        app.backend.close()
    return {"c4_task": task_id, "c4_read": read}


def main(url: str, out: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    CeleryInstrumentor().instrument()

    app = Celery("otel_scenario", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    queue = f"otel-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = queue

    @app.task(name="otel.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="otel.total")
    def total(values: List[int]) -> int:
        return sum(values)

    ids: Dict[str, Any] = {}
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=30):
        tracer = trace.get_tracer("tests.otel_scenario")
        with tracer.start_as_current_span("client") as client:
            ids["client_span"] = f"{client.get_span_context().span_id:016x}"
            result = add.delay(2, 3)
            ids["task"] = result.id
            ids["value"] = result.get(timeout=30)
            ids["reread"] = app.AsyncResult(result.id).result
            ids["group"] = group(add.s(i, i) for i in range(3))().get(timeout=30)
            ids["chord"] = chord([add.s(i, 1) for i in range(3)], total.s())().get(timeout=30)
            try:
                app.AsyncResult(str(uuid.uuid4())).get(timeout=0.3)
            except CeleryTimeoutError:
                ids["timed_out"] = True
            ids.update(asyncio.run(asyncio_calls(app, add)))
            app.AsyncResult(result.id).forget()
            ids.update(celery4_calls(url))
    provider.force_flush()
    report = {"ids": ids, "spans": [span_row(span) for span in exporter.get_finished_spans()],
              "metrics": metric_rows(reader)}
    app.backend.close()
    with open(out, "w") as file:
        json.dump(report, file, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
