"""mqsite as a backend of Django's Tasks API.

``enqueue`` writes the history row first; that row is the outbox. Outside a
transaction the envelope is pushed at once, and if Redis refuses it the row
is removed and QueueUnavailable raised, so a failed enqueue leaves nothing;
if Redis does not answer in time (the push may still happen), the row stays
and the sweeper delivers it.
Inside a transaction the push waits for the commit; if Redis is down then,
the committed row is delivered later by the sweeper.
"""

import json
import logging
import secrets
import weakref
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from redis import Redis

from tasks import registry
from redis.exceptions import RedisError

from tasks.compat import BaseTaskBackend, TaskError, TaskResult, TaskResultDoesNotExist, TaskResultStatus
from tasks.conf import mq_settings
from tasks.exceptions import ArgumentsNotStorable, DeliveryUncertain, MessageTooLarge, QueueUnavailable
from tasks.models import TaskRecord
from tasks.queue.connection import get_redis
from tasks.queue.envelope import Envelope, oversized
from tasks.queue.recorder import Recorder
from tasks.queue.reliable import ReliableQueue
from tasks.queue.uniqueness import unique_key
from tasks.signals import listened, task_enqueued
from tasks.storable import MAX_ARGS_DEPTH, nested_deeper, unstorable

logger = logging.getLogger(__name__)

__all__ = ["RedisTaskBackend", "cancel", "purge_dead_letters", "queue_for", "requeue"]


_queues: weakref.WeakKeyDictionary[Redis, dict[tuple[str, str], ReliableQueue]] = weakref.WeakKeyDictionary()


def queue_for(queue_name, client=None):
    """The queue of that name, on ``client`` or the configured server: the
    one place a ReliableQueue is made.

    Cached per client: a ReliableQueue registers (hashes) its scripts, a
    visible cost on every enqueue otherwise.
    """
    client = client or get_redis()
    cached = (queue_name, mq_settings.queue_key(queue_name))
    queues = _queues.setdefault(client, {})
    if cached not in queues:
        queues[cached] = ReliableQueue(client, *cached)
    return queues[cached]


def new_task_id():
    return secrets.token_urlsafe(24)  # 32 characters


def to_json(value):
    """Round-trip through JSON: tuples become lists, anything else JSON cannot
    carry raises TypeError before a row is written."""
    if value is None or type(value) in (str, int, bool):
        return value  # the common no-op result, without a round trip
    return json.loads(json.dumps(value))


class RedisTaskBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True  # honoured within a queue: keys.lane

    def validate_task(self, task):
        super().validate_task(task)
        registry.register(task)

    def enqueue(self, task, args, kwargs):
        if mq_settings.task_is_unique(task.module_path):
            return self.enqueue_unique(task, args, kwargs)[0]
        return self.enqueue_many(task, [(args, kwargs)])[0]

    def enqueue_unique(self, task, args, kwargs, key=None):
        """Enqueue ``task`` unless a copy with the same key is READY, delayed
        or RUNNING: (result, True) for a new task, (the open copy's result,
        False) otherwise. The key is ``key`` (scoped to the task), or the task's
        arguments when None. The database's unique index decides, so this
        holds however many processes enqueue at once.
        """
        [result], created = self._enqueue(task, [(args, kwargs)], key=key, unique=True)
        return result, created

    def enqueue_many(self, task, calls):
        """Enqueue one task with many (args, kwargs) pairs: one INSERT, one push.

        MessageTooLarge, and nothing written, if any of them is over the size
        limit: a worker would dead-letter it unrun. A unique task is enqueued
        one call at a time, each call's result the open copy's when one holds
        its key (the calls before it included).
        """
        if mq_settings.task_is_unique(task.module_path):
            return [self.enqueue_unique(task, args, kwargs)[0] for args, kwargs in calls]
        return self._enqueue(task, calls)[0]

    def _enqueue(self, task, calls, key=None, unique=False):
        """(results, True), or for a unique task whose copy is open
        ([that copy's result], False)."""
        self.validate_task(task)
        now = timezone.now()
        try:
            envelopes = [
                Envelope(
                    id=new_task_id(),
                    task=task.module_path,
                    queue=task.queue_name,
                    args=to_json(args),
                    kwargs=to_json(kwargs),
                    enqueued_at=now.isoformat(),
                    priority=int(task.priority),
                )
                for args, kwargs in calls
            ]
            payloads = [envelope.encode() for envelope in envelopes]  # encoded once, for the check and the push
        except RecursionError:
            raise _too_deep(task) from None
        check_sendable(task, envelopes, payloads)
        recorder = Recorder()
        if unique:
            [envelope] = envelopes
            existing = self._insert_unique(recorder, task, envelope, now, unique_key(task.module_path, envelope.args, envelope.kwargs, key))
            if existing is not None:
                return [existing], False
        else:
            recorder.insert_enqueued(envelopes, self.alias, now, task.run_after)

        # A def, not functools.partial: when a robust on_commit callback fails,
        # Django 5.2 logs func.__qualname__, which a partial lacks, so the log
        # call itself raised AttributeError out of the caller's commit.
        def deliver():
            self._deliver(task.queue_name, envelopes, payloads, task.run_after)

        if recorder.connection.in_atomic_block:
            # robust: a Redis outage at commit time is logged, the rows stay
            # READY, and the sweeper delivers them once Redis is back.
            transaction.on_commit(deliver, using=recorder.using, robust=True)
        else:
            try:
                deliver()
            except DeliveryUncertain as exc:
                # The push may have reached a frozen Redis that will still run
                # it: deleting the row and raising would let a task the caller
                # was told is not queued run anyway. The row stays, as a
                # committed outbox entry, and the sweeper delivers it if the
                # push was lost after all.
                logger.warning("event=enqueue_uncertain task=%s count=%d error=%r", task.module_path, len(envelopes), str(exc))
            except QueueUnavailable:
                recorder.delete([e.id for e in envelopes])
                raise
        results = [envelope_result(task, e, TaskResultStatus.READY, backend=self.alias, enqueued_at=now) for e in envelopes]
        if listened(task_enqueued):
            for result in results:
                task_enqueued.send(type(self), task_result=result)
        return results, True

    def _insert_unique(self, recorder, task, envelope, now, key):
        """None once the row is written; the open copy's result if one holds the key."""
        for _ in range(5):  # the copy may finish between the refused insert and the read
            if recorder.insert_unique(envelope, self.alias, now, task.run_after, key):
                return None
            existing = TaskRecord.objects.using(recorder.using).open_with_key(key)
            if existing is not None:
                return existing.to_task_result(task)
        raise QueueUnavailable(f"a unique copy of {task.module_path} kept appearing and finishing; try again")

    def _deliver(self, queue_name, envelopes, payloads, run_after):
        queue = queue_for(queue_name)
        if run_after is not None and run_after > timezone.now():
            for envelope in envelopes:
                queue.schedule(envelope, run_after.timestamp())
        else:
            queue.push(envelopes, max_length=mq_settings.MQ_QUEUE_MAX_LENGTH, payloads=payloads)

    def get_result(self, result_id):
        try:
            record = TaskRecord.objects.get(id=result_id)
        except (TaskRecord.DoesNotExist, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        task = registry.get(record.task_path)
        if task is None:
            raise TaskResultDoesNotExist(f"{result_id} names no registered task ({record.task_path})")
        return record.to_task_result(task)


def check_sendable(task, envelopes, payloads):
    """Refuse, before anything is written, what a worker would dead-letter
    unrun: MessageTooLarge or ArgumentsNotStorable."""
    limit = mq_settings.MQ_MAX_MESSAGE_BYTES
    for envelope, payload in zip(envelopes, payloads):
        problem = oversized(payload, limit)
        if problem:
            raise MessageTooLarge(f"the message of {task.module_path} is {problem}")
        # Deeper nesting would also exhaust the recursion limit when the
        # caller's TaskResult is built, after the push.
        if nested_deeper(payload, [envelope.args, envelope.kwargs], MAX_ARGS_DEPTH):
            raise _too_deep(task)
    # PostgreSQL refuses NUL and lone surrogates (a DataError the API took
    # for an outage), and a worker would dead-letter them on any database.
    problem = unstorable([[e.args, e.kwargs] for e in envelopes])
    if problem:
        raise ArgumentsNotStorable(f"arguments of {task.module_path} cannot be stored: {problem}")


def _too_deep(task):
    return ArgumentsNotStorable(f"arguments of {task.module_path} are nested deeper than {MAX_ARGS_DEPTH} levels")


def envelope_result(task, envelope, status, *, backend, enqueued_at=None, started_at=None, finished_at=None, worker_ids=(), errors=()):
    """A TaskResult built from what a producer or worker has in hand, without
    reading the history row."""
    return TaskResult(
        task=task,
        id=envelope.id,
        status=status,
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        last_attempted_at=started_at,
        args=envelope.args,
        kwargs=envelope.kwargs,
        backend=backend,
        errors=list(errors),
        worker_ids=list(worker_ids),
    )


def context_result(task, envelope, attempt, worker_id, started_at: datetime):
    """The TaskResult a running task sees through ``context.task_result``."""
    return envelope_result(
        task, envelope, TaskResultStatus.RUNNING, backend=task.backend, started_at=started_at, worker_ids=[worker_id] * attempt
    )


def finished_result(task, envelope, attempt, worker_id, outcome):
    """The TaskResult task_finished carries: ``outcome`` (a recorder Outcome)
    as the Tasks API sees it (only SUCCESSFUL or FAILED)."""
    status = TaskResultStatus.SUCCESSFUL if outcome.status == "SUCCESSFUL" else TaskResultStatus.FAILED
    errors = [TaskError(exception_class_path=outcome.error["exception"], traceback=outcome.error["traceback"])] if outcome.error else []
    result = envelope_result(
        task, envelope, status, backend=task.backend, started_at=outcome.started_at, finished_at=outcome.finished_at,
        worker_ids=[worker_id] * attempt, errors=errors,
    )
    object.__setattr__(result, "_return_value", outcome.result)
    return result


def requeue(record):
    """Run a FAILED or DEAD task again, under the same id (the admin's action).

    The row goes back to READY (see TaskRecordQuerySet.requeue) and its
    envelope onto the queue. Returns False, changing nothing, when the row is
    no longer FAILED/DEAD or names no registered task; raises
    QueueUnavailable, with the row restored, when Redis refuses the push.
    """
    if registry.get(record.task_path) is None:
        return False
    now = timezone.now()
    in_callers_transaction = transaction.get_connection().in_atomic_block
    before = TaskRecord.objects.requeue(record.id, now)
    if before is None:
        return False
    envelope = Envelope(
        id=record.id,
        task=record.task_path,
        queue=record.queue,
        args=record.args,
        kwargs=record.kwargs,
        enqueued_at=now.isoformat(),
        priority=record.priority,
    )

    def push():  # a def, not a partial: see deliver() in enqueue_many
        queue_for(record.queue).push([envelope], max_length=mq_settings.MQ_QUEUE_MAX_LENGTH)

    if in_callers_transaction:
        # As enqueue does: push once the caller commits; the sweeper covers
        # a Redis outage at that moment.
        transaction.on_commit(push, robust=True)
        return True
    try:
        push()
    except QueueUnavailable:
        TaskRecord.objects.undo_requeue(record.id, before)
        raise
    logger.info("event=requeued task_id=%s task=%s queue=%s", record.id, record.task_path, record.queue)
    return True


def cancel(task_id):
    """Cancel a task by id: a READY or delayed one never runs (the worker that
    takes its item drops it), a RUNNING one is asked to stop (see
    TaskRecordQuerySet.cancel). Nothing to do in Redis: the worker's claim
    refuses a finished row. Returns the status the row has now (CANCELLED or
    RUNNING); raises TaskRecord.DoesNotExist, or TaskAlreadyFinished.
    """
    status = TaskRecord.objects.cancel(task_id, timezone.now())
    logger.info("event=cancelled task_id=%s status=%s", task_id, status)
    return status


def purge_dead_letters(queue_names):
    """Empty the dead-letter lists of these queues, in order; history rows
    stay. QueueUnavailable if Redis does not answer: the lists before the
    failing one are purged, the rest are not."""
    for name in queue_names:
        try:
            queue_for(name).purge_dead()
        except RedisError as exc:
            raise QueueUnavailable(f"Redis did not purge the dead letters of queue {name!r}: {exc}") from exc
