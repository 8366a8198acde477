"""PostgreSQL only: which of a task's commits wait for the disk, and what a
lost one costs (README, "Delivery guarantees": the commits on PostgreSQL).

The claim commits with synchronous_commit off; the outbox INSERT and the
outcome do not. A trigger on the history table notes the setting each write
ran under, inside its own transaction, so the test reads what the server
saw. A commit lost in a server crash cannot be produced on demand: the
tests put the rows in the state such a crash leaves (the claim undone, or
an outcome missing behind its acknowledgement) and run the real worker,
sweeper and recovery from there.
"""

import pytest
from django.db import connection, transaction
from django.utils import timezone

from tasks.conf import mq_settings
from tasks.models import TaskRecord, TaskStatus
from tasks.queue import keys
from tasks.queue.backend import queue_for
from tasks.queue.recorder import Outcome, Recorder
from tasks.tasks import add
from tasks.worker.loop import Worker
from tasks.worker.sweeper import sweep

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="synchronous_commit is PostgreSQL's"),
]

TABLE = TaskRecord._meta.db_table


@pytest.fixture
def commit_modes():
    """read() -> [(status written, synchronous_commit in force)], in order."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE test_commit_mode (n serial, status text, mode text)")
        cursor.execute(
            "CREATE FUNCTION test_note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO test_commit_mode (status, mode) VALUES (NEW.status, current_setting('synchronous_commit')); "
            "RETURN NEW; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_note_commit_mode AFTER INSERT OR UPDATE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION test_note_commit_mode()"
        )

    def read():
        with connection.cursor() as cursor:
            cursor.execute("SELECT status, mode FROM test_commit_mode ORDER BY n")
            return cursor.fetchall()

    yield read
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER test_note_commit_mode ON {TABLE}")
        cursor.execute("DROP FUNCTION test_note_commit_mode()")
        cursor.execute("DROP TABLE test_commit_mode")


def drain():
    return Worker(burst=True, worker_id="pg-worker").run()


def session_setting():
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def sweep_now(queue):
    queue.client.delete(keys.sweep_lock(queue.key))  # as if the previous sweep's lock had lapsed
    return sweep(queue, grace_seconds=0, lock_seconds=1.0, now=timezone.now())


def test_only_the_claim_skips_the_wait_for_the_disk(commit_modes):
    add.enqueue(2, 3)
    assert drain() == 1
    assert commit_modes() == [
        (TaskStatus.READY, "on"),  # the outbox row: durable before the push
        (TaskStatus.RUNNING, "off"),  # the claim: a lost one is a rerun
        (TaskStatus.SUCCESSFUL, "on"),  # the outcome: durable before the ACK
    ]
    assert session_setting() == "on", "the setting ends with the claim's own transaction"


def test_a_claim_inside_a_callers_transaction_keeps_its_commit(commit_modes):
    add.enqueue(2, 3)
    task_id = TaskRecord.objects.get().id
    with transaction.atomic():
        assert Recorder().claim([task_id], "w1") == {task_id: 1}
    assert commit_modes()[-1] == (TaskStatus.RUNNING, "on")


def test_a_lost_claim_is_run_and_recorded_once(redis_client):
    """The claim's commit lost in a crash of PostgreSQL, then the worker lost
    too: the row is READY again with no attempt counted, the item in the
    dead worker's processing list."""
    result = add.enqueue(2, 3)
    queue = queue_for("default")
    queue.register("lost-worker", 3600)
    items, _, _ = queue.take("lost-worker", 10, mq_settings.MQ_MAX_MESSAGE_BYTES)
    assert len(items) == 1
    assert Recorder().claim([result.id], "lost-worker") == {result.id: 1}
    TaskRecord.objects.filter(id=result.id).update(status=TaskStatus.READY, attempts=0, worker="", started_at=None)
    redis_client.delete(keys.lease(queue.key, "lost-worker"))  # as if its lease had expired

    assert sweep_now(queue) == 0, "Redis holds the item: the sweeper leaves the row alone"
    assert drain() == 1, "the worker's start recovers the dead worker's items and runs them"
    row = TaskRecord.objects.get(id=result.id)
    assert (row.status, row.result, row.attempts) == (TaskStatus.SUCCESSFUL, 5, 1)
    assert sweep_now(queue) == 0 and drain() == 0, "finished: never sent nor run again"


def test_an_outcome_accepts_the_row_of_a_lost_claim():
    """The claim lost while its worker lives on: the row is READY, and the
    worker's outcome is recorded all the same."""
    result = add.enqueue(2, 3)
    TaskRecord.objects.filter(id=result.id).update(status=TaskStatus.READY)
    recorder = Recorder()
    now = timezone.now()
    recorder.finish([Outcome(result.id, TaskStatus.SUCCESSFUL, now, now, result=5)])
    assert TaskRecord.objects.get(id=result.id).status == TaskStatus.SUCCESSFUL


def test_a_running_row_whose_item_redis_lost_is_resent_once(redis_client):
    """RUNNING, its worker gone and Redis without the item (acknowledged,
    or Redis lost it): resent by one sweep, run once, never again."""
    result = add.enqueue(2, 3)
    queue = queue_for("default")
    items, _, _ = queue.take("gone-worker", 10, mq_settings.MQ_MAX_MESSAGE_BYTES)
    Recorder().claim([result.id], "gone-worker")
    queue.ack("gone-worker", items, [result.id])  # the item leaves Redis; the row stays RUNNING

    assert sweep_now(queue) == 1
    assert sweep_now(queue) == 0, "resent once: Redis holds it now"
    assert drain() == 1
    row = TaskRecord.objects.get(id=result.id)
    assert (row.status, row.result, row.attempts, row.worker) == (TaskStatus.SUCCESSFUL, 5, 2, "pg-worker")
    assert sweep_now(queue) == 0 and drain() == 0, "finished: never sent nor run again"


def test_why_the_outcome_waits_a_live_workers_running_row_is_left_alone(redis_client):
    """Were the outcome's commit lost behind its acknowledgement, this is the
    row it would leave: RUNNING, its worker alive, Redis without the item.
    The sweeper cannot tell it from a task that worker still runs, so the
    outcome's commit must not be lost (it waits for the disk)."""
    result = add.enqueue(2, 3)
    queue = queue_for("default")
    queue.register("live-worker", 3600)
    items, _, _ = queue.take("live-worker", 10, mq_settings.MQ_MAX_MESSAGE_BYTES)
    Recorder().claim([result.id], "live-worker")
    queue.ack("live-worker", items, [result.id])
    assert sweep_now(queue) == 0
    assert TaskRecord.objects.get(id=result.id).status == TaskStatus.RUNNING
