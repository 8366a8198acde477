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
"""

import logging
from datetime import timedelta

from django.utils import timezone

from . import keys
from .envelope import Envelope
from .models import OPEN_STATUSES, TaskRecord, TaskStatus

logger = logging.getLogger(__name__)


def sweep(queue, grace_seconds, lock_seconds, limit=1000, now=None, confirm_seconds=0.0):
    """Resend lost tasks of one queue; returns how many. One sweeper at a time."""
    if not queue.client.set(keys.sweep_lock(queue.key), "1", nx=True, px=int(lock_seconds * 1000)):
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    rows = list(
        TaskRecord.objects.filter(queue=queue.name, status__in=OPEN_STATUSES, enqueued_at__lt=cutoff)
        .exclude(run_after__gt=now)
        .order_by("enqueued_at")
        .values("id", "task_path", "args", "kwargs", "enqueued_at", "attempts", "status", "worker")[:limit]
    )
    known = queue.known_ids([row["id"] for row in rows])
    missing = [row for row in rows if row["id"] not in known]
    running = {row["worker"] for row in missing if row["status"] == TaskStatus.RUNNING}
    busy = queue.live_workers(running)
    missing = [row for row in missing if not (row["status"] == TaskStatus.RUNNING and row["worker"] in busy)]
    missing = _confirmed(queue, missing, now.timestamp(), confirm_seconds, lock_seconds)
    lost = [
        Envelope(
            id=row["id"],
            task=row["task_path"],
            queue=queue.name,
            args=row["args"],
            kwargs=row["kwargs"],
            enqueued_at=row["enqueued_at"].isoformat(),
            attempt=row["attempts"] + 1,
        )
        for row in missing
    ]
    if lost:
        queue.push(lost)
        logger.warning("event=sweep queue=%s resent=%d first_id=%s", queue.name, len(lost), lost[0].id)
    return len(lost)


def _confirmed(queue, missing, now, confirm_seconds, lock_seconds):
    """The rows of ``missing`` that an earlier sweep already found missing at
    least ``confirm_seconds`` ago; the others are remembered for next time."""
    if confirm_seconds <= 0:
        return missing
    key = keys.sweep_suspects(queue.key)
    seen = {k.decode(): float(v) for k, v in queue.client.hgetall(key).items()}
    first_missing = {row["id"]: seen.get(row["id"], now) for row in missing}
    confirmed = [row for row in missing if now - first_missing[row["id"]] >= confirm_seconds]
    waiting = {task_id: since for task_id, since in first_missing.items() if now - since < confirm_seconds}
    if not seen and not waiting:
        return confirmed
    with queue.client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if waiting:
            pipe.hset(key, mapping=waiting)
            # Only hygiene: every sweep rewrites the hash, and a lost hash only delays a resend.
            pipe.pexpire(key, int((confirm_seconds + lock_seconds) * 10_000))
        pipe.execute()
    return confirmed
