"""Waiting for states pushed by the broker, with one deadline, on one thread's own queue.

Each waiting thread owns one connection and one exclusive queue.  To wait for
some tasks it binds that queue to the notify exchange under their ids, then
peeks their stored queues (a state stored before the binding is found there),
then sleeps in ``drain_events`` until the broker pushes the rest.  On every
exit (ready, timeout, error) it cancels its consumer, unbinds and purges, so
nothing stale is left to answer a later wait.

A task this thread sent while its queue existed needs neither: the queue is named
after the thread's ``reply_to`` (Celery puts the app's thread oid there), and a store
for a request with that ``reply_to`` announces the state to the queue directly too
(store.py).  Every state of such a task is stored after its queue existed, so every
one reaches the queue: the wait only consumes (``pre_arm``, ``_arm``).  Once one of
its states has been taken off the queue, a later wait for that task also peeks once
(it binds nothing: the announcements keep coming to the queue).
"""
from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Type,
)

from amqp.exceptions import PreconditionFailed, ResourceLocked
from celery import states
from celery.exceptions import TimeoutError
from kombu import Connection
from kombu.utils.functional import LRUCache

from .connection import broker_error
from .read import expired, peek
from .store import declare_exchange
from .topology import Topology

logger = logging.getLogger(__name__)

Meta = Dict[str, Any]
#: Decodes a raw message for a task id into its state (raises InvalidResultError).
Decoder = Callable[[str, Any], Meta]

#: Longest single sleep in drain_events, so on_interval runs at least this often.
MAX_NAP = 1.0

#: Milliseconds a direct announcement waits in a thread's queue for a wait to take it
#: (its ``x-message-ttl``): a thread that sends tasks and seldom waits holds at most
#: this much of their states on the broker.
DIRECT_TTL_MS = 60_000

#: Seconds after sending within which a wait may rely on the direct announcements of a
#: task: well inside DIRECT_TTL_MS, so none of its states can have expired unread.
PRE_ARM_SECONDS = DIRECT_TTL_MS / 2000

#: How many tasks sent by one thread are remembered as pre-armed (older ones are
#: waited for by binding and peeking, as tasks sent elsewhere are).
PRE_ARM_CACHE_SIZE = 10_000

#: Seconds a wait relies on direct announcements alone for a pre-armed task, plus
#: DIRECT_GRACE_PER_TASK per pre-armed task in the wait (a join of 1000 tasks takes
#: seconds); then a task that had no state yet is bound and peeked.  The cost of a
#: worker that does not announce directly (an older release) is this much delay, never
#: a lost wake-up.
DIRECT_GRACE = 1.0
DIRECT_GRACE_PER_TASK = 0.005


def drain(connection: Any, deadline: Optional[float], done: Callable[[], bool],
          on_interval: Optional[Callable[[], Any]] = None,
          wait: Optional[Callable[..., Any]] = None,
          now: Callable[[], float] = time.monotonic) -> None:
    """Drain ``connection`` until ``done()`` or the deadline; TimeoutError past it.

    Each nap is cut to the time left, so the deadline holds however many
    intermediate states arrive and however long ``MAX_NAP`` is.
    """
    wait = wait or connection.drain_events
    while not done():
        nap = MAX_NAP
        if deadline is not None:
            left = deadline - now()
            if left <= 0:
                raise TimeoutError("The operation timed out.")
            nap = min(nap, left)
        try:
            wait(timeout=nap)
        except socket.timeout:
            pass
        if on_interval:
            on_interval()


class _Session:
    """One call's view of the waiter: the ids it still waits for and what arrived for them."""

    def __init__(self, task_ids: Set[str], deadline: Optional[float],
                 just_sent: bool = False) -> None:
        self.pending = task_ids
        self.deadline = deadline
        #: The one task was sent by this process a moment ago: not worth a first peek.
        self.just_sent = just_sent
        #: (task id, raw message or decoded state, found by a peek rather than pushed)
        self.inbox: Deque[Tuple[str, Any, bool]] = deque()
        #: The connection generation this session's ids were bound and peeked on,
        #: and the ids it counted in ``Waiter._bound`` then.
        self.generation = -1
        self.bound: Set[str] = set()
        #: The ids in the order the caller gave them (a group's: the order it was sent).
        self.order: List[str] = []
        #: Ids a state was pushed for since this session bound them (see ``_arm``).
        self.pushed: Set[str] = set()
        #: Pre-armed ids waited for by consuming only, until ``direct_until``
        #: (time.monotonic()); ``proven``: those known to be announced directly.
        self.direct: Set[str] = set()
        self.proven: Set[str] = set()
        self.direct_until = 0.0


