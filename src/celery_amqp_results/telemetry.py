"""OpenTelemetry spans and metrics of stores, reads and waits (the ``[otel]`` extra).

Only ``opentelemetry-api`` is used; the application brings the SDK and sets the
providers.  Without the API installed, or before a tracer provider is set, no span
is started: an operation pays one check.  Metrics go through the API's global meter,
which records nothing until a meter provider is set.  Names, units and attributes
are documented in docs/observability.md; span attributes follow OpenTelemetry's
messaging semantic conventions (``messaging.*``) where they apply.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, ContextManager, Dict, Iterable, List, Mapping, Optional

from celery.exceptions import TimeoutError as CeleryTimeoutError

from ._version import __version__
from .naming import Names

try:
    import opentelemetry.metrics as otel_metrics
    import opentelemetry.propagate as otel_propagate
    import opentelemetry.trace as otel_trace
except ImportError:  # the [otel] extra is not installed: nothing to report to
    otel_metrics = otel_propagate = otel_trace = None  # type: ignore[assignment]

#: The instrumentation scope: the tracer's and the meter's name.
SCOPE = "celery_amqp_results"

#: ``messaging.system`` of every span.
SYSTEM = "rabbitmq"

#: At most this many task ids are put in a wait span's ``celery.task_ids`` (a
#: group of 5000 would make a span of 200 KB); ``celery.task_count`` has them all.
MAX_IDS_IN_SPAN = 100

#: Metric names, each with its unit and what it counts (docs/observability.md).
STATES_STORED = "celery_amqp_results.states.stored"
STORE_RETRIES = "celery_amqp_results.broker.retries"
WAIT_DURATION = "celery_amqp_results.wait.duration"
WAIT_TIMEOUTS = "celery_amqp_results.wait.timeouts"
QUEUES_DECLARED = "celery_amqp_results.queues.declared"
QUEUES_DELETED = "celery_amqp_results.queues.deleted"
CHORD_DISPATCHES = "celery_amqp_results.chord.dispatches"

#: The unsettled outcomes of a wait, as ``celery_amqp_results.wait.outcome`` says them.
READY, TIMEOUT, ERROR, CLOSED = "ready", "timeout", "error", "closed"

_NULL: ContextManager[None] = contextlib.nullcontext()


def available() -> bool:
    """True when ``opentelemetry-api`` is importable."""
    return otel_trace is not None


#: (provider, its tracer): get_tracer makes a new tracer on every call.
_tracer_of: List[Any] = [None, None]


def tracer() -> Any:
    """The tracer spans are started with, or None when nothing would record them (the
    API is missing, or the application has set no tracer provider)."""
    if otel_trace is None:
        return None
    provider = otel_trace.get_tracer_provider()
    if provider is _tracer_of[0]:
        return _tracer_of[1]
    if isinstance(provider, (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider)):
        return None
    _tracer_of[:] = [provider, provider.get_tracer(SCOPE, __version__)]
    return _tracer_of[1]


def tracing() -> bool:
    """True when spans would be recorded: the API is there and a provider is set."""
    return tracer() is not None


class Instruments:
    """The metric instruments, created once through the global meter (a proxy until
    the application sets a meter provider, then forwarding to it)."""

    def __init__(self) -> None:
        meter = otel_metrics.get_meter(SCOPE, __version__)
        self.states_stored = meter.create_counter(
            STATES_STORED, unit="{state}", description="Task and group states stored")
        self.retries = meter.create_counter(
            STORE_RETRIES, unit="{retry}",
            description="Broker operations retried after a connection error or a nack")
        self.wait_duration = meter.create_histogram(
            WAIT_DURATION, unit="s", description="Time a process waited for results")
        self.wait_timeouts = meter.create_counter(
            WAIT_TIMEOUTS, unit="{wait}", description="Waits that reached their deadline")
        self.queues_declared = meter.create_counter(
            QUEUES_DECLARED, unit="{queue}",
            description="Result queue declarations sent (a store declares its queue)")
        self.queues_deleted = meter.create_counter(
            QUEUES_DELETED, unit="{queue}",
            description="Result and group queues deleted (forget, group delete)")
        self.chord_dispatches = meter.create_counter(
            CHORD_DISPATCHES, unit="{chord}",
            description="Chord bodies sent by a chord's last header task")


class Telemetry:
    """What one backend reports: spans about its broker at ``host:port``, and metrics.

    A span is named for its operation and its destination template (``store
    celery-results.task.{task_id}``): a queue name per task is too many span names.
    """

    def __init__(self, host: Optional[str], port: Optional[int], names: Names) -> None:
        self.base: Dict[str, Any] = {"messaging.system": SYSTEM}
        if host:
            self.base["server.address"] = host
        if port:
            self.base["server.port"] = int(port)
        self.templates = {"task": names.task_prefix + "{task_id}",
                          "group": names.group_prefix + "{group_id}",
                          "chord": names.chord_prefix + "{group_id}"}
        self._instruments: Optional[Instruments] = None
        self._lock = threading.Lock()
        #: Per thread: the W3C trace context a decoded state was stored under, by task
        #: id, taken by the read or wait span that asked for it (a span link).
        self._origins = threading.local()

    # -- metrics ---------------------------------------------------------------------------

    @property
    def instruments(self) -> Optional[Instruments]:
        """The instruments, or None without the API."""
        if self._instruments is None and otel_metrics is not None:
            with self._lock:
                if self._instruments is None:
                    self._instruments = Instruments()
        return self._instruments

    def count(self, name: str, amount: int = 1,
              attributes: Optional[Mapping[str, Any]] = None) -> None:
        """Add ``amount`` to the counter ``name`` (an attribute of Instruments)."""
        instruments = self.instruments
        if instruments is not None:
            getattr(instruments, name).add(amount, attributes)

    # -- spans -----------------------------------------------------------------------------

    def span(self, operation: str, kind: str, task_id: Optional[str] = None,
             queue: Optional[str] = None, of: str = "task",
             attributes: Optional[Mapping[str, Any]] = None) -> ContextManager[Any]:
        """A current span for one broker operation, or a null context when not tracing.

        ``kind`` is ``messaging.operation.type``: ``send`` (a producer span) or
        ``receive``/``settle`` (a client span); ``of`` is ``task``, ``group`` or
        ``chord``, whose queue ``queue`` is (``task_id`` is then the group's id).
        """
        started_by = tracer()
        if started_by is None:
            return _NULL
        return started_by.start_as_current_span(
            f"{operation} {self.templates[of]}",
            kind=otel_trace.SpanKind.PRODUCER if kind == "send" else otel_trace.SpanKind.CLIENT,
            attributes=self._attributes(operation, kind, task_id, queue, of, attributes or {}))

    def _attributes(self, operation: str, kind: str, task_id: Optional[str],
                    queue: Optional[str], of: str,
                    extra: Mapping[str, Any]) -> Dict[str, Any]:
        attributes = dict(self.base)
        attributes["messaging.operation.name"] = operation
        attributes["messaging.operation.type"] = kind
        attributes["messaging.destination.template"] = self.templates[of]
        if queue is not None:
            attributes["messaging.destination.name"] = queue
            attributes["messaging.rabbitmq.destination.routing_key"] = queue
        if task_id is not None:
            attributes["messaging.message.conversation_id"] = task_id
            attributes["celery.task_id" if of == "task" else "celery.group_id"] = task_id
        attributes.update((key, value) for key, value in extra.items() if value is not None)
        return attributes

    def wait(self, task_ids: Iterable[str], timeout: Optional[float],
             queue: Optional[str] = None) -> Wait:
        """The record of one wait (a context manager): a span if tracing, the metrics.

        ``queue`` is the result queue of a wait for one task.
        """
        return Wait(self, sorted(task_ids), timeout, queue)

    # -- trace context in stored states ----------------------------------------------------

    def inject(self, headers: Dict[str, Any]) -> None:
        """Put the current trace context (``traceparent``) into a state's headers."""
        if tracing():
            otel_propagate.inject(headers)

    def saw(self, task_id: str, message: Any) -> None:
        """Remember the trace context a decoded state of ``task_id`` was stored under."""
        self.saw_headers(task_id, getattr(message, "properties", {}).get("application_headers"))

    def saw_headers(self, task_id: str, headers: Optional[Mapping[str, Any]]) -> None:
        """As ``saw``, from the message's headers (what aio-pika gives)."""
        if headers and "traceparent" in headers and tracing():
            origins = self._origins.__dict__
            if len(origins) > 1000:  # decoded, never asked for by a span: forget
                origins.clear()
            origins[task_id] = {key: str(headers[key]) for key in ("traceparent",
                                                                     "tracestate")
                                if key in headers}

    def link_origin(self, span: Any, task_id: str) -> None:
        """Link ``span`` to the span that stored the state just decoded for ``task_id``."""
        carrier = self._origins.__dict__.pop(task_id, None)
        if carrier is None or span is None or not hasattr(span, "add_link"):
            return
        context = otel_trace.get_current_span(
            otel_propagate.extract(carrier)).get_span_context()
        if context.is_valid:
            span.add_link(context, {"celery.task_id": task_id})


class Wait:
    """One wait for ``task_ids``: its span and the wait metrics.

    The span is not made current: a wait may be a generator that its caller resumes
    in another context.  As a context manager the outcome is read from how the block
    ends: normally ``ready``, celery's TimeoutError ``timeout``, GeneratorExit
    ``closed`` (the caller stopped iterating), any other exception ``error``.
    """

    def __init__(self, telemetry: Telemetry, task_ids: List[str],
                 timeout: Optional[float], queue: Optional[str]) -> None:
        self.telemetry = telemetry
        self.began = time.monotonic()
        self.first: Optional[float] = None
        self.span: Any = None
        started_by = tracer()
        if started_by is not None:
            extra: Dict[str, Any] = {"celery.task_count": len(task_ids),
                                     "celery.task_ids": task_ids[:MAX_IDS_IN_SPAN]}
            if timeout is not None:
                extra["celery_amqp_results.wait.timeout"] = float(timeout)
            single = task_ids[0] if len(task_ids) == 1 else None
            self.span = started_by.start_span(
                f"wait {telemetry.templates['task']}", kind=otel_trace.SpanKind.CLIENT,
                attributes=telemetry._attributes("wait", "receive", single, queue, "task",
                                                 extra))

    def __enter__(self) -> Wait:
        return self

    def __exit__(self, kind: Any, error: Optional[BaseException], _: Any) -> None:
        if error is None:
            self.end(READY)
        elif isinstance(error, CeleryTimeoutError):
            self.end(TIMEOUT, error)
        elif isinstance(error, (GeneratorExit, asyncio.CancelledError)):
            # the caller stopped iterating, or cancelled the awaiting task
            self.end(CLOSED)
        else:
            self.end(ERROR, error)

    def state(self, task_id: str) -> None:
        """A state of ``task_id`` arrived."""
        if self.first is None:
            self.first = time.monotonic() - self.began
        if self.span is not None:
            self.telemetry.link_origin(self.span, task_id)

    def end(self, outcome: str, error: Optional[BaseException] = None) -> None:
        """The wait is over: ``ready``, ``timeout``, ``error`` or ``closed`` (abandoned)."""
        took = time.monotonic() - self.began
        instruments = self.telemetry.instruments
        if instruments is not None:
            attributes = {"celery_amqp_results.wait.outcome": outcome}
            instruments.wait_duration.record(took, attributes)
            if outcome == TIMEOUT:
                instruments.wait_timeouts.add(1)
        span = self.span
        if span is None:
            return
        span.set_attribute("celery_amqp_results.wait.outcome", outcome)
        if self.first is not None:
            span.set_attribute("celery_amqp_results.wait.time_to_first_state", self.first)
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, str(error)))
        span.end()
