"""A wrong password, vhost or port: an error naming host and vhost, never the password."""
from __future__ import annotations

import logging
import uuid

import pytest
from celery import Celery

from celery_amqp_results import ResultBrokerError
from tests.broker import HOST, OPERATIONS, PORT, fail_fast

SECRET = "Sup3rSecretPw"


def app_for(url: str) -> Celery:
    return fail_fast(Celery("bad", broker=url, backend=url, set_as_current=False))


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("case,url,named,retryable", [
    ("wrong password", f"amqp://guest:{SECRET}@{HOST}:{PORT}//", "ACCESS_REFUSED", False),
    # The login must succeed for the vhost to be checked: the real password here.
    ("unknown vhost", f"amqp://guest:guest@{HOST}:{PORT}/no-such-vhost-{uuid.uuid4().hex}",
     "NOT_ALLOWED", False),
    ("nothing listening", f"amqp://guest:{SECRET}@{HOST}:1//", "refused", True),
], ids=["wrong password", "unknown vhost", "nothing listening"])  # stable: the URL has a uuid
def test_broker_errors_name_host_and_vhost(caplog, operation, case, url, named,
                                            retryable) -> None:
    app = app_for(url)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ResultBrokerError) as info:
            OPERATIONS[operation](app)
    message = str(info.value)
    assert HOST in message and "vhost" in message and named in message, message
    assert SECRET not in message and SECRET not in repr(info.value)
    assert ":guest@" not in message
    assert info.value.retryable is retryable
    assert app.backend.exception_safe_to_retry(info.value) is retryable
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert SECRET not in logged
    assert SECRET not in app.backend.as_uri()
