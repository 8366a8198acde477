"""The outbox sweeper: the database row, not Redis, is the source of truth.

A task row that is still open but whose id Redis no longer holds anywhere
(Redis restarted empty, or the push after commit failed) is pushed again.
Rows younger than the grace period are left alone: their push may still be
on its way. A finished row is never resent, and a resent task whose row
finished meanwhile is skipped by the worker's claim.

A RUNNING row is also left alone while the worker that claimed it holds a
live lease: that worker is running it now, whether or not Redis still has
its copy, and a resend would run it a second time at once. Because Redis
that lost its data lost the leases too, a row is resent only once it has
been missing for ``confirm_seconds`` (a lease period): time for every live
worker's heartbeat to announce it again.

Open rows are read a page at a time in (enqueued_at, id) order, from where
the previous sweep stopped (a cursor kept in Redis), and from the oldest
again once the newest is reached. So no backlog, not even one of rows that
are legitimately still in Redis, hides a lost row from the sweeper for
more than a round. A sweep reads one page, and more only while it is within
its time budget: it runs in a worker's loop, between tasks. A page with
rows still waiting for that confirmation is read again by the next sweep.

A lost row whose message no longer fits MQ_MAX_MESSAGE_BYTES (the limit was
lowered since) is not pushed, as no worker would run it: it ends DEAD.
"""

import logging
import time
from datetime import timedelta

from django.utils import timezone

from tasks.conf import mq_settings
from tasks.models import TaskRecord, TaskStatus
from tasks.queue.envelope import Envelope, oversized

logger = logging.getLogger(__name__)

# Redis keeps the cursor and the suspects this many times the lock period:
# only hygiene, as a lost one merely restarts the walk or a wait.
KEEP_FACTOR = 10


def sweep(queue, grace_seconds, lock_seconds, limit=1000, now=None, confirm_seconds=0.0, budget_seconds=0.2):
    """Resend lost tasks of one queue; returns how many. One sweeper at a time.

    Reads pages of ``limit`` rows from where the last sweep stopped: one,
    and then more until ``budget_seconds`` have passed.
    """
    if not queue.try_sweep_lock(lock_seconds):
        return 0
    deadline = time.monotonic() + budget_seconds
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    cursor = start = queue.sweep_cursor()
    resent = 0
    while True:
        rows = TaskRecord.objects.open_page_after(queue.name, cutoff, now, cursor, limit)
        confirmed, waiting = _confirmed(queue, _missing(queue, rows), now.timestamp(), confirm_seconds, lock_seconds)
        resent += _resend(queue, [row["id"] for row in confirmed], now)
        if waiting:
            break  # the cursor stays: the next sweep reads this page again
        if len(rows) < limit:
            cursor = None  # past the newest row: the next sweep starts from the oldest
            break
        cursor = (rows[-1]["enqueued_at"], rows[-1]["id"])
        if time.monotonic() >= deadline:
            break
    if cursor != start:
        queue.save_sweep_cursor(cursor, lock_seconds * KEEP_FACTOR)
    return resent


def _missing(queue, rows):
    """The rows Redis does not hold, but for those a live worker is running."""
    known = queue.known_ids([row["id"] for row in rows])
    missing = [row for row in rows if row["id"] not in known]
    running = {row["worker"] for row in missing if row["status"] == TaskStatus.RUNNING}
    busy = queue.live_workers(running)
    return [row for row in missing if not (row["status"] == TaskStatus.RUNNING and row["worker"] in busy)]


def _resend(queue, ids, now):
    if not ids:
        return 0
    lost = []
    limit = mq_settings.MQ_MAX_MESSAGE_BYTES
    for row in TaskRecord.objects.open_calls(ids):
        envelope = Envelope(
            id=row["id"],
            task=row["task_path"],
            queue=queue.name,
            args=row["args"],
            kwargs=row["kwargs"],
            enqueued_at=row["enqueued_at"].isoformat(),
            attempt=row["attempts"] + 1,
            priority=row["priority"],
        )
        problem = oversized(envelope.encode(), limit)
        if problem:
            TaskRecord.objects.give_up([envelope.id], problem, now)
            logger.warning("event=sweep_oversized queue=%s task_id=%s reason=%r", queue.name, envelope.id, problem)
        else:
            lost.append(envelope)
    if lost:
        queue.push(lost)
        logger.warning("event=sweep queue=%s resent=%d first_id=%s", queue.name, len(lost), lost[0].id)
    return len(lost)


def _confirmed(queue, missing, now, confirm_seconds, lock_seconds):
    """(confirmed, waiting): the rows of ``missing`` that an earlier sweep
    already found missing at least ``confirm_seconds`` ago, and the ids of
    the others, remembered for next time."""
    if confirm_seconds <= 0:
        return missing, {}
    seen = queue.sweep_suspects()
    first_missing = {row["id"]: seen.get(row["id"], now) for row in missing}
    confirmed = [row for row in missing if now - first_missing[row["id"]] >= confirm_seconds]
    waiting = {task_id: since for task_id, since in first_missing.items() if now - since < confirm_seconds}
    if seen or waiting:
        queue.replace_sweep_suspects(waiting, (confirm_seconds + lock_seconds) * KEEP_FACTOR)
    return confirmed, waiting
