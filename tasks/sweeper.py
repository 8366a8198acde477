"""The outbox sweeper: the database row, not Redis, is the source of truth.

A task row that is still open but whose id Redis no longer holds anywhere
(Redis restarted empty, or the push after commit failed) is pushed again.
Rows younger than the grace period are left alone: their push may still be
on its way. A finished row is never resent, and a resent task whose row
finished meanwhile is skipped by the worker's claim.
"""

import logging
from datetime import timedelta

from django.utils import timezone

from . import keys
from .envelope import Envelope
from .models import OPEN_STATUSES, TaskRecord

logger = logging.getLogger(__name__)


def sweep(queue, grace_seconds, lock_seconds, limit=1000, now=None):
    """Resend lost tasks of one queue; returns how many. One sweeper at a time."""
    if not queue.client.set(keys.sweep_lock(queue.key), "1", nx=True, px=int(lock_seconds * 1000)):
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=grace_seconds)
    rows = list(
        TaskRecord.objects.filter(queue=queue.name, status__in=OPEN_STATUSES, enqueued_at__lt=cutoff)
        .exclude(run_after__gt=now)
        .order_by("enqueued_at")
        .values("id", "task_path", "args", "kwargs", "enqueued_at", "attempts")[:limit]
    )
    known = queue.known_ids([row["id"] for row in rows])
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
        for row in rows
        if row["id"] not in known
    ]
    if lost:
        queue.push(lost)
        logger.warning("event=sweep queue=%s resent=%d first_id=%s", queue.name, len(lost), lost[0].id)
    return len(lost)
