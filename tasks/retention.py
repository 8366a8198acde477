"""Retention: delete old history in small batches that never block a worker.

Each batch is one SELECT of at most ``batch_size`` keys, walking the table's
time index forward from where the last batch stopped (a keyset, so no batch
scans what an earlier one passed), and one DELETE of those keys that repeats
the conditions, in autocommit: its own short transaction. A row reopened
between the two (a requeue) is not deleted. No table lock is taken: on
PostgreSQL a DELETE locks only its rows, which no worker holds (workers
touch open rows, retention finished ones); on SQLite each DELETE is a short
write, and the pause between batches lets a waiting writer in.

Used by ``manage.py prune_history`` and the workers' chore
(tasks/worker/retention.py). Models only: no Redis here.
"""

import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from tasks.conf import mq_settings
from tasks.models import FINAL_STATUSES, PublishedMessage, ReceivedMessage, TaskRecord

# Between two batches: the time a waiting writer (SQLite) needs to get in.
PAUSE_SECONDS = 0.005


@dataclass
class PruneReport:
    """Rows deleted (or, in a dry run, that would be) per model label, and
    whether a table still has rows to prune after a run cut short."""

    deleted: dict = field(default_factory=dict)
    more: bool = False


def cutoff_for(days, now=None):
    return (now or timezone.now()) - timedelta(days=days)


def prunable(cutoff, statuses=FINAL_STATUSES):
    """(label, rows, time field) of each table retention prunes. Receipts before
    publishes: a publish's delete then has fewer receipts to unlink."""
    return [
        ("tasks.TaskRecord", TaskRecord.objects.finished_before(cutoff, statuses), "enqueued_at"),
        ("tasks.ReceivedMessage", ReceivedMessage.objects.filter(received_at__lt=cutoff), "received_at"),
        ("tasks.PublishedMessage", PublishedMessage.objects.filter(published_at__lt=cutoff), "published_at"),
    ]


def prune(cutoff, statuses=FINAL_STATUSES, dry_run=False, batch_size=None, max_batches=None, pause=PAUSE_SECONDS):
    """Delete what ``prunable`` names, ``batch_size`` rows a statement and at
    most ``max_batches`` statements a table (None: until done)."""
    batch_size = batch_size or mq_settings.MQ_PRUNE_BATCH_SIZE
    report = PruneReport()
    for label, rows, time_field in prunable(cutoff, statuses):
        if dry_run:
            report.deleted[label] = rows.count()
            continue
        deleted, more = delete_in_batches(rows, time_field, batch_size, max_batches, pause)
        report.deleted[label] = deleted
        report.more = report.more or more
    return report


def delete_in_batches(rows, time_field, batch_size, max_batches=None, pause=PAUSE_SECONDS):
    """(rows deleted, whether some may be left) deleting ``rows`` oldest first."""
    pk = rows.model._meta.pk.attname
    walk = rows.order_by(time_field, pk)
    cursor, deleted, batches = None, 0, 0
    while max_batches is None or batches < max_batches:
        page = walk if cursor is None else _after(walk, time_field, pk, cursor)
        keys = list(page.values_list(time_field, pk)[:batch_size])
        if not keys:
            return deleted, False
        # The same conditions again: a row changed since the SELECT stays.
        _, per_model = rows.filter(**{f"{pk}__in": [key for _, key in keys]}).delete()
        deleted += per_model.get(rows.model._meta.label, 0)
        batches += 1
        cursor = keys[-1]
        if len(keys) < batch_size:
            return deleted, False
        time.sleep(pause)
    return deleted, True


def _after(walk, time_field, pk, cursor):
    at, key = cursor
    # (time, pk) > cursor, written so that the time index bounds the scan.
    return walk.filter(**{f"{time_field}__gte": at}).exclude(Q(**{time_field: at}) & Q(**{f"{pk}__lte": key}))
