"""Every exception this package defines survives pickle and Celery's JSON exception form.

A prefork worker pickles an exception raised in its child to send it to the main
process; a failed result stores it as ``{"exc_type", "exc_message", "exc_module"}``
(JSON) and readers rebuild it with ``cls(*exc_message)``.  An exception that cannot
be rebuilt crashed the worker's main process (issue 11, item 1).
"""
from __future__ import annotations

import importlib
import inspect
import json
import pickle
import pkgutil
from typing import Any, Callable, Dict, List, Type

import pytest
from celery import Celery

import celery_amqp_results

#: How to make one instance of each exception class, with every attribute set.
SAMPLES: Dict[str, Callable[[Type[BaseException]], BaseException]] = {
    "celery_amqp_results.errors.BacklogLimitExceeded": lambda cls: cls("too many states"),
    "celery_amqp_results.errors.InvalidTaskIdError": lambda cls: cls("bad id ''"),
    "celery_amqp_results.errors.InvalidResultError": lambda cls: cls(
        "result of task 't1' is not JSON", task_id="t1", queue="q.t1",
        cause=ValueError("x")),
    "celery_amqp_results.errors.UnsafeResultError": lambda cls: cls(
        "result of task 't1' names os.system", task_id="t1", queue="q.t1"),
    "celery_amqp_results.errors.ResultStoreError": lambda cls: cls(
        "the broker refused the SUCCESS state", task_id="t1", state="SUCCESS"),
    "celery_amqp_results.errors.ResultTooLargeError": lambda cls: cls(
        "too large", task_id="t1", state="SUCCESS"),
    "celery_amqp_results.errors.ResultBrokerError": lambda cls: cls(
        "cannot use the result broker at h:5672 vhost 'v' as user 'u': refused",
        retryable=False),
    "celery_amqp_results.store.Unavailable": lambda cls: cls(
        "the node is down", task_id="t1", state="SUCCESS"),
    "celery_amqp_results.management.ManagementError": lambda cls: cls("HTTP 500"),
    "celery_amqp_results.management.NotFoundError": lambda cls: cls("HTTP 404"),
    "celery_amqp_results.management.RefusedError": lambda cls: cls("HTTP 403"),
    "celery_amqp_results.cli.context.Unavailable": lambda cls: cls("broker down"),
    "celery_amqp_results.cli.context.BadInput": lambda cls: cls("backend cannot be loaded"),
    "celery_amqp_results.cli.context.Interrupted": lambda cls: cls(),
    "celery_amqp_results.aio.link.LinkLost": lambda cls: cls("connection lost"),
    "celery_amqp_results.aio.hub.HubClosed": lambda cls: cls("closed"),
}

#: Attributes that hold an exception object: they survive pickle, and Celery's JSON
#: form (which carries only ``args``) cannot hold them.
PICKLE_ONLY = {"cause"}


def defined_exceptions() -> List[Type[BaseException]]:
    """Every exception class whose home is a module of this package."""
    found = {}
    for info in pkgutil.walk_packages(celery_amqp_results.__path__, "celery_amqp_results."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


def attributes(exc: BaseException) -> Dict[str, Any]:
    return {key: (repr(value) if isinstance(value, BaseException) else value)
            for key, value in vars(exc).items() if not key.startswith("_")}


def sample(cls: Type[BaseException]) -> BaseException:
    return SAMPLES[f"{cls.__module__}.{cls.__qualname__}"](cls)


def test_every_exception_class_has_a_sample() -> None:
    """A new exception class must be added to SAMPLES, so the tests below cover it."""
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in defined_exceptions()}
    assert names == set(SAMPLES)


@pytest.mark.parametrize("cls", defined_exceptions(), ids=lambda cls: cls.__qualname__)
def test_survives_pickle(cls: Type[BaseException]) -> None:
    exc = sample(cls)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert attributes(back) == attributes(exc)


@pytest.mark.parametrize("cls", defined_exceptions(), ids=lambda cls: cls.__qualname__)
def test_survives_celerys_json_form(cls: Type[BaseException]) -> None:
    """What a FAILURE result carries with result_serializer='json', rebuilt by a reader."""
    backend = Celery("json-form", set_as_current=False,
                     backend="cache+memory://").backend
    exc = sample(cls)
    stored = json.loads(json.dumps(backend.prepare_exception(exc, "json")))
    back = backend.exception_to_python(stored)
    assert type(back) is cls
    assert str(back) == str(exc)
    expected = {key: value for key, value in attributes(exc).items()
                if key not in PICKLE_ONLY}
    assert {key: value for key, value in attributes(back).items()
            if key not in PICKLE_ONLY} == expected


def test_broker_error_keeps_retryable_both_ways() -> None:
    exc = celery_amqp_results.ResultBrokerError("down", retryable=False)
    assert pickle.loads(pickle.dumps(exc)).retryable is False
    assert celery_amqp_results.ResultBrokerError("down").retryable is True
