"""The workers' retention chore: MQ_HISTORY_RETENTION_DAYS applied on a schedule.

Every worker offers to prune at most once per MQ_PRUNE_INTERVAL_SECONDS;
the one that gets the queue protocol's prune lock (held for an interval)
prunes, so the fleet prunes about once per interval, one worker at a time.
A run deletes at most MQ_PRUNE_MAX_BATCHES batches a table so the worker
is back to its tasks quickly; when that leaves rows behind, the same worker
goes on a second later while its lock lasts.
"""

import logging
from functools import partial

from tasks.conf import mq_settings
from tasks.retention import cutoff_for, prune

logger = logging.getLogger(__name__)

# Between two runs of a backlog: a run takes ~30 ms a batch (1,000,000 rows
# on PostgreSQL), so at most a few tenths of each second go to pruning.
BACKLOG_PAUSE_SECONDS = 1.0


class RetentionChore:
    def __init__(self, queue):
        self.queue = queue  # any of the worker's queues: the lock is global
        self.next_at = 0.0
        self.lock_until = 0.0  # while this worker holds the lock (time.time())

    def maybe_run(self, now, call_db):
        """Prune if it is time and this worker may; the report, or None."""
        days = mq_settings.MQ_HISTORY_RETENTION_DAYS
        if days is None or now < self.next_at:
            return None
        interval = mq_settings.MQ_PRUNE_INTERVAL_SECONDS
        self.next_at = now + interval
        if now >= self.lock_until:
            if not self.queue.try_prune_lock(interval):
                return None
            self.lock_until = now + interval
        # call_db (the worker's database retry) passes positional arguments only.
        report = call_db(partial(prune, max_batches=mq_settings.MQ_PRUNE_MAX_BATCHES), cutoff_for(days))
        if any(report.deleted.values()):
            figures = " ".join(f"{label}={rows}" for label, rows in report.deleted.items())
            logger.info("event=history_pruned days=%s more=%s %s", days, report.more, figures)
        if report.more:
            # The backlog goes on soon, under the same lock, with the worker's
            # tasks run in between.
            self.next_at = now + BACKLOG_PAUSE_SECONDS
        return report
