"""The Celery 4 compatible topology (``amqp_results_topology = "celery4"``).

For rolling migrations from a Celery 4 fleet that used ``result_backend = "amqp://"``:
states are stored exactly where and how Celery 4.4's ``celery.backends.amqp`` stored
them (one auto-delete queue per task, named after the task id without dashes, bound
to ``result_exchange``), so Celery 4.4 processes and ours read each other's results.
docs/migrating-from-celery4.md says what changes and when.

* ``topology``: the Celery 4.4 wire format (names, arguments, properties, body), pure;
* ``store``: confirmed stores and forget in that format;
* ``read``: the newest state, fast-forwarding through older ones as Celery 4 did;
* ``wait``: pushed waits on a queue of the waiting thread's own, bound to the exchange;
* ``backend``: the ``AMQPBackend`` subclass that ties them together.
"""
