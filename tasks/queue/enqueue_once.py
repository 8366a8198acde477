"""Enqueue under ids the caller chose, each at most once, whoever else tries.

The Tasks API's enqueue makes up a fresh id. A schedule's tick needs the
opposite: every worker on every host computes the same id for the same tick,
and the history row's primary key lets exactly one of them in. Only the
inserter pushes, after its transaction commits, the way enqueue_many does:
if Redis is down at that moment the committed READY row is the outbox and
the sweeper delivers it. A refused id pushes nothing.
"""

from django.db import transaction
from django.utils import timezone

from tasks.conf import mq_settings
from tasks.queue.backend import check_sendable, queue_for, to_json
from tasks.queue.envelope import Envelope
from tasks.queue.recorder import Recorder
from tasks.queue.uniqueness import unique_key


def enqueue_once(task, calls, now=None):
    """Rows and pushes for ``calls``, [(task_id, args, kwargs)], of ``task``.

    Returns the ids this call inserted: the others existed already (or, for
    a unique task, an open copy holds the key). Inside
    the caller's transaction when there is one (the push waits for its
    commit), in a transaction of its own otherwise.
    """
    backend = task.get_backend()
    backend.validate_task(task)
    now = now or timezone.now()
    envelopes = [
        Envelope(
            id=task_id,
            task=task.module_path,
            queue=task.queue_name,
            args=to_json(list(args)),
            kwargs=to_json(dict(kwargs)),
            enqueued_at=now.isoformat(),
            priority=int(task.priority),
        )
        for task_id, args, kwargs in calls
    ]
    check_sendable(task, envelopes, [envelope.encode() for envelope in envelopes])
    keys = None
    if mq_settings.task_is_unique(task.module_path):  # no tick while a copy is open
        keys = [unique_key(task.module_path, e.args, e.kwargs) for e in envelopes]
    recorder = Recorder()
    with transaction.atomic(using=recorder.using):
        inserted = set(recorder.insert_enqueued_once(envelopes, backend.alias, now, unique_keys=keys))
        mine = [envelope for envelope in envelopes if envelope.id in inserted]
        if mine:

            def deliver():  # a def, not a partial: see enqueue_many
                queue_for(task.queue_name).push(mine, max_length=mq_settings.MQ_QUEUE_MAX_LENGTH)

            # robust: a Redis outage at commit time is logged and the rows
            # stay READY for the sweeper, as with any enqueue in a transaction.
            transaction.on_commit(deliver, using=recorder.using, robust=True)
    return [envelope.id for envelope in mine]

