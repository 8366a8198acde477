"""The worker's chores: work it does between batches, each on its own interval.

As Huey's scheduler does, the loop asks the schedule what is due at the time
its clock says, and runs that: promoting due retries, taking back the tasks
of workers whose lease expired, sweeping the outbox. Each chore is a plain
function of the current unix time, so a test drives it with an injected
clock; later chores (schedules, retention) are one more entry.

A chore may return the unix time it wants to run again when that is sooner
than its interval: the promote chore returns the next retry's due time, so
the retry is not left waiting for a whole interval.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

from tasks.conf import mq_settings
from tasks.worker.retention import BACKLOG_PAUSE_SECONDS, RetentionChore
from tasks.worker.scheduler import fire_due
from tasks.worker.sweeper import sweep

logger = logging.getLogger(__name__)

PROMOTE, RECOVER, SWEEP, SCHEDULES, RETENTION = "promote_due", "recover_expired", "sweep", "schedules", "retention"


@dataclass
class Chore:
    name: str
    interval: float  # seconds between runs
    fn: Callable[[float], float | None]  # fn(now): unix time to run again if sooner than the interval
    next_run: float = 0.0  # unix time; 0: at the first look
    last_result: object = None  # what fn returned, for a caller that needs it

    def run(self, now):
        self.last_result = sooner = self.fn(now)
        self.next_run = now + self.interval if sooner is None else min(sooner, now + self.interval)
        return sooner


class Chores:
    """The chores of one worker, run in the order they were added."""

    def __init__(self, chores=()):
        self._chores = {chore.name: chore for chore in chores}

    def __getitem__(self, name):
        return self._chores[name]

    def run_due(self, now):
        """Run every chore whose time has come."""
        for chore in self._chores.values():
            if now >= chore.next_run:
                chore.run(now)

    def expedite(self, name):
        """Have a chore run at the next run_due, whatever its schedule."""
        self._chores[name].next_run = 0.0


def worker_chores(worker_id, queues, db):
    """The standard chores of a worker on ``queues``; ``db`` retries a
    database call until the database answers (see dbretry)."""
    return Chores(
        [
            Chore(PROMOTE, mq_settings.MQ_BLOCK_SECONDS, partial(promote_due, queues)),
            Chore(RECOVER, mq_settings.MQ_LEASE_SECONDS / 2, partial(recover_expired, worker_id, queues)),
            Chore(SWEEP, mq_settings.MQ_SWEEP_INTERVAL_SECONDS, partial(sweep_outbox, queues, db)),
            Chore(SCHEDULES, mq_settings.MQ_SCHEDULE_INTERVAL_SECONDS, partial(fire_schedules, db)),
            # RetentionChore paces itself (its interval, a backlog, the fleet-wide lock).
            Chore(RETENTION, BACKLOG_PAUSE_SECONDS, partial(prune_history, RetentionChore(queues[0]), db)),
        ]
    )


def promote_due(queues, now):
    """Move due retries and run_after tasks onto their queues; return the
    soonest due time still waiting, or None."""
    dues = [due for due in (queue.promote_due(now) for queue in queues) if due is not None]
    return min(dues, default=None)


def recover_expired(worker_id, queues, now):
    """Take back the in-flight tasks of workers whose lease expired."""
    for queue in queues:
        for dead_worker, moved in queue.recover_expired(except_worker=worker_id).items():
            logger.warning(
                "event=recovered worker=%s dead_worker=%s queue=%s items=%d",
                worker_id,
                dead_worker,
                queue.name,
                moved,
            )


def sweep_outbox(queues, db, now):
    """Resend tasks whose row is open but which Redis lost (see sweeper)."""
    interval = mq_settings.MQ_SWEEP_INTERVAL_SECONDS
    for queue in queues:
        # confirm: after Redis lost its data, live workers need a heartbeat
        # to announce their leases again before their RUNNING rows look lost.
        db(
            partial(sweep, confirm_seconds=mq_settings.MQ_LEASE_SECONDS),
            queue,
            mq_settings.MQ_SWEEP_GRACE_SECONDS,
            interval,
        )


def fire_schedules(db, now):
    """Enqueue the periodic tasks that fell due; every worker does it, and the
    history row's primary key makes each tick fire once (see scheduler)."""
    db(fire_due, datetime.fromtimestamp(now, timezone.utc))


def prune_history(retention, db, now):
    """Apply MQ_HISTORY_RETENTION_DAYS (see retention)."""
    retention.maybe_run(now, db)