class Waiter:
    """One thread's push channel for results (see the module docstring).

    Waits nest: Celery's ``join_native`` calls ``child.get()`` while it iterates
    ``iter_native``, so each call runs as a session of its own.  Bindings are
    counted per task id, a pushed state goes to every session waiting for it,
    and the consumer is cancelled and the queue purged when the last session ends.
    """

    def __init__(self, connection_factory: Callable[[], Connection], topology: Topology,
                 decode: Decoder, peek_attempts: int, retry_policy: Dict[str, Any],
                 reply_name: Optional[str] = None) -> None:
        self._factory = connection_factory
        self.topology = topology
        self._decode = decode
        self._peek_attempts = peek_attempts
        self._retry_policy = retry_policy
        #: The queue name direct announcements for this thread's tasks go to (None:
        #: none, every wait binds); taken while no other connection holds it.
        self._reply_name = reply_name
        self.queue_name = reply_name or self._random_name()
        #: True while this connection's queue is ``reply_name``.
        self.direct = False
        #: Pre-armed task ids: (generation, when sent, purges then, taken off the queue).
        self._pre_armed = LRUCache(limit=PRE_ARM_CACHE_SIZE)
        #: Purges of this connection's queue so far: one after a pre-arm may have taken
        #: that task's direct announcements.
        self._purges = 0
        self._conn: Optional[Connection] = None
        self._channel: Any = None
        self._peek_channel: Any = None
        self._consumer_tag: Optional[str] = None
        self._errors: Optional[Tuple[Type[BaseException], ...]] = None
        self._sessions: List[_Session] = []
        #: How many sessions wait for each bound task id.
        self._bound: Dict[str, int] = {}
        #: True once a binding may have let messages into the queue since its last purge.
        self._dirty = False
        #: Bumped on every reconnect: sessions armed before must arm again.
        self._generation = 0
        #: Consumers cancelled without waiting whose late deliveries may still come.
        self._cancelled: List[str] = []

    # -- waiting ---------------------------------------------------------------------------

    def states(self, task_ids: Iterable[str], timeout: Optional[float] = None,
               on_interval: Optional[Callable[[], Any]] = None,
               just_sent: bool = False) -> Iterator[Tuple[str, Meta]]:
        """Yield ``(task_id, meta)`` for each state of ``task_ids`` until all are ready.

        Non-ready states are yielded as they arrive after the wait began; a ready
        state found already stored is yielded at once.  ``timeout`` is one deadline
        for the whole wait (``0`` checks once); past it TimeoutError is raised.
        ``just_sent`` (one task, sent by this process a moment ago) skips the peek
        before binding (see ``_arm``); it changes the cost, never the outcome.
        """
        order = list(dict.fromkeys(task_ids))
        for task_id in order:
            self.topology.names.task_queue(task_id)  # InvalidTaskIdError before any I/O
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        session = _Session(set(order), deadline, just_sent)
        session.order = order
        self._sessions.append(session)
        try:
            while session.pending:
                try:
                    if session.generation != self._generation:
                        self._arm(session)
                    while session.inbox and session.pending:
                        arrived, meta = self._take(session)
                        if arrived is None:
                            continue
                        if meta["status"] in states.READY_STATES:
                            session.pending.discard(arrived)
                        yield arrived, meta
                    if session.pending and session.direct and (
                            deadline is None or session.direct_until < deadline):
                        try:
                            drain(self._conn, session.direct_until,
                                  lambda: bool(session.inbox), on_interval)
                        except TimeoutError:
                            self._fall_back(session)
                    elif session.pending:
                        drain(self._conn, deadline, lambda: bool(session.inbox),
                              on_interval)
                except self._connection_errors() as exc:
                    logger.warning("result waiter lost its connection (%s); reconnecting",
                                   exc)
                    self._reset()
        finally:
            self._sessions.remove(session)
            self._disarm(session)

    def _take(self, session: _Session) -> Tuple[Optional[str], Meta]:
        task_id, raw, peeked = session.inbox.popleft()
        if task_id not in session.pending:
            return None, {}
        meta = raw if isinstance(raw, dict) else self._decode(task_id, raw)
        if peeked and meta["status"] not in states.READY_STATES:
            # A state from before the wait: the pushed ones that follow it are
            # what the caller sees, in order, so this one is left out.
            return None, {}
        return task_id, meta

    # -- broker side -------------------------------------------------------------------------

    def _connection_errors(self) -> Tuple[Type[BaseException], ...]:
        if self._errors is None:
            conn = self._factory()
            # All of them: a quorum queue whose leader just died answers a basic.get
            # with 541 INTERNAL_ERROR, which closes the connection.
            self._errors = (*tuple(conn.recoverable_connection_errors),
                            *tuple(conn.connection_errors), ConnectionError)
        return self._errors

    def _connect(self, deadline: Optional[float]) -> Connection:
        if self._conn is None:
            conn = self._factory()
            policy = dict(self._retry_policy)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.01)
            try:
                conn.ensure_connection(
                    max_retries=policy.get("max_retries"),
                    interval_start=policy.get("interval_start", 0),
                    interval_step=policy.get("interval_step", 1),
                    interval_max=policy.get("interval_max", 1),
                    timeout=timeout)
            except Exception as exc:
                conn.collect()
                error = broker_error(conn, exc)
                if deadline is not None and error.retryable and \
                        time.monotonic() >= deadline - 0.05:
                    # The broker stayed away for the whole wait: that is a timeout.
                    raise TimeoutError(f"The operation timed out: {error}") from exc
                raise error from exc
            channel = conn.channel()
            try:
                self._declare_queue(channel)
            except (ResourceLocked, PreconditionFailed) as exc:
                # Another connection holds the reply name (a forked child's parent, a
                # dying connection of a node that went away): a name of our own, and
                # every wait of this connection binds.
                logger.debug("waiter queue %s taken (%s); waits will bind", self.queue_name, exc)
                channel = conn.channel()
                self.queue_name, self.direct = self._random_name(), False
                self._declare_queue(channel)
            declare_exchange(channel, self.topology)
            self._conn, self._channel = conn, channel
            self._peek_channel = conn.channel()
        return self._conn

    def _random_name(self) -> str:
        return f"{self.topology.names.waiter_prefix}{uuid.uuid4().hex}"

    def _declare_queue(self, channel: Any) -> None:
        """Declare this connection's queue: exclusive, so it goes with the connection;
        not auto-delete, or cancelling the consumer at the end of each wait would delete
        it too.  Direct announcements left unread expire after DIRECT_TTL_MS."""
        channel.queue_declare(queue=self.queue_name, durable=False, exclusive=True,
                              auto_delete=False,
                              arguments={"x-message-ttl": DIRECT_TTL_MS})
        self.direct = self.queue_name == self._reply_name

    def pre_arm(self, task_id: str) -> None:
        """This thread is about to send ``task_id`` with its reply name as ``reply_to``.

        Only while connected: the queue must exist before the task is sent, so that
        every state stored for it is announced into it.
        """
        if self._conn is not None and self.direct:
            self._pre_armed[task_id] = (self._generation, time.monotonic(), self._purges,
                                        False)

    def _direct_for(self, task_id: str) -> Optional[bool]:
        """For a wait on ``task_id``: None if it must bind and peek, else whether it
        must peek (a state of it was taken off the queue already, or may have been
        purged) besides consuming."""
        entry = self._pre_armed.get(task_id)
        if entry is None or not self.direct:
            return None
        generation, sent, purges, taken = entry
        if generation != self._generation or time.monotonic() - sent >= PRE_ARM_SECONDS:
            return None
        return taken or purges != self._purges

    def _arm(self, session: _Session) -> None:
        """Bind, consume, then peek: in that order no state can slip between.

        Pre-armed tasks (``pre_arm``) are waited for by consuming only, for a grace
        (DIRECT_GRACE); one that has had no state by then is bound and peeked like the
        others (``_fall_back``): a worker of an older release announces nothing
        directly, and a wait must not hang on it.

        A wait for one task peeks first: a finished task then costs one round trip
        instead of six, and an unfinished one costs one more peek after binding.
        Not for a task this process has just sent (``delay().get()``): it is almost
        never finished yet, and a peek of a queue no state has created yet costs the
        broker a channel error and a new channel (~1.2 ms of its CPU, measured).
        """
        self._connect(session.deadline)
        first = session.generation == -1
        session.pushed.clear()  # pushes seen on an earlier connection prove nothing now
        session.bound = set()
        session.generation = self._generation
        direct: Dict[str, bool] = {}
        for task_id in session.pending:
            must_peek = self._direct_for(task_id)
            if must_peek is not None:
                direct[task_id] = must_peek
        session.direct_until = time.monotonic() + DIRECT_GRACE + \
            DIRECT_GRACE_PER_TASK * len(direct)
        if session.deadline is not None and session.deadline <= session.direct_until:
            # A wait shorter than the grace (timeout=0 checks once) binds and peeks:
            # it could end before a state already stored were delivered.
            direct = {}
        session.direct = set(direct)
        session.proven = {task_id for task_id, must_peek in direct.items() if must_peek}
        if direct:
            self._consume()
            self._peek_into(session, [task_id for task_id in session.order
                                      if direct.get(task_id)])
        rest = [task_id for task_id in session.order
                if task_id in session.pending and task_id not in direct]
        if not rest:
            return
        if first and len(session.pending) == 1 and not session.just_sent:
            (task_id,) = session.pending
            message = self._peek(task_id)
            if message is not None:
                meta = self._decode(task_id, message)
                if meta["status"] in states.READY_STATES:
                    session.inbox.append((task_id, meta, True))
                    return
        self._bind_and_peek(session, rest)

    def _fall_back(self, session: _Session) -> None:
        """The grace is over: bind and peek the pre-armed tasks that had no state."""
        waiting = [task_id for task_id in session.order
                   if task_id in session.direct and task_id in session.pending
                   and task_id not in session.proven and task_id not in session.pushed]
        session.direct = set()
        if waiting:
            logger.debug("no direct announcement for %d task(s) within the grace; "
                         "binding", len(waiting))
            self._bind_and_peek(session, waiting)

    def _bind_and_peek(self, session: _Session, task_ids: List[str]) -> None:
        """Bind ``task_ids`` (in the caller's order), consume, then peek them."""
        channel = self._channel
        exchange = self.topology.exchange.name
        new = sorted(task_id for task_id in task_ids if task_id not in self._bound)
        for index, task_id in enumerate(new):
            # Pipelined: only the last bind waits; the channel runs them in order.
            channel.queue_bind(queue=self.queue_name, exchange=exchange,
                               routing_key=task_id, nowait=index < len(new) - 1)
        self._dirty = True
        for task_id in task_ids:
            self._bound[task_id] = self._bound.get(task_id, 0) + 1
        session.bound.update(task_ids)
        self._consume()
        # In the caller's order: a group's first tasks are the likeliest to have
        # finished before the binding.  A peek answer is read together with whatever
        # the broker pushed meanwhile (_on_message); an id that had a state pushed
        # needs no peek: that state was stored after the binding (or announced to
        # this queue directly, and so will every newer one be), so every newer one
        # will be pushed too, and what the peek would find is no newer.  On a group
        # just sent, that skips the peeks of the tasks finishing while the others are
        # peeked (a peek of a queue not created yet also costs the broker a channel).
        self._peek_into(session, task_ids)

    def _peek_into(self, session: _Session, task_ids: List[str]) -> None:
        """Peek each of ``task_ids`` still pending and not pushed; found states to the inbox."""
        for task_id in task_ids:
            if task_id not in session.pending or task_id in session.pushed:
                continue
            message = self._peek(task_id)
            if message is not None:
                session.inbox.append((task_id, message, True))

    def _consume(self) -> None:
        """Start this connection's consumer if none runs."""
        if self._consumer_tag is None:
            channel = self._channel
            self._consumer_tag = channel.basic_consume(
                queue=self.queue_name, no_ack=True, callback=self._on_message)
            # Consume-ok came after every delivery to the consumers cancelled before
            # (one channel, in order): their callbacks have nothing left to take.
            for tag in self._cancelled:
                channel.callbacks.pop(tag, None)
            self._cancelled.clear()

    def _peek(self, task_id: str) -> Optional[Any]:
        """The stored state of ``task_id`` (left in its queue), None if none or expired."""
        message = peek(self._peek_channel, self.topology.names.task_queue(task_id),
                       self._peek_attempts)
        return None if message is None or expired(message) else message

    def _on_message(self, message: Any) -> None:
        task_id = message.properties.get("correlation_id") or \
            message.delivery_info.get("routing_key")
        entry = self._pre_armed.get(task_id)
        if entry is not None and not entry[3]:
            # Taken off the queue: a later wait for it must peek to see it.
            self._pre_armed[task_id] = (*entry[:3], True)
        if message.delivery_info.get("consumer_tag") != self._consumer_tag:
            return  # to a consumer cancelled at the end of an earlier wait: stale
        for session in self._sessions:
            if task_id in session.pending:
                session.inbox.append((task_id, message, False))
                session.pushed.add(task_id)

    def _disarm(self, session: _Session) -> None:
        """Drop this session's bindings; with no session left, the consumer and backlog."""
        if self._conn is None or session.generation != self._generation:
            return  # its bindings went with a lost connection
        channel = self._channel
        exchange = self.topology.exchange.name
        try:
            for task_id in sorted(session.bound):
                count = self._bound.get(task_id, 0) - 1
                if count > 0:
                    self._bound[task_id] = count
                    continue
                self._bound.pop(task_id, None)
                channel.queue_unbind(queue=self.queue_name, exchange=exchange,
                                     routing_key=task_id, nowait=True)
            if not self._sessions and self._consumer_tag is not None:
                # Neither waits for its answer: that would add two round trips to the
                # end of every wait.  Deliveries the broker sent before it took the
                # cancel still arrive, tagged with the old consumer: _on_message
                # drops them.  Direct announcements arriving with no wait wait in
                # the queue (x-message-ttl) for the next one.
                channel.basic_cancel(self._consumer_tag, nowait=True)
                self._cancelled.append(self._consumer_tag)
                self._consumer_tag = None
            if not self._sessions and self._dirty:
                # After the unbinds and the cancel (one channel, in order): what
                # bindings let in and was never delivered goes too.
                channel.queue_purge(queue=self.queue_name, nowait=True)
                self._dirty = False
                self._purges += 1  # it may take direct announcements too (_direct_for)
        except Exception as exc:
            # A broken connection takes its exclusive queue and bindings with it.
            logger.debug("result waiter could not clean up (%r); dropping connection", exc)
            self._reset()

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        self._channel = self._peek_channel = None
        self._consumer_tag = None
        self._cancelled.clear()
        self._bound.clear()
        self._dirty = False
        self._generation += 1
        # The exclusive queue of a connection to a node that died is still known to
        # the cluster for a while: a reply name still held then is RESOURCE_LOCKED
        # (_connect takes a random one), a random name is new anyway.
        self.queue_name = self._reply_name or self._random_name()
        self.direct = False
        self._pre_armed.clear()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # pragma: no cover - best effort on a dead socket
                pass

    def close(self) -> None:
        """Close this waiter's connection (its exclusive queue goes with it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass
        self._reset()

    def forget_after_fork(self) -> None:
        """Drop the parent's connection without a word on its socket."""
        self._conn = None
        self._sessions.clear()
        self._reset()
