"""Test helpers that look at the real RabbitMQ with rabbitmqctl (never mocked).

Which broker the suite runs against is set here alone, from the environment, defaulting
to the machine's shared node (``scripts/rabbitmq4 env`` prints the settings of the
project's RabbitMQ 4.0 node):

* ``CAR_TEST_HOST`` / ``CAR_TEST_PORT``: its AMQP listener [127.0.0.1 / 5672];
* ``CAR_TEST_MANAGEMENT_PORT``: its management API [15672];
* ``CAR_TEST_RABBITMQCTL``: the command that is its ``rabbitmqctl`` [rabbitmqctl];
* ``CAR_TEST_RABBITMQ_ROOT``: a folder with another RabbitMQ installation (a chroot)
  that private nodes start from [none: the machine's own installation];
* ``CAR_TEST_EPMD_PORT``: the epmd that private nodes of that installation use;
* ``CAR_TEST_BROKER_LOG``: the node's log, checked for deprecation warnings at the end.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from typing import Any, Dict, List, Optional

HOST = os.environ.get("CAR_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("CAR_TEST_PORT", "5672"))
MANAGEMENT_PORT = int(os.environ.get("CAR_TEST_MANAGEMENT_PORT", "15672"))
RABBITMQCTL: List[str] = shlex.split(os.environ.get("CAR_TEST_RABBITMQCTL", "rabbitmqctl"))
RABBITMQ_ROOT: Optional[str] = os.environ.get("CAR_TEST_RABBITMQ_ROOT") or None
EPMD_PORT: Optional[int] = (int(os.environ["CAR_TEST_EPMD_PORT"])
                            if os.environ.get("CAR_TEST_EPMD_PORT") else None)
BROKER_LOG: Optional[str] = os.environ.get("CAR_TEST_BROKER_LOG") or None
#: The shared node's URL on vhost ``/`` (the test apps' default).
DEFAULT_URL = f"amqp://guest:guest@{HOST}:{PORT}//"


def rabbitmqctl(*args: str) -> str:
    return subprocess.run([*RABBITMQCTL, *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def management_url(user: str = "guest", password: str = "guest") -> str:
    """The shared node's management API, as ``amqp_results_management_url`` takes it."""
    return f"http://{user}:{password}@{HOST}:{MANAGEMENT_PORT}/"


def broker_version() -> str:
    """The version of the broker the suite runs against (``rabbitmqctl version``)."""
    return rabbitmqctl("version").strip()


def new_vhost() -> str:
    name = f"car-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


def url_for(vhost: str, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@{HOST}:{PORT}/{vhost}"


def queues(vhost: str) -> List[Dict[str, Any]]:
    """Every queue of ``vhost`` with its message and consumer counts and arguments."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages", "consumers",
                      "arguments", "durable", "auto_delete", "--formatter", "json", "-q")
    rows = json.loads(out or "[]")
    for row in rows:
        # rabbitmqctl gives arguments as [[name, type, value], ...]
        if isinstance(row.get("arguments"), list):
            row["arguments"] = {arg[0]: arg[-1] for arg in row["arguments"]}
        # RabbitMQ 4.x records the default type of a queue declared without one as an
        # argument; 3.10 does not.  Both mean the same queue, so both read as 3.10's.
        if row.get("arguments", {}).get("x-queue-type") == "classic":
            del row["arguments"]["x-queue-type"]
    return rows


def queue(vhost: str, name: str) -> Dict[str, Any]:
    for q in queues(vhost):
        if q["name"] == name:
            return q
    raise KeyError(name)


def wait_for_messages(vhost: str, name: str, count: int = 1, timeout: float = 10) -> int:
    """Queue ``name``'s message count once it reaches ``count``, or when ``timeout`` is up
    (rabbitmqctl's count may lag a publish that was just confirmed)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = queue(vhost, name)["messages"]
        if messages >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.05)


def consumers(vhost: str) -> List[Dict[str, Any]]:
    out = rabbitmqctl("list_consumers", "-p", vhost, "queue_name", "channel_pid",
                      "--formatter", "json", "-q")
    return json.loads(out or "[]")


def bindings(vhost: str) -> List[Dict[str, Any]]:
    out = rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name",
                      "routing_key", "--formatter", "json", "-q")
    return json.loads(out or "[]")


class RawBroker:
    """A plain py-amqp connection to a vhost, to look at or tamper with queues directly."""

    def __init__(self, vhost: str) -> None:
        import amqp

        self.conn = amqp.Connection(f"{HOST}:{PORT}", userid="guest", password="guest",
                                    virtual_host=vhost)
        self.conn.connect()
        self.channel = self.conn.channel()

    def peek(self, queue_name: str) -> Any:
        """basic.get + requeue: the message, left in the queue (None if empty)."""
        message = self.channel.basic_get(queue_name, no_ack=False)
        if message is not None:
            self.channel.basic_reject(message.delivery_tag, requeue=True)
        return message

    def exists(self, queue_name: str) -> bool:
        import amqp

        channel = self.conn.channel()
        try:
            channel.queue_declare(queue_name, passive=True)
            return True
        except amqp.exceptions.NotFound:
            return False
        finally:
            if channel.is_open:
                channel.close()

    def message_count(self, queue_name: str) -> int:
        return self.channel.queue_declare(queue_name, passive=True).message_count

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RawBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fail_fast(app: Any) -> Any:
    """``app`` with a retry policy that gives up after one quick retry (failure tests)."""
    app.backend.retry_policy.update(max_retries=1, interval_start=0, interval_step=0.1,
                                    interval_max=0.1)
    return app


#: One call of each kind a backend makes to its broker, by name (failure tests).
OPERATIONS: Dict[str, Any] = {
    "store": lambda app: app.backend.mark_as_done(str(uuid.uuid4()), 1),
    "read": lambda app: app.backend.get_task_meta(str(uuid.uuid4())),
    "wait": lambda app: app.AsyncResult(str(uuid.uuid4())).get(timeout=5),
    "forget": lambda app: app.backend.forget(str(uuid.uuid4())),
}
