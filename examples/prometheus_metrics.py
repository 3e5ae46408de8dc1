"""A Celery worker that exposes this backend's metrics to Prometheus.

    pip install "celery-amqp-results[otel]" opentelemetry-sdk opentelemetry-exporter-prometheus
    CAR_EXAMPLE_URL=amqp://guest:guest@127.0.0.1:5672// \
        celery -A examples.prometheus_metrics worker --pool=solo
    curl -s http://127.0.0.1:9464/metrics | grep celery_amqp_results

The meter provider and the HTTP endpoint are set up when the worker starts
(``worker_init``), in the process that stores results with ``--pool=solo`` or
``--pool=threads``.  With prefork every child is a process of its own: set them up
in ``worker_process_init`` instead, one port per child, or export with OTLP to a
collector.  A web app does the same once at start-up: its waits and reads are counted.
"""
from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

url = os.environ.get("CAR_EXAMPLE_URL", "amqp://guest:guest@127.0.0.1:5672//")
app = Celery("prometheus_metrics", broker=url, backend=url)
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@signals.worker_init.connect
def expose_metrics(**_: Any) -> None:
    """Route the OpenTelemetry metrics API to a Prometheus endpoint."""
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    start_http_server(int(os.environ.get("CAR_EXAMPLE_METRICS_PORT", "9464")),
                      addr="127.0.0.1")
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
