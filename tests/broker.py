"""Test helpers that look at the real RabbitMQ with rabbitmqctl (never mocked)."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from typing import Any, Dict, List

HOST = "127.0.0.1"
PORT = 5672


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


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
