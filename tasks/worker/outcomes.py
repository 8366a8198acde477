"""What became of each task of a batch, and what the batch hands back.

A Verdict is one task's end, decided once by the executor; the Ack gathers a
batch of them into the two database writes and the one Redis round trip that
acknowledge the batch. Counters for /metrics travel with the acknowledgement,
in the same round trip: outcomes, and task durations as histogram buckets.
"""

from bisect import bisect_left
from datetime import UTC, datetime
from typing import NamedTuple

from tasks.backoff import backoff_delay
from tasks.conf import mq_settings
from tasks.queue.envelope import DeadLetter
from tasks.queue.recorder import Outcome

DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, float("inf"))

# Verdict names: the ``outcome=`` of the task_done log line and the
# ``outcome:<name>`` counter of /metrics.
SUCCEEDED, RETRIED, FAILED, DEAD, CANCELLED = "succeeded", "retried", "failed", "dead", "cancelled"
# Verdicts of tasks that started: the ones with a latency and a rate.
RAN = (SUCCEEDED, RETRIED, FAILED)
# Recorded by the success path's one statement: no error to keep.
WITHOUT_ERROR = (SUCCEEDED, CANCELLED)


class Verdict(NamedTuple):
    """One task's end. A named tuple: one is built per task on the hot path."""

    name: str  # SUCCEEDED, RETRIED, FAILED, DEAD or CANCELLED
    record: Outcome  # the history row's new state (READY when a retry follows)
    duration: float
    # (raw item, next attempt's envelope, due unix time), for the delayed set
    retry: tuple | None = None
    retry_in: float | None = None  # seconds until that due time
    dead_letter: DeadLetter | None = None  # the dead-letter list's entry


class Ack:
    """What one batch hands back to Redis and the database."""

    def __init__(self):
        self.done, self.finished_ids, self.retries, self.dead = [], [], [], []
        self.successes, self.failures = [], []
        self.stats = {}
        # For the index's charts: outcomes this batch ("ok", "err") and
        # enqueue-to-start latencies in milliseconds.
        self.rates = {}
        self.latencies = []

    def add(self, raw, verdict, enqueued_at=""):
        """A task that ran (or was given up): its item leaves the processing list.

        enqueued_at is the envelope's ISO time; a retry's latency counts from
        the first enqueue, its backoff included: that is what its caller waited.
        """
        self.done.append(raw)
        if verdict.record.error is not None:
            # The task page's timeline: with its end ("at"), when the attempt started.
            verdict.record.error["duration"] = round(verdict.duration, 4)
        if verdict.name in WITHOUT_ERROR:
            self.successes.append(verdict.record)
        else:
            self.failures.append(verdict.record)
        if verdict.retry is None:
            self.finished_ids.append(verdict.record.id)
        else:
            self.retries.append(verdict.retry)
        if verdict.dead_letter is not None:
            self.dead.append(verdict.dead_letter)
        self.count(verdict.name, verdict.duration)
        if verdict.name in RAN:
            self._chart(verdict, enqueued_at)

    def _chart(self, verdict, enqueued_at):
        rate = "ok" if verdict.name == SUCCEEDED else "err"
        self.rates[rate] = self.rates.get(rate, 0) + 1
        try:
            enqueued = datetime.fromisoformat(enqueued_at)
        except (TypeError, ValueError):  # a foreign producer's item carries no time
            return
        if enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=UTC)
        self.latencies.append(round(max(0.0, (verdict.record.started_at - enqueued).total_seconds()) * 1000, 1))

    def count(self, verdict, duration):
        bucket = DURATION_BUCKETS[bisect_left(DURATION_BUCKETS, duration)]
        for name, amount in ((f"outcome:{verdict}", 1), (f"duration_bucket:{bucket}", 1), ("duration_sum", duration)):
            self.stats[name] = self.stats.get(name, 0) + amount


def retry_delay(attempt):
    """Seconds before the attempt after ``attempt`` (counted from 1)."""
    return backoff_delay(attempt - 1, mq_settings.MQ_RETRY_BASE_SECONDS, mq_settings.MQ_RETRY_MAX_SECONDS, jitter=True)

