"""TaskRecordQuerySet and TaskRecord's conversions: every query and state
change of a task row outside the worker's hot path, against the test
database, without Redis."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.compat import TaskResultStatus
from tasks.models import TaskRecord, TaskStatus
from tasks.tasks import add

pytestmark = [pytest.mark.django_db, pytest.mark.no_redis]

T0 = timezone.now().replace(microsecond=0) - timedelta(hours=1)


def row(task_id, status=TaskStatus.READY, queue="default", at=T0, **fields):
    return TaskRecord.objects.create(id=task_id, task_path=add.module_path, queue=queue, status=status, enqueued_at=at, **fields)


def test_history_counts_every_status_even_absent_ones():
    row("a"), row("b"), row("c", TaskStatus.DEAD)
    assert TaskRecord.objects.history_counts() == {
        "READY": 2,
        "RUNNING": 0,
        "SUCCESSFUL": 0,
        "FAILED": 0,
        "DEAD": 1,
        "CANCELLED": 0,
    }


def test_database_answers():
    TaskRecord.objects.database_answers()  # raises if it does not


def test_open_page_after_walks_open_rows_of_one_queue_in_order():
    for i in range(5):
        row(f"r{i}", at=T0 + timedelta(seconds=i))
    row("same-time", at=T0 + timedelta(seconds=2))  # ties broken by id
    row("finished", TaskStatus.SUCCESSFUL)
    row("other-queue", queue="other")
    row("too-young", at=T0 + timedelta(hours=2))
    row("not-due", at=T0, run_after=T0 + timedelta(days=1))
    cutoff, now = T0 + timedelta(minutes=30), T0 + timedelta(minutes=30)

    first = TaskRecord.objects.open_page_after("default", cutoff, now, None, 3)
    assert [r["id"] for r in first] == ["r0", "r1", "r2"]
    assert set(first[0]) == {"id", "enqueued_at", "status", "worker"}
    cursor = (first[-1]["enqueued_at"], first[-1]["id"])
    rest = TaskRecord.objects.open_page_after("default", cutoff, now, cursor, 10)
    assert [r["id"] for r in rest] == ["same-time", "r3", "r4"]


def test_open_calls_leaves_finished_rows_out():
    row("open", args=[1, 2], attempts=2)
    row("done", TaskStatus.SUCCESSFUL)
    [call] = TaskRecord.objects.open_calls(["open", "done", "absent"])
    assert (call["id"], call["args"], call["attempts"]) == ("open", [1, 2], 2)


def test_give_up_ends_open_rows_only():
    row("open"), row("done", TaskStatus.SUCCESSFUL)
    assert TaskRecord.objects.give_up(["open", "done"], "why", T0, worker="w1") == 1
    dead = TaskRecord.objects.get(id="open")
    assert (dead.status, dead.error, dead.finished_at, dead.worker) == (TaskStatus.DEAD, "why", T0, "w1")
    assert TaskRecord.objects.get(id="done").status == TaskStatus.SUCCESSFUL


def test_unclaim_returns_the_attempt_and_only_this_workers_rows():
    row("mine", TaskStatus.RUNNING, worker="w1", attempts=2)
    row("taken-over", TaskStatus.RUNNING, worker="w2", attempts=3)
    TaskRecord.objects.unclaim(["mine", "taken-over"], "w1")
    mine, other = TaskRecord.objects.get(id="mine"), TaskRecord.objects.get(id="taken-over")
    assert (mine.status, mine.attempts) == (TaskStatus.READY, 1)
    assert (other.status, other.attempts) == (TaskStatus.RUNNING, 2)


def test_reopen_running_keeps_the_attempts():
    row("r", TaskStatus.RUNNING, worker="w1", attempts=1)
    row("s", TaskStatus.SUCCESSFUL, worker="w1")
    assert TaskRecord.objects.reopen_running("w1") == 1
    assert TaskRecord.objects.get(id="r").status == TaskStatus.READY
    assert TaskRecord.objects.get(id="r").attempts == 1


def test_record_failure_appends_the_error_and_never_touches_a_finished_row():
    row("r", TaskStatus.RUNNING, attempts=1)
    row("done", TaskStatus.SUCCESSFUL)
    entry = {"exception": "builtins.RuntimeError", "traceback": "Traceback: boom", "attempt": 1, "worker": "w", "at": "t"}
    assert TaskRecord.objects.record_failure("r", TaskStatus.READY, entry, T0, T0 + timedelta(seconds=1))
    retrying = TaskRecord.objects.get(id="r")
    assert (retrying.status, retrying.errors, retrying.finished_at) == (TaskStatus.READY, [entry], None)
    assert retrying.error == "builtins.RuntimeError\nTraceback: boom"
    assert TaskRecord.objects.record_failure("r", TaskStatus.FAILED, entry, T0, T0 + timedelta(seconds=2))
    assert TaskRecord.objects.get(id="r").finished_at == T0 + timedelta(seconds=2)
    assert not TaskRecord.objects.record_failure("done", TaskStatus.FAILED, entry, T0, T0)
    assert TaskRecord.objects.get(id="done").errors == []


def test_record_refusal_names_the_rows_own_attempt():
    row("r", TaskStatus.RUNNING, attempts=2, worker="w9")
    assert TaskRecord.objects.record_refusal("r", TaskStatus.FAILED, "refused", T0, T0, "at")
    record = TaskRecord.objects.get(id="r")
    assert (record.status, record.error) == (TaskStatus.FAILED, "refused")
    assert record.errors == [{"exception": "mqsite.RecordRefused", "traceback": "refused", "attempt": 2, "worker": "w9", "at": "at"}]


def test_requeue_starts_a_fresh_round_and_undo_restores_it():
    failed = row("f", TaskStatus.FAILED, attempts=3, started_at=T0, finished_at=T0, errors=[{"exception": "x"}])
    row("ok", TaskStatus.SUCCESSFUL)
    now = T0 + timedelta(minutes=5)
    before = TaskRecord.objects.requeue("f", now)
    assert before == {"status": TaskStatus.FAILED, "attempts": 3, "enqueued_at": T0, "started_at": T0, "finished_at": T0}
    again = TaskRecord.objects.get(id="f")
    assert (again.status, again.attempts, again.enqueued_at, again.started_at, again.finished_at) == (TaskStatus.READY, 0, now, None, None)
    assert again.errors == failed.errors  # history of earlier attempts stays
    assert TaskRecord.objects.requeue("f", now) is None  # READY now: not requeueable twice
    assert TaskRecord.objects.requeue("ok", now) is None
    TaskRecord.objects.undo_requeue("f", before)
    assert TaskRecord.objects.get(id="f").status == TaskStatus.FAILED


def test_undo_requeue_leaves_a_row_a_worker_claimed_since():
    row("f", TaskStatus.FAILED, attempts=3)
    before = TaskRecord.objects.requeue("f", T0)
    TaskRecord.objects.filter(id="f").update(status=TaskStatus.RUNNING, attempts=1)
    assert TaskRecord.objects.undo_requeue("f", before) == 0
    assert TaskRecord.objects.get(id="f").status == TaskStatus.RUNNING


def test_to_task_result_reads_dead_as_failed_with_one_worker_per_attempt():
    errors = [{"exception": "builtins.ValueError", "traceback": "tb1", "worker": "w1"}]
    record = row("d", TaskStatus.DEAD, attempts=2, worker="w2", args=[1, 2], errors=errors, result=None, started_at=T0)
    result = record.to_task_result(add)
    assert result.id == "d" and result.status == TaskResultStatus.FAILED
    assert result.worker_ids == ["w1", "w2"]
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"]
    assert result.args == [1, 2] and result.last_attempted_at == T0


def test_to_task_result_carries_the_return_value():
    record = row("s", TaskStatus.SUCCESSFUL, attempts=1, worker="w", result={"sum": 3})
    result = record.to_task_result(add)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == {"sum": 3}


def test_as_api_dict_is_the_documented_shape():
    record = row("a", TaskStatus.SUCCESSFUL, attempts=1, worker="w", result=3, started_at=T0)
    assert record.as_api_dict() == {
        "id": "a",
        "task": add.module_path,
        "queue": "default",
        "status": "SUCCESSFUL",
        "attempts": 1,
        "priority": 0,
        "worker": "w",
        "enqueued_at": T0.isoformat(),
        "started_at": T0.isoformat(),
        "finished_at": None,
        "run_after": None,
        "result": 3,
        "error": "",
        "cancel_requested": False,
        "progress": None,
    }
