"""A Celery 4.4 client with Celery 4's own ``amqp`` result backend, for the tests.

Run under an interpreter that imports Celery 4.4 (CAR_CELERY4_PYTHON).  Prints one
JSON line per task:

    legacy_client.py URL poll ID...   .state, then .get() (answered from the poll)
    legacy_client.py URL get ID...    .get() first, as most code does: it consumes
    legacy_client.py URL send QUEUE   sends compat.add and compat.fail to QUEUE, waits
"""
import json
import sys

from celery import Celery


def client(url):
    return Celery("legacy_client", broker=url, backend="amqp://")


def outcome(result):
    try:
        value = repr(result.get(timeout=20))
    except Exception as exc:
        value = "raised " + repr(exc)
    return {"id": result.id, "state": result.state, "value": value,
            "traceback": result.traceback}


def main(url, command, *args):
    app = client(url)
    if command == "poll":
        for task_id in args:
            state = app.AsyncResult(task_id).state
            print(json.dumps(dict(outcome(app.AsyncResult(task_id)), polled=state)))
    elif command == "get":
        for task_id in args:
            line = outcome(app.AsyncResult(task_id))
            # What a second Celery 4 client sees afterwards.
            line["then"] = client(url).AsyncResult(task_id).state
            print(json.dumps(line))
    elif command == "send":
        (queue,) = args
        print(json.dumps(outcome(app.send_task("compat.add", (20, 22), queue=queue))))
        print(json.dumps(outcome(app.send_task("compat.fail", ("bad",), queue=queue))))
    else:
        raise SystemExit("unknown command " + repr(command))


if __name__ == "__main__":
    main(*sys.argv[1:])
