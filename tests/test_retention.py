"""Retention: prune_history, the workers' chore and its lock, and a prune
while real workers drain (nothing lost, nothing waits on it)."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks.models import FINAL_STATUSES, PublishedMessage, ReceivedMessage, TaskRecord, TaskStatus
from tasks.queue.backend import queue_for
from tasks.retention import cutoff_for, prune
from tasks.tasks import noop
from tests.processes import manage, run_in_thread, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def make_rows(status, count, days_old, prefix=None):
    """``count`` rows of ``status`` enqueued (and, if final, finished) ``days_old`` days ago."""
    at = timezone.now() - timedelta(days=days_old)
    prefix = prefix or f"{status.lower()}-{days_old}"
    finished = at if status in FINAL_STATUSES else None
    TaskRecord.objects.bulk_create(
        TaskRecord(id=f"{prefix}-{n}", task_path="tasks.tasks.noop", status=status, enqueued_at=at - timedelta(seconds=n), finished_at=finished)
        for n in range(count)
    )


def make_messages(count, days_old):
    at = timezone.now() - timedelta(days=days_old)
    for n in range(count):
        published = PublishedMessage.objects.create(channel="c", payload=str(n), digest="d", published_at=at)
        ReceivedMessage.objects.create(listener="l", channel="c", payload=str(n), digest="d", received_at=at, published=published)


@pytest.fixture
def history():
    """Old and new rows of every status; the old open ones must survive."""
    for status in TaskStatus.values:
        make_rows(status, 4, days_old=40)
        make_rows(status, 2, days_old=1)
    make_messages(3, days_old=40)
    make_messages(2, days_old=1)


def remaining():
    return TaskRecord.objects.history_counts()


def prune_command(*args):
    out = StringIO()
    call_command("prune_history", *args, stdout=out)
    return out.getvalue()


# --- prune_history -------------------------------------------------------------
def test_prunes_old_finished_rows_and_messages_only(history):
    out = prune_command("--older-than", "30")
    assert f"tasks.TaskRecord: deleted {4 * len(FINAL_STATUSES)}" in out  # 4 old rows of each final status
    assert "tasks.ReceivedMessage: deleted 3" in out and "tasks.PublishedMessage: deleted 3" in out
    counts = remaining()
    for status in FINAL_STATUSES:
        assert counts[status] == 2  # the recent ones
    # Open rows stay, however old.
    assert counts[TaskStatus.READY] == 6 and counts[TaskStatus.RUNNING] == 6
    assert ReceivedMessage.objects.count() == 2 and PublishedMessage.objects.count() == 2


def test_dry_run_deletes_nothing_and_says_what_it_would(history):
    before = remaining()
    out = prune_command("--older-than", "30", "--dry-run")
    assert f"tasks.TaskRecord: would delete {4 * len(FINAL_STATUSES)}" in out and "tasks.PublishedMessage: would delete 3" in out
    assert remaining() == before and PublishedMessage.objects.count() == 5


def test_status_option_limits_the_task_rows(history):
    out = prune_command("--older-than", "30", "--status", "FAILED", "--status", "DEAD")
    assert "tasks.TaskRecord: deleted 8" in out
    assert remaining()[TaskStatus.SUCCESSFUL] == 6


def test_an_open_status_is_never_pruned_even_if_asked(history):
    report = prune(cutoff_for(30), statuses=[TaskStatus.READY, TaskStatus.RUNNING])
    assert report.deleted["tasks.TaskRecord"] == 0
    with pytest.raises(CommandError):
        prune_command("--older-than", "30", "--status", "READY")


def test_days_are_required_without_the_setting(settings):
    settings.MQ_HISTORY_RETENTION_DAYS = None
    with pytest.raises(CommandError, match="--older-than"):
        prune_command()
    settings.MQ_HISTORY_RETENTION_DAYS = 30
    assert "deleted 0" in prune_command()


def test_deletes_in_batches_of_the_batch_size(settings):
    settings.MQ_PRUNE_BATCH_SIZE = 4
    make_rows(TaskStatus.SUCCESSFUL, 10, days_old=40)
    make_rows(TaskStatus.READY, 5, days_old=40)  # interleaved in time, skipped by every batch
    with CaptureQueriesContext(connection) as queries:
        report = prune(cutoff_for(30))
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "tasks_taskrecord"')]
    assert len(deletes) == 3  # 4 + 4 + 2
    assert report.deleted["tasks.TaskRecord"] == 10 and not report.more
    assert remaining()[TaskStatus.READY] == 5


def test_max_batches_stops_early_and_says_more_is_left(settings):
    settings.MQ_PRUNE_BATCH_SIZE = 3
    make_rows(TaskStatus.SUCCESSFUL, 10, days_old=40)
    report = prune(cutoff_for(30), max_batches=2)
    assert report.deleted["tasks.TaskRecord"] == 6 and report.more
    assert prune(cutoff_for(30)).deleted["tasks.TaskRecord"] == 4


def test_a_row_reopened_after_its_batch_was_read_stays(monkeypatch):
    """The DELETE repeats the conditions: a requeue between SELECT and DELETE wins."""
    make_rows(TaskStatus.FAILED, 3, days_old=40, prefix="old")
    real_filter = TaskRecord.objects.none().__class__.filter
    reopened = []

    def filter_then_requeue(self, *args, **kwargs):
        if any(key.endswith("__in") and key.startswith("id") for key in kwargs) and not reopened:
            reopened.append(TaskRecord.objects.requeue("old-0", timezone.now()))
        return real_filter(self, *args, **kwargs)

    monkeypatch.setattr(TaskRecord.objects.none().__class__, "filter", filter_then_requeue)
    report = prune(cutoff_for(30))
    assert reopened[0] is not None
    assert report.deleted["tasks.TaskRecord"] == 2
    assert TaskRecord.objects.get(id="old-0").status == TaskStatus.READY


# --- the workers' chore -----------------------------------------------------------
def no_retry(fn, *args):
    return fn(*args)


def test_chore_prunes_when_due_and_one_worker_at_a_time(settings):
    from tasks.worker.retention import RetentionChore

    settings.MQ_HISTORY_RETENTION_DAYS = 30
    settings.MQ_PRUNE_INTERVAL_SECONDS = 300
    make_rows(TaskStatus.SUCCESSFUL, 5, days_old=40)
    first, second = RetentionChore(queue_for("default")), RetentionChore(queue_for("default"))
    assert first.maybe_run(1000.0, no_retry).deleted["tasks.TaskRecord"] == 5
    # The other worker is due too, but the lock is taken for the interval.
    make_rows(TaskStatus.SUCCESSFUL, 5, days_old=40, prefix="later")
    assert second.maybe_run(1000.0, no_retry) is None
    assert first.maybe_run(1100.0, no_retry) is None  # not due before the interval
    assert remaining()[TaskStatus.SUCCESSFUL] == 5


def test_chore_goes_on_with_a_backlog_under_its_lock(settings, redis_client):
    from tasks.worker.retention import RetentionChore

    settings.MQ_HISTORY_RETENTION_DAYS = 30
    settings.MQ_PRUNE_BATCH_SIZE = 2
    settings.MQ_PRUNE_MAX_BATCHES = 1
    make_rows(TaskStatus.SUCCESSFUL, 5, days_old=40)
    chore = RetentionChore(queue_for("default"))
    assert chore.maybe_run(1000.0, no_retry).more
    assert redis_client.pttl("mq:prune-lock") > 0
    assert chore.maybe_run(1000.5, no_retry) is None  # the worker's tasks first
    # A second later, long before the interval: the backlog goes on.
    assert chore.maybe_run(1001.0, no_retry).deleted["tasks.TaskRecord"] == 2
    chore.maybe_run(1002.0, no_retry)
    assert remaining()[TaskStatus.SUCCESSFUL] == 0


def test_chore_does_nothing_without_the_setting(settings, redis_client):
    from tasks.worker.retention import RetentionChore

    settings.MQ_HISTORY_RETENTION_DAYS = None
    make_rows(TaskStatus.SUCCESSFUL, 2, days_old=400)
    assert RetentionChore(queue_for("default")).maybe_run(1000.0, no_retry) is None
    assert remaining()[TaskStatus.SUCCESSFUL] == 2 and not redis_client.exists("mq:prune-lock")


def test_a_burst_worker_applies_the_retention_setting(settings):
    from tasks.worker.loop import Worker

    settings.MQ_HISTORY_RETENTION_DAYS = 30
    make_rows(TaskStatus.DEAD, 3, days_old=40)
    make_rows(TaskStatus.RUNNING, 1, days_old=40)
    result = noop.enqueue()
    Worker(burst=True, worker_id="retention-worker").run()
    counts = remaining()
    assert counts[TaskStatus.DEAD] == 0 and counts[TaskStatus.RUNNING] == 1
    assert TaskRecord.objects.get(id=result.id).status == TaskStatus.SUCCESSFUL


# --- prune while real workers drain --------------------------------------------------
def test_prune_while_workers_drain_loses_and_fails_nothing(redis_url, tmp_path):
    make_rows(TaskStatus.SUCCESSFUL, 3000, days_old=40)
    make_rows(TaskStatus.READY, 50, days_old=40)  # old and open: stays
    results = noop.get_backend().enqueue_many(noop, [((), {})] * 400)
    ids = [r.id for r in results]
    workers = [manage(redis_url, "listen_queue", "--burst", "--worker-id", f"drain-{n}", log_path=tmp_path / f"w{n}.log") for n in range(2)]
    out = StringIO()
    try:
        pruner = run_in_thread(lambda: call_command("prune_history", "--older-than", "30", "--batch-size", "50", stdout=out))
        pruner.join(60)
        for worker in workers:
            assert worker.wait(60) == 0
    finally:
        for worker in workers:
            stop(worker)
    assert "tasks.TaskRecord: deleted 3000" in out.getvalue()
    wait_for(lambda: TaskRecord.objects.filter(id__in=ids, status=TaskStatus.SUCCESSFUL).count() == 400, message="all 400 done")
    counts = remaining()
    assert counts[TaskStatus.READY] == 50 and counts[TaskStatus.FAILED] == counts[TaskStatus.DEAD] == 0
    assert counts[TaskStatus.SUCCESSFUL] == 400
