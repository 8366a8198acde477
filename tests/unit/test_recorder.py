"""The recorder's writes to the history table, against the test database.

Every write is guarded by the row's status: that guard is what makes a
redelivered task's outcome count once, so each test below pins one guard.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from psycopg._queries import MAX_CACHED_STATEMENT_PARAMS

from tasks.models import TaskRecord, TaskStatus
from tasks.queue.envelope import BadMessage, Envelope
from tasks.queue.recorder import Outcome, Recorder

pytestmark = [pytest.mark.no_redis, pytest.mark.django_db]

T0 = timezone.now().replace(microsecond=0)


@pytest.fixture
def recorder():
    return Recorder()


def envelope(task_id, **changes):
    return Envelope(id=task_id, task="tests.fixture_tasks.add", queue="default", args=[1, 2], **changes)


def enqueued(recorder, *task_ids):
    recorder.insert_enqueued([envelope(task_id) for task_id in task_ids], "default", T0)


def row(task_id):
    return TaskRecord.objects.get(id=task_id)


def with_status(task_id, status, **fields):
    TaskRecord.objects.filter(id=task_id).update(status=status, **fields)


def succeeded(task_id, result="ok"):
    return Outcome(task_id, TaskStatus.SUCCESSFUL, T0, T0 + timedelta(seconds=1), result=result)


def errored(task_id, status, exception="ValueError: no"):
    error = {"exception": exception, "traceback": "Traceback ...", "attempt": 1, "worker": "w1", "at": "now"}
    return Outcome(task_id, status, T0, T0 + timedelta(seconds=1), error=error)


def test_enqueued_rows_are_ready_and_unattempted(recorder):
    enqueued(recorder, "a", "b")
    assert [(r.id, r.status, r.attempts, r.args, r.enqueued_at) for r in TaskRecord.objects.order_by("id")] == [
        ("a", TaskStatus.READY, 0, [1, 2], T0),
        ("b", TaskStatus.READY, 0, [1, 2], T0),
    ]


# --- claim --------------------------------------------------------------------------


def test_claim_marks_running_and_counts_the_attempt(recorder):
    enqueued(recorder, "a", "b")
    assert recorder.claim(["a", "b"], "w1", now=T0) == {"a": 1, "b": 1}
    a = row("a")
    assert (a.status, a.attempts, a.worker, a.started_at) == (TaskStatus.RUNNING, 1, "w1", T0)


def test_claim_of_nothing_is_nothing(recorder):
    assert recorder.claim([], "w1") == {}


def test_claim_leaves_out_ids_without_a_row(recorder):
    enqueued(recorder, "a")
    assert recorder.claim(["a", "ghost"], "w1") == {"a": 1}
    assert not TaskRecord.objects.filter(id="ghost").exists()


def test_a_running_row_is_claimed_again_by_a_redelivery(recorder):
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    assert recorder.claim(["a"], "w2") == {"a": 2}
    assert row("a").worker == "w2"


@pytest.mark.parametrize("status", [TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.DEAD])
def test_a_finished_row_is_never_claimed_again(recorder, status):
    enqueued(recorder, "a")
    with_status("a", status, attempts=1, worker="w1")
    assert recorder.claim(["a"], "w2") == {}
    a = row("a")
    assert (a.status, a.attempts, a.worker) == (status, 1, "w1")


# --- finish and fail ----------------------------------------------------------------------


def test_finish_records_success_and_result(recorder):
    enqueued(recorder, "a", "b")
    recorder.claim(["a", "b"], "w1")
    recorder.finish([succeeded("a", {"sum": 3}), succeeded("b", [1])])
    a = row("a")
    assert (a.status, a.result, a.started_at, a.finished_at) == (TaskStatus.SUCCESSFUL, {"sum": 3}, T0, T0 + timedelta(seconds=1))
    assert row("b").result == [1]


# What a batch's results may hold: quotes and backslashes (the PostgreSQL
# batch travels as one JSON document), other scripts, big and small numbers.
AWKWARD_RESULTS = [None, True, 0, -(2**70), 1.5e-300, "", "it's \"quoted\" \\ back", "줄\n바꿈 中文",
                   {"nested": [{"a": None}, [1, "two"]]}, [], {}]


def test_a_full_batch_is_recorded_result_for_result(recorder):
    ids = [f"t{n:03}" for n in range(200)]
    enqueued(recorder, *ids)
    TaskRecord.objects.filter(id="t007").update(cancel_requested=True)
    assert recorder.claim(ids, "w1") == dict.fromkeys(ids, 1)
    started = T0 + timedelta(microseconds=123457)
    outcomes = [Outcome(task_id, TaskStatus.SUCCESSFUL, started, started + timedelta(seconds=n),
                        result=AWKWARD_RESULTS[n % len(AWKWARD_RESULTS)]) for n, task_id in enumerate(ids)]
    recorder.finish(outcomes)
    rows = {r.id: r for r in TaskRecord.objects.all()}
    for n, outcome in enumerate(outcomes):
        got = rows[outcome.id]
        assert (got.result, got.started_at, got.finished_at) == (outcome.result, started, outcome.finished_at)
        assert got.status == (TaskStatus.CANCELLED if outcome.id == "t007" else TaskStatus.SUCCESSFUL)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's statement cache")
def test_claim_and_finish_statements_are_the_same_for_any_batch(recorder):
    """psycopg parses a statement's placeholders in Python and caches that
    parse only for statements of at most MAX_CACHED_STATEMENT_PARAMS
    parameters: a statement that grew with the batch was parsed anew for
    every batch (a fifth of a PostgreSQL drain)."""
    seen = []

    def note(execute, sql, params, many, context):
        if not sql.startswith(("SAVEPOINT", "RELEASE SAVEPOINT")):  # the test's transaction names them apart
            seen.append((sql, len(params or ())))
        return execute(sql, params, many, context)

    statements = []
    for size in (1, 200):
        ids = [f"s{size}-{n}" for n in range(size)]
        enqueued(recorder, *ids)
        seen.clear()
        with connection.execute_wrapper(note):
            recorder.claim(ids, "w1")
            recorder.finish([succeeded(task_id) for task_id in ids])
        statements.append(list(seen))
    assert statements[0] == statements[1] and len(statements[0]) == 2
    assert all(count <= MAX_CACHED_STATEMENT_PARAMS for _, count in statements[1])


def test_finish_of_nothing_writes_nothing(recorder, django_assert_num_queries):
    with django_assert_num_queries(0):
        recorder.finish([])
        recorder.fail([])


@pytest.mark.parametrize("status", [TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.DEAD])
def test_finish_leaves_a_finished_row_alone(recorder, status):
    enqueued(recorder, "a")
    with_status("a", status, result="first")
    recorder.finish([succeeded("a", "second")])
    assert (row("a").status, row("a").result) == (status, "first")


def test_fail_records_the_error_and_keeps_every_attempt(recorder):
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    recorder.fail([errored("a", TaskStatus.READY, "ValueError: first")])
    a = row("a")
    assert (a.status, a.finished_at) == (TaskStatus.READY, None)  # a retry is on its way
    recorder.claim(["a"], "w1")
    recorder.fail([errored("a", TaskStatus.FAILED, "ValueError: second")])
    a = row("a")
    assert (a.status, a.attempts, a.finished_at) == (TaskStatus.FAILED, 2, T0 + timedelta(seconds=1))
    assert [e["exception"] for e in a.errors] == ["ValueError: first", "ValueError: second"]
    assert a.error == "ValueError: second\nTraceback ..."


def test_fail_leaves_a_finished_row_and_a_missing_one_alone(recorder):
    enqueued(recorder, "a")
    with_status("a", TaskStatus.SUCCESSFUL)
    recorder.fail([errored("a", TaskStatus.FAILED), errored("ghost", TaskStatus.FAILED)])
    assert (row("a").status, row("a").errors) == (TaskStatus.SUCCESSFUL, [])
    assert not TaskRecord.objects.filter(id="ghost").exists()


def test_an_outcome_the_database_refuses_fails_alone(recorder):
    """NaN is not JSON to either database: the batch is recorded one by one,
    and only the refused success turns into a failure with the reason."""
    enqueued(recorder, "a", "b")
    recorder.claim(["a", "b"], "w1")
    recorder.finish([succeeded("a", float("nan")), succeeded("b", "fine")])
    a, b = row("a"), row("b")
    assert (b.status, b.result) == (TaskStatus.SUCCESSFUL, "fine")
    assert a.status == TaskStatus.FAILED
    assert a.error.startswith("the outcome could not be recorded:")
    assert [e["exception"] for e in a.errors] == ["mqsite.RecordRefused"]


# --- unclaim and reopen_running ------------------------------------------------------------------


def test_unclaim_returns_the_row_and_uncounts_the_attempt(recorder):
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    recorder.unclaim(["a"], "w1")
    assert (row("a").status, row("a").attempts) == (TaskStatus.READY, 0)


def test_unclaim_leaves_another_workers_claim_running(recorder):
    """The stalled worker's attempt goes; the new owner's claim stays."""
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    recorder.claim(["a"], "w2")
    recorder.unclaim(["a"], "w1")
    a = row("a")
    assert (a.status, a.worker, a.attempts) == (TaskStatus.RUNNING, "w2", 1)


def test_reopen_running_reopens_only_this_workers_running_rows(recorder):
    enqueued(recorder, "mine", "theirs", "done")
    recorder.claim(["mine", "done"], "w1")
    recorder.claim(["theirs"], "w2")
    recorder.finish([succeeded("done")])
    assert recorder.reopen_running("w1") == 1
    assert [(r.id, r.status, r.attempts) for r in TaskRecord.objects.order_by("id")] == [
        ("done", TaskStatus.SUCCESSFUL, 1),
        ("mine", TaskStatus.READY, 1),  # the killed attempt stays counted
        ("theirs", TaskStatus.RUNNING, 1),
    ]


# --- create_missing and record_bad ----------------------------------------------------------------


def test_create_missing_writes_rows_for_foreign_envelopes(recorder):
    recorder.create_missing([envelope("a", enqueued_at="2024-05-06T07:08:09+02:00")], now=T0)
    a = row("a")
    assert (a.status, a.attempts, a.task_path, a.args) == (TaskStatus.READY, 0, "tests.fixture_tasks.add", [1, 2])
    assert a.enqueued_at.isoformat() == "2024-05-06T05:08:09+00:00"


def test_create_missing_reads_a_naive_time_as_utc(recorder):
    recorder.create_missing([envelope("a", enqueued_at="2024-05-06T07:08:09")], now=T0)
    assert row("a").enqueued_at.isoformat() == "2024-05-06T07:08:09+00:00"


# The last one is before year 1 once in UTC: it overflowed when the row was saved.
@pytest.mark.parametrize("enqueued_at", ["", "yesterday", "0001-01-01T00:00:00+14:00"])
def test_create_missing_takes_now_for_a_time_it_cannot_use(recorder, enqueued_at):
    recorder.create_missing([envelope("a", enqueued_at=enqueued_at)], now=T0)
    assert row("a").enqueued_at == T0


def test_create_missing_leaves_an_existing_row_alone(recorder):
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    recorder.create_missing([envelope("a", enqueued_at="2020-01-01T00:00:00+00:00")])
    a = row("a")
    assert (a.status, a.attempts, a.enqueued_at) == (TaskStatus.RUNNING, 1, T0)


def test_record_bad_writes_dead_rows(recorder):
    recorder.record_bad([BadMessage("not UTF-8 text", id="x"), BadMessage("no task", id="y", task="a.b")], "default", "w1", now=T0)
    x = row("x")
    assert (x.status, x.task_path, x.worker, x.error, x.finished_at) == (TaskStatus.DEAD, "(unreadable message)", "w1", "not UTF-8 text", T0)
    assert x.errors == [{"exception": "mqsite.BadMessage", "traceback": "not UTF-8 text", "worker": "w1"}]
    assert row("y").task_path == "a.b"


def test_record_bad_ends_an_open_row(recorder):
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    recorder.record_bad([BadMessage("unknown task", id="a")], "default", "w2", now=T0)
    a = row("a")
    assert (a.status, a.worker, a.error, a.finished_at, a.task_path) == (
        TaskStatus.DEAD,
        "w2",
        "unknown task",
        T0,
        "tests.fixture_tasks.add",
    )


def test_record_bad_leaves_a_finished_row_alone(recorder):
    enqueued(recorder, "a")
    recorder.claim(["a"], "w1")
    recorder.finish([succeeded("a")])
    recorder.record_bad([BadMessage("late duplicate", id="a")], "default", "w2", now=T0)
    a = row("a")
    assert (a.status, a.worker, a.error) == (TaskStatus.SUCCESSFUL, "w1", "")
