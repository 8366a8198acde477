"""Scenario 1: Redis restarts empty (no persistence) while tasks are queued,
delayed, retrying and running. The database rows are the outbox: the
sweeper resends what Redis lost, and nothing runs twice."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks.models import TaskRecord, TaskStatus
from tests.faults.conftest import (
    all_final,
    count_status,
    executions,
    kill,
    redis_leftovers,
)
from tests.faults.fault_tasks import flaky_append, slow_append, slow_first_time
from tests.fixture_tasks import append_to_file
from tests.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_redis_restarted_empty_midway_every_task_succeeds_exactly_once(redis_server, redis_client, start_worker, tmp_path):
    runs = tmp_path / "runs.txt"
    path = str(runs)
    expected = {}  # task id -> (line, how many runs it must take)
    # Started first and still running when Redis dies, for longer than the
    # sweeper's grace period: its in-flight copy vanishes with Redis.
    slow = slow_append.enqueue(path, "slow", 6)
    expected[slow.id] = ("slow", 1)
    for i in range(380):
        expected[slow_append.enqueue(path, f"one-{i}", 0.01).id] = (f"one-{i}", 1)
    bulk = slow_append.get_backend().enqueue_many(slow_append, [((path, f"bulk-{i}", 0.01), {}) for i in range(80)])
    expected.update({result.id: (f"bulk-{i}", 1) for i, result in enumerate(bulk)})
    for i in range(20):  # fail once, then retry through the delayed set
        expected[flaky_append.enqueue(path, f"flaky-{i}").id] = (f"flaky-{i}", 2)
    later = append_to_file.using(run_after=timezone.now() + timedelta(seconds=4))
    for i in range(19):  # deferred: in the delayed set when Redis dies
        expected[later.enqueue(path, f"later-{i}").id] = (f"later-{i}", 1)
    ids = list(expected)
    assert len(ids) == 500 and TaskRecord.objects.count() == 500

    workers = [start_worker("w1"), start_worker("w2")]
    wait_for(lambda: TaskRecord.objects.filter(id=slow.id, status=TaskStatus.RUNNING).exists(), message="slow task running")
    wait_for(lambda: count_status(ids) >= 50, message="some tasks done")
    redis_server.restart()
    done_before = count_status(ids)
    assert 50 <= done_before < 400, "Redis must die mid-way"

    wait_for(all_final(ids), timeout=90, interval=0.2, message="all 500 tasks SUCCESSFUL after Redis lost everything")
    assert all(w.alive() for w in workers)
    assert TaskRecord.objects.filter(id__in=ids).count() == 500
    ran = executions(runs)
    rows = {row.id: row for row in TaskRecord.objects.filter(id__in=ids)}
    wrong = {
        line: (ran[line], rows[task_id].attempts)
        for task_id, (line, times) in expected.items()
        if ran[line] != times or rows[task_id].attempts != times
    }
    assert wrong == {}, "line: (runs, attempts) for tasks that ran the wrong number of times"
    assert all(len(rows[i].errors) == 1 for i, (line, _) in expected.items() if line.startswith("flaky"))
    assert any("event=redis_down" in w.log() for w in workers)
    assert any("event=sweep" in w.log() for w in workers), "the sweeper resent the lost tasks"
    wait_for(lambda: not redis_leftovers(redis_client), message="nothing left in Redis")


def test_killed_worker_restarted_under_its_id_after_redis_lost_everything(redis_server, start_worker, tmp_path):
    """The row says RUNNING on a worker id that is alive again, but that new
    life is not running it, and Redis has no copy: it must still be run."""
    runs = tmp_path / "runs.txt"
    victim = slow_first_time.enqueue(str(runs), "victim", 60)
    worker = start_worker("same")
    # The claim marks the row RUNNING before the function starts: wait for its
    # own line, or the kill may land before the first run has begun.
    wait_for(lambda: executions(runs)["victim"] == 1, message="the first run started")
    assert TaskRecord.objects.filter(id=victim.id, status=TaskStatus.RUNNING).exists()
    kill(worker)
    redis_server.restart()
    start_worker("same")
    wait_for(all_final([victim.id]), timeout=30, message="the orphaned task done by the restarted worker")
    row = TaskRecord.objects.get(id=victim.id)
    assert (row.attempts, row.worker, executions(runs)["victim"]) == (2, "same", 2)
