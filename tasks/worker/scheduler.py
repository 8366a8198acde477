"""Fires periodic tasks from inside every worker: no beat process to run.

Every worker, on every host, calls ``fire_due`` about once a second. They
all compute the same ticks and the same task id for each tick
(``Schedule.task_id``), and enqueue it through ``enqueue_once``: the history
row's primary key admits the first insert of an id and refuses every other,
and only the inserter pushes. So a tick fires exactly once however many
workers run, and a worker that dies halfway (before its commit) leaves the
tick to the next one.

The last tick handled is kept per schedule in ScheduleState, with whether
the schedule is paused, so every host agrees on both. It decides which
ticks are due after an outage (``catch_up``), and is moved forward in the
same transaction as the insert.
"""

import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tasks import registry
from tasks.compat import InvalidTaskError
from tasks.conf import mq_settings
from tasks.queue.backend import ArgumentsNotStorable, MessageTooLarge
from tasks.queue.enqueue_once import enqueue_once
from tasks.schedules.models import ScheduleState
from tasks.schedules import valid

logger = logging.getLogger(__name__)


def fire_due(now=None):
    """Enqueue every tick due by ``now`` (default: the clock) that no worker
    fired yet; returns the task ids this call enqueued."""
    now = now or timezone.now()
    schedules = valid()
    if not schedules:
        return []
    states = ScheduleState.objects.ensure(schedules, now)
    fired = []
    for name, schedule in schedules.items():
        state = states[name]
        if not state.paused:
            fired += _fire(schedule, state.last_tick_at or now, now)
    return fired


def due_ticks(schedule, after, now):
    """The ticks to fire, oldest first, and the newest tick due (or None).

    latest: the newest due tick only, however many were missed.
    all: every due tick, capped at MQ_SCHEDULE_CATCH_UP_MAX (the newest).
    none: only ticks at most MQ_SCHEDULE_MISFIRE_GRACE_SECONDS late; older
    ones fell due while no worker ran and are skipped.
    """
    cap = mq_settings.MQ_SCHEDULE_CATCH_UP_MAX
    limit = 1 if schedule.catch_up == "latest" else cap + 1
    due = schedule.ticks_back(now, after, limit)
    if not due:
        return [], None
    newest = due[0]
    if schedule.catch_up == "all" and len(due) > cap:
        logger.warning("event=schedule_catch_up_capped schedule=%s kept=%d", schedule.name, cap)
        due = due[:cap]
    elif schedule.catch_up == "none":
        grace = mq_settings.MQ_SCHEDULE_MISFIRE_GRACE_SECONDS
        due = [tick for tick in due if (now - tick).total_seconds() <= grace]
    return list(reversed(due)), newest


def _fire(schedule, after, now):
    ticks, newest = due_ticks(schedule, after, now)
    if newest is None:
        return []
    task = registry.get(schedule.task)
    if task is None:  # `manage.py check` reports it (mqsite.E101); never a worker's crash
        logger.error("event=schedule_unknown_task schedule=%s task=%s", schedule.name, schedule.task)
        return []
    calls = [(schedule.task_id(tick), schedule.args, schedule.kwargs) for tick in ticks]
    fired = []
    with transaction.atomic():
        if calls:
            try:
                target = task.using(queue_name=schedule.queue) if schedule.queue else task
                fired = enqueue_once(target, calls, now)
            except (InvalidTaskError, MessageTooLarge, ArgumentsNotStorable) as exc:
                # The same tick would fail the same way every second: it is
                # logged and counted as handled.
                logger.error("event=schedule_refused schedule=%s error=%r", schedule.name, str(exc))
        changes = {"last_tick_at": newest}
        if calls:
            changes["last_task_id"] = calls[-1][0]
        # Only forward: a worker with a stale view must not move it back.
        ScheduleState.objects.filter(Q(last_tick_at__lt=newest) | Q(last_tick_at__isnull=True), name=schedule.name).update(
            **changes
        )
    for task_id in fired:
        logger.info("event=schedule_fired schedule=%s task_id=%s task=%s", schedule.name, task_id, schedule.task)
    skipped = _count_skipped(schedule, after, newest, len(ticks))
    if skipped:
        logger.warning("event=schedule_missed schedule=%s catch_up=%s skipped=%s", schedule.name, schedule.catch_up, skipped)
    return fired


def _count_skipped(schedule, after, newest, fired):
    """How many due ticks were left unfired ("<cap>+" past the cap): logged
    so an outage's effect on schedules is visible."""
    if schedule.catch_up == "all" and fired < mq_settings.MQ_SCHEDULE_CATCH_UP_MAX:
        return 0
    cap = mq_settings.MQ_SCHEDULE_CATCH_UP_MAX
    due = len(schedule.ticks_back(newest, after, cap + 1))
    if due > cap:
        return f"{cap}+"
    return due - fired
