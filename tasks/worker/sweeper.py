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

import json
import logging
import time
from datetime import datetime, timedelta

from django.utils import timezone

from tasks.queue import keys
from tasks.conf import mq_settings
from tasks.queue.envelope import Envelope, oversized
from tasks.models import OPEN_STATUSES, TaskRecord, TaskStatus

logger = logging.getLogger(__name__)


def sweep(queue, grace_seconds, lock_seconds, limit=1000, now=None, confirm_seconds=0.0, budget_seconds=0.2):
    """Resend lost tasks of one queue; returns how many. One sweeper at a time.

    Reads pages of ``limit`` rows from where the last sweep stopped: one,
    and then more until ``budget_seconds`` have passed.
    """
    if not queue.client.set(keys.sweep_lock(queue.key), "1", nx=True, px=int(lock_seconds * 1000)):
        return 0
    deadline = time.monotonic() + budget_seconds
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    cursor = start = _load_cursor(queue)
    resent = 0
    while True:
        rows = _page(queue.name, cutoff, now, cursor, limit)
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
        _save_cursor(queue, cursor, lock_seconds)
    return resent


def _page(queue_name, cutoff, now, cursor, limit):
    """The next ``limit`` open rows past the grace period after ``cursor``.

    Only what tells a lost row: the full rows are read for the few resent."""
    rows = TaskRecord.objects.filter(queue=queue_name, status__in=OPEN_STATUSES, enqueued_at__lt=cutoff)
    rows = rows.exclude(run_after__gt=now)
    if cursor is not None:
        at, task_id = cursor
        # (enqueued_at, id) > cursor, written so that the index on enqueued_at bounds the scan.
        rows = rows.filter(enqueued_at__gte=at).exclude(enqueued_at=at, id__lte=task_id)
    return list(rows.order_by("enqueued_at", "id").values("id", "enqueued_at", "status", "worker")[:limit])


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
    rows = (
        TaskRecord.objects.filter(id__in=ids, status__in=OPEN_STATUSES)
        .order_by("enqueued_at", "id")
        .values("id", "task_path", "args", "kwargs", "enqueued_at", "attempts", "priority")
    )
    lost = []
    limit = mq_settings.MQ_MAX_MESSAGE_BYTES
    for row in rows:
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
            TaskRecord.objects.filter(id=envelope.id, status__in=OPEN_STATUSES).update(
                status=TaskStatus.DEAD, finished_at=now, error=problem
            )
            logger.warning("event=sweep_oversized queue=%s task_id=%s reason=%r", queue.name, envelope.id, problem)
        else:
            lost.append(envelope)
    if lost:
        queue.push(lost)
        logger.warning("event=sweep queue=%s resent=%d first_id=%s", queue.name, len(lost), lost[0].id)
    return len(lost)


def _load_cursor(queue):
    try:
        at, task_id = json.loads(queue.client.get(keys.sweep_cursor(queue.key)))
        return datetime.fromisoformat(at), task_id
    except (TypeError, ValueError):  # none yet (or lost with Redis's data): from the oldest
        return None


def _save_cursor(queue, cursor, lock_seconds):
    key = keys.sweep_cursor(queue.key)
    if cursor is None:
        queue.client.delete(key)
    else:
        # The expiry is only hygiene: a lost cursor only starts the walk again.
        queue.client.set(key, json.dumps([cursor[0].isoformat(), cursor[1]]), px=int(lock_seconds * 10_000))


def _confirmed(queue, missing, now, confirm_seconds, lock_seconds):
    """(confirmed, waiting): the rows of ``missing`` that an earlier sweep
    already found missing at least ``confirm_seconds`` ago, and the ids of
    the others, remembered for next time."""
    if confirm_seconds <= 0:
        return missing, {}
    key = keys.sweep_suspects(queue.key)
    seen = {k.decode(): float(v) for k, v in queue.client.hgetall(key).items()}
    first_missing = {row["id"]: seen.get(row["id"], now) for row in missing}
    confirmed = [row for row in missing if now - first_missing[row["id"]] >= confirm_seconds]
    waiting = {task_id: since for task_id, since in first_missing.items() if now - since < confirm_seconds}
    if not seen and not waiting:
        return confirmed, waiting
    with queue.client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if waiting:
            pipe.hset(key, mapping=waiting)
            # Only hygiene: every sweep rewrites the hash, and a lost hash only delays a resend.
            pipe.pexpire(key, int((confirm_seconds + lock_seconds) * 10_000))
        pipe.execute()
    return confirmed, waiting
